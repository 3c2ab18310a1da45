"""FlashHead Audio Encode: ComfyUI AUDIO (any rate, mono or stereo) -> the DiT's per-chunk audio windows."""

from __future__ import annotations

import torch

from ..flashhead_core import AUDIO_SAMPLE_RATE, audio_chunks, check_encoder_fits, load_audio, video_frame_count
from . import _host
from ._inputs import check_numbers
from ._io import CATEGORY, advanced, io
from ._wires import AudioEmbeds, AudioEncoder, FlashHeadAudioEmbeds, Model

MODES = ["stream", "once"]
MODE_TOOLTIP = ("stream: the Temporal Audio Context Cache (the official default) - each chunk re-encodes the last "
                "context_seconds of audio, so long audio costs the same per chunk. once: the whole track is encoded "
                "in one pass (cost grows with the square of its length; for short clips).")
CONTEXT_TOOLTIP = ("Length of the Temporal Audio Context Cache in stream mode (8 s as released). Longer context "
                   "costs more per chunk; ignored in once mode.")


def audio_mode_inputs() -> list:
    """mode, context_seconds: shared with FlashHead Talking Video, which encodes the audio itself (same order)."""
    return [
        io.Combo.Input("mode", options=MODES, default="stream", tooltip=MODE_TOOLTIP, **advanced(io.Combo.Input)),
        io.Float.Input("context_seconds", default=8.0, min=2.0, max=60.0, step=0.5, tooltip=CONTEXT_TOOLTIP,
                       **advanced(io.Float.Input)),
    ]


class FlashHeadAudioEncode(io.ComfyNode):
    """Encodes speech for the FlashHead Sampler."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadAudioEncode", display_name="FlashHead Audio Encode", category=CATEGORY,
            description=("Turns any AUDIO (LoadAudio, a TTS node; any sample rate, mono or stereo) into FlashHead's "
                         "audio embeddings: mixed to mono, resampled to 16 kHz, wav2vec2 features per video frame, "
                         "cut into the model's chunks. The model input only supplies the chunk geometry (Lite and Pro "
                         "chunk differently). The result is cached: re-running the sampler with another seed or size "
                         "does not re-encode."),
            inputs=[
                AudioEncoder.Input("audio_encoder", tooltip="From FlashHead Audio Encoder Loader (wav2vec2)."),
                io.Audio.Input("audio", tooltip="Speech; the video will last exactly as long (25 fps)."),
                Model.Input("model", tooltip="The FlashHead model the embeddings are for (Lite and Pro chunk the "
                                             "audio differently)."),
                *audio_mode_inputs(),
            ],
            outputs=[AudioEmbeds.Output(display_name="audio_embeds", tooltip=(
                "The DiT's audio windows for every chunk (computed for the connected model's variant)."))],
        )

    @classmethod
    def execute(cls, audio_encoder, audio, model, mode, context_seconds) -> io.NodeOutput:
        _host.require_host()
        check_numbers(cls, mode=mode, context_seconds=context_seconds)
        config = model.config
        check_encoder_fits(audio_encoder.encoder, config)
        samples = load_audio(audio)  # a new array: the cached AUDIO input is only read
        frames = video_frame_count(len(samples))
        _host.load_to_device(whole=[audio_encoder.patcher])
        progress = _host.Progress(frames)
        windows = []
        for chunk in audio_chunks(audio_encoder.encoder, samples, mode, config.new_frames, context_seconds):
            _host.check_interrupt()
            windows.append(chunk.to("cpu", torch.float32))
            progress.update(len(windows) * config.new_frames)  # approximate: the first 'once' chunk adds 33
        return io.NodeOutput(FlashHeadAudioEmbeds(
            windows=tuple(windows), total_frames=frames, mode=mode, context_seconds=float(context_seconds),
            variant=config.variant, new_frames=config.new_frames, seconds=len(samples) / AUDIO_SAMPLE_RATE))
