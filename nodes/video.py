"""FlashHead Talking Video: portrait + speech -> an MP4 in ComfyUI's output folder, written chunk by chunk, as VIDEO.

Frames never accumulate: each chunk is encoded into the MP4 as soon as it is decoded, so an hour of audio needs the
same memory as ten seconds (beyond the AUDIO input itself, which ComfyUI holds whole). The file is written as a hidden
partial file and renamed only on success; an error or an interrupt leaves nothing behind.
"""

from __future__ import annotations

from ..flashhead_core import Pipeline, SamplerConfig, write_talking_video
from . import _host
from ._inputs import check_numbers
from ._io import CATEGORY, InputImpl, io, ui
from ._wires import AudioEncoder, Model, Vae
from .audio import audio_mode_inputs
from .continuation import state_input, state_output
from .face import face_crop_input
from .live import live_stream
from .sampler import cancelled_as_interrupt, generation_inputs, prepare_models
from .timeline import TimelineWire


class FlashHeadTalkingVideo(io.ComfyNode):
    """Portrait + speech in, talking-head MP4 out, for audio of any length."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadTalkingVideo", display_name="FlashHead Talking Video", category=CATEGORY,
            description=("The whole FlashHead pipeline in one node: encodes the audio chunk by chunk (stream mode) "
                         "or at once, generates the frames and writes them with the original audio into an MP4 in "
                         "ComfyUI's output folder as they come, so memory stays flat however long the audio is."),
            inputs=[
                Model.Input("model", tooltip="From FlashHead Model Loader (Lite or Pro)."),
                Vae.Input("vae", tooltip="From FlashHead VAE Loader: LTX for Lite, Wan2.1 for Pro."),
                AudioEncoder.Input("audio_encoder", tooltip="From FlashHead Audio Encoder Loader (wav2vec2)."),
                io.Audio.Input("audio", tooltip="Speech, any length, rate and channel count; muxed into the MP4."),
                *generation_inputs(),
                *audio_mode_inputs(),
                io.String.Input("filename_prefix", default="FlashHead/talking", tooltip=(
                    "Where in ComfyUI's output folder: <prefix>_00001_.mp4, numbered like SaveVideo's files "
                    "(sub-folders allowed, e.g. FlashHead/anna).")),
                state_input(),
                # Added after the V1 nodes: last and optional, so older workflows (UI and API) load unchanged.
                TimelineWire.Input("timeline", optional=True, tooltip=(
                    "From FlashHead Identity Timeline: portraits that take over at given times (the image input "
                    "plays until the first one).")),
                face_crop_input(),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip=(
                "The MP4 just written (H.264 + AAC, 25 fps), as ComfyUI VIDEO: connect GetVideoComponents, "
                "SaveVideo, ...")), state_output()],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],  # which node and workflow the live stream is of
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, audio_encoder, audio, image, width, height, seed, color_correction, mode,
                context_seconds, filename_prefix, state=None, timeline=None, face_crop=None) -> io.NodeOutput:
        check_numbers(cls, width=width, height=height, seed=seed, color_correction=color_correction,
                      mode=mode, context_seconds=context_seconds)
        prepare_models(model, vae, width, height, also_load=[audio_encoder.patcher])
        path, filename, subfolder = _host.output_file(filename_prefix, width, height, "mp4")
        progress = _host.StepProgress(SamplerConfig().steps)
        pipeline = Pipeline(model.dit, vae.vae, audio_encoder.encoder, device=model.patcher.load_device)
        states = []  # the state this run ends in (FLASHHEAD_STATE output)
        portraits = image if timeline is None else timeline.with_first(image)  # several: nodes/timeline.py
        with live_stream(cls.hidden) as live:  # played in the node while it runs (nodes/live.py)
            cancelled_as_interrupt(lambda: write_talking_video(
                pipeline, portraits, audio, path, height=height, width=width, seed=seed, mode=mode,
                color_correction=color_correction, context_seconds=context_seconds, on_step=progress.step,
                on_frames=lambda frames, written, total: progress.chunk_done(None if live else frames),  # live: the
                should_cancel=_host.interrupted,  # player is the preview (a still would hide the finished video)
                free_memory=_host.free_memory(vae.vae.device), continue_from=state,
                on_state=states.append, face_crop=face_crop, live=live))
        saved = ui.SavedResult(filename, subfolder, io.FolderType.output)
        video = InputImpl.VideoFromFile(str(path))
        return io.NodeOutput(video, states[0] if states else None, ui=ui.PreviewVideo([saved]))
