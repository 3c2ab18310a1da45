"""FlashHead Talking Video: portrait + speech -> an MP4 in ComfyUI's output folder, written chunk by chunk, as VIDEO.

Frames never accumulate: each chunk is encoded into the MP4 as soon as it is decoded, so an hour of audio needs the
same memory as ten seconds (beyond the AUDIO input itself, which ComfyUI holds whole). The file is written as a hidden
partial file and renamed only on success; an error or an interrupt leaves nothing behind.
"""

from __future__ import annotations

from ..flashhead_core.pipeline import Pipeline, write_talking_video
from ..flashhead_core.sampler import SamplerConfig

from . import _host
from ._inputs import check_numbers
from ._wires import AUDIO_ENCODER, MODEL, VAE
from .audio import AUDIO_MODE_INPUTS
from .sampler import GENERATION_INPUTS, cancelled_as_interrupt, prepare_models


def video_from_file(path: str):
    """ComfyUI's lazy VIDEO object for a file (comfy_api; the `latest` layout first, older hosts' second)."""
    try:
        from comfy_api.latest import InputImpl

        return InputImpl.VideoFromFile(path)
    except ImportError:
        from comfy_api.input_impl import VideoFromFile

        return VideoFromFile(path)


class FlashHeadTalkingVideo:
    """Portrait + speech in, talking-head MP4 out, for audio of any length."""

    CATEGORY = "FlashHead"
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("The MP4 just written (H.264 + AAC, 25 fps), as ComfyUI VIDEO: connect GetVideoComponents, "
                       "SaveVideo, ...",)
    FUNCTION = "generate"
    OUTPUT_NODE = True
    DESCRIPTION = ("The whole FlashHead pipeline in one node: encodes the audio chunk by chunk (stream mode) or at "
                   "once, generates the frames and writes them with the original audio into an MP4 in ComfyUI's "
                   "output folder as they come, so memory stays flat however long the audio is.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "vae": (VAE,),
            "audio_encoder": (AUDIO_ENCODER,),
            "audio": ("AUDIO", {"tooltip": "Speech, any length, rate and channel count; muxed into the MP4."}),
            **GENERATION_INPUTS,
            **AUDIO_MODE_INPUTS,
            "filename_prefix": ("STRING", {"default": "FlashHead/talking", "tooltip": (
                "Where in ComfyUI's output folder: <prefix>_00001_.mp4, numbered like SaveVideo's files "
                "(sub-folders allowed, e.g. FlashHead/anna).")}),
        }}

    def generate(self, model, vae, audio_encoder, audio, image, width, height, seed, color_correction, mode,
                 context_seconds, filename_prefix):
        check_numbers(type(self), width=width, height=height, seed=seed, color_correction=color_correction,
                      context_seconds=context_seconds)
        prepare_models(model, vae, width, height, also_load=[audio_encoder.patcher])
        path, filename, subfolder = _host.output_file(filename_prefix, width, height, "mp4")
        progress = _host.StepProgress(SamplerConfig().steps)
        pipeline = Pipeline(model.dit, vae.vae, audio_encoder.encoder)
        cancelled_as_interrupt(lambda: write_talking_video(
            pipeline, image, audio, path, height=height, width=width, seed=seed, mode=mode,
            color_correction=color_correction, context_seconds=context_seconds, on_step=progress.step,
            on_frames=lambda frames, written, total: progress.chunk_done(frames), should_cancel=_host.interrupted,
            free_memory=_host.free_memory(vae.vae.device)))
        ui = {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        return {"ui": ui, "result": (video_from_file(str(path)),)}
