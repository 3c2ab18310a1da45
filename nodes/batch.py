"""FlashHead Batch Sampler: N portraits (an IMAGE batch) x N speech tracks (an AUDIO batch) generated together, one
DiT call per denoising step for all streams (flashhead_core.generation.batch). Stream i uses seed + i and gives the frames a
FlashHead Sampler run with that seed gives (up to the batched matmuls' float rounding).

FlashHead Audio Batch builds the AUDIO batch from single tracks (ComfyUI has no node that batches audio)."""

from __future__ import annotations

import torch

from ..flashhead_core import (FPS, batch_talking_heads, check_encoder_fits, check_pairs, load_audio, SamplerConfig,
                              stack_tracks)
from . import _host
from ._inputs import check_numbers
from ._io import CATEGORY, io
from ._wires import AudioEncoder, Model, Vae
from .audio import audio_mode_inputs
from .sampler import cancelled_as_interrupt, generation_inputs, prepare_models


def audio_tracks(audio: dict) -> list[dict]:
    """A ComfyUI AUDIO with waveform [N, C, T] -> N single-track AUDIO dicts."""
    waveform = audio["waveform"]
    return [{"waveform": waveform[i:i + 1], "sample_rate": audio["sample_rate"]} for i in range(waveform.shape[0])]


class FlashHeadBatchSampler(io.ComfyNode):
    """Several talking heads at once: the i-th portrait voiced by the i-th track."""

    @classmethod
    def define_schema(cls):
        inputs = generation_inputs()
        inputs[0] = io.Image.Input("image", tooltip=(
            "The portraits, one per stream (an IMAGE batch of N; repeat a portrait to voice it with several tracks)."))
        return io.Schema(
            node_id="FlashHeadBatchSampler", display_name="FlashHead Batch Sampler", category=CATEGORY,
            description=("Generates N talking heads together: the i-th portrait of the IMAGE batch with the i-th "
                         "track of the AUDIO batch, all streams in one DiT call per step (higher throughput on a "
                         "GPU). Stream i uses seed + i. Outputs every stream's frames one stream after the other."),
            inputs=[
                Model.Input("model", tooltip="From FlashHead Model Loader (Lite or Pro)."),
                Vae.Input("vae", tooltip="From FlashHead VAE Loader: LTX for Lite, Wan2.1 for Pro."),
                AudioEncoder.Input("audio_encoder", tooltip="From FlashHead Audio Encoder Loader (wav2vec2)."),
                io.Audio.Input("audio", tooltip=("The speech tracks, one per stream (an AUDIO batch of N, waveform "
                                                 "[N, C, T]).")),
                *inputs,
                *audio_mode_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip=(
                    "All streams' frames, stream after stream: [N x frames, H, W, 3] (split with ImageFromBatch).")),
                io.Float.Output(display_name="frame_rate", tooltip="25.0: connect to CreateVideo's fps."),
                io.Int.Output(display_name="frames_per_stream", tooltip="Frames of each stream (the batch is "
                                                                         "streams x this)."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, audio_encoder, audio, image, width, height, seed, color_correction, mode,
                context_seconds) -> io.NodeOutput:
        check_numbers(cls, width=width, height=height, seed=seed, color_correction=color_correction, mode=mode,
                      context_seconds=context_seconds)
        portraits = [image[i:i + 1] for i in range(image.shape[0])]
        tracks = [load_audio(track) for track in audio_tracks(audio)]
        check_pairs(portraits, tracks)  # before anything loads or runs (stream i's seed, seed + i, is checked too)
        check_encoder_fits(audio_encoder.encoder, model.config)
        prepare_models(model, vae, width, height, also_load=[audio_encoder.patcher])

        def run():
            return batch_talking_heads(
                model.dit, vae.vae, audio_encoder.encoder, portraits, tracks, height=height, width=width, seed=seed,
                mode=mode, context_seconds=context_seconds, device=model.patcher.load_device,
                sampler=SamplerConfig(color_correction=color_correction), should_cancel=_host.interrupted)

        streams = cancelled_as_interrupt(run)
        frames = torch.cat(streams).to(_host.output_device())
        return io.NodeOutput(frames, float(FPS), streams[0].shape[0])


class FlashHeadAudioBatch(io.ComfyNode):
    """Two to four speech tracks -> one AUDIO batch for FlashHead Batch Sampler."""

    @classmethod
    def define_schema(cls):
        def track(n: int, optional: bool):
            return io.Audio.Input(f"audio_{n}", optional=optional, tooltip=(
                f"Track {n}: voices portrait {n} of the Batch Sampler's IMAGE batch (one track, any rate and "
                f"channel count)."))

        return io.Schema(
            node_id="FlashHeadAudioBatch", display_name="FlashHead Audio Batch", category=CATEGORY,
            description=("Stacks speech tracks into one AUDIO batch for FlashHead Batch Sampler, in the order of "
                         "the inputs. Each track becomes what the model hears (mono, 16 kHz) and is padded with "
                         "silence to the longest, so every stream lasts as long as the longest track."),
            inputs=[track(1, False), track(2, False), track(3, True), track(4, True)],
            outputs=[io.Audio.Output(display_name="audio", tooltip=(
                "waveform [N, 1, T] at 16 kHz: connect to FlashHead Batch Sampler's audio."))],
        )

    @classmethod
    def execute(cls, audio_1, audio_2, audio_3=None, audio_4=None) -> io.NodeOutput:
        tracks = [track for track in (audio_1, audio_2, audio_3, audio_4) if track is not None]
        waveform, rate = stack_tracks(tracks)
        return io.NodeOutput({"waveform": torch.from_numpy(waveform), "sample_rate": rate})
