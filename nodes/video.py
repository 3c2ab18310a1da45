"""FlashHead Talking Video: portrait + speech -> an MP4 in ComfyUI's output folder, written chunk by chunk, as VIDEO.

Frames never accumulate: each chunk is encoded into the MP4 as soon as it is decoded, so an hour of audio needs the
same memory as ten seconds (beyond the AUDIO input itself, which ComfyUI holds whole). The file is written as a hidden
partial file and renamed only on success; an error or an interrupt leaves nothing behind.
"""

from __future__ import annotations

from ..flashhead_core.audio import load_audio
from ..flashhead_core.config import AUDIO_SAMPLE_RATE, FPS
from ..flashhead_core.streaming import check_encoder_fits, stream_talking_head, video_frame_count
from ..flashhead_core.video_io import VideoWriter, aac_can_store

from . import _host
from ._wires import AUDIO_ENCODER, MODEL, VAE
from .audio import AUDIO_MODE_INPUTS
from .sampler import GENERATION_INPUTS, cancelled_as_interrupt, start_session


def soundtrack(audio: dict, samples_16k):
    """The audio muxed into the MP4: the original AUDIO (its rate and up to 2 channels, not copied) when AAC can
    store it, else the 16 kHz mono track the model heard."""
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    if aac_can_store(rate, waveform.shape[1]) and waveform.is_floating_point():
        return waveform[0].detach().cpu(), rate  # [C, T]
    return samples_16k, AUDIO_SAMPLE_RATE


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
        _host.require_host()
        check_encoder_fits(audio_encoder.encoder, model.config)
        samples = load_audio(audio)  # validated, mono, 16 kHz: a new array
        session, _ = start_session(model, vae, image, width, height, seed, color_correction,
                                   also_load=[audio_encoder.patcher])
        path, filename, subfolder = _host.output_file(filename_prefix, width, height, "mp4")
        progress = _host.FrameProgress(video_frame_count(len(samples)))

        def run():
            with VideoWriter(path, width=width, height=height, fps=FPS, audio=soundtrack(audio, samples)) as writer:
                for frames in stream_talking_head(session, audio_encoder.encoder, samples, mode=mode,
                                                  context_seconds=context_seconds):
                    writer.write(frames)
                    progress.update(writer.frames_written, frames)

        cancelled_as_interrupt(run)
        ui = {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        return {"ui": ui, "result": (video_from_file(str(path)),)}
