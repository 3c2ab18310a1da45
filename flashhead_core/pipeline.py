"""The main job: portrait + speech -> talking-head MP4, streamed chunk by chunk (used by the CLI and the demo).

    pipeline = load_pipeline("SoulX-FlashHead-1_3B", variant="lite", device="cuda", dtype=torch.bfloat16)
    write_talking_video(pipeline, "face.png", "speech.wav", "out.mp4", height=512, width=512, seed=42)

A host that loads the models itself (the ComfyUI nodes) builds `Pipeline(model, vae, audio_encoder)` from them and
follows the run through the hooks: on_step(chunk, step, chunks) before every denoising step, on_frames(frames, written,
total) after every chunk written.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .audio import (
    DEFAULT_CONTEXT_SECONDS,
    AudioFile,
    Wav2Vec2FrameEncoder,
    decode_pieces,
    load_wav2vec2,
    mono_16k_pieces,
    probe_audio_file,
    read_audio,
    to_mono_16k,
)
from .checkpoint import load_dit
from .config import AUDIO_SAMPLE_RATE, FPS
from .errors import CheckpointError, FaceError
from .media.face import FaceCrop
from .model import FlashHeadDiT
from .release import AUDIO_DIR
from .generation.chunks import chunk_count, video_frame_count
from .generation.continuation import check_continuation
from .generation.run import speech_run
from .generation.sampler import SamplerConfig
from .generation.session import StreamingSession, available_memory, check_memory
from .generation.timeline import Timeline, portrait_schedule
from .vae import NEEDED_VAE, VideoVAE, check_vae_matches_model, load_vae
from .media.video_io import AudioStream, VideoWriter, aac_can_store


@dataclass
class Pipeline:
    """The three loaded models of one run (from `load_pipeline`, or loaded by a host such as ComfyUI). device:
    where the DiT computes when a host keeps part of its weights offloaded (default: where its weights are).
    static: how the sessions made from it run a chunk's 4 steps (`SamplerConfig.static`: "off" eager; "auto" the
    compiled static step, a CUDA graph on CUDA; docs/performance.md)."""
    model: FlashHeadDiT
    vae: VideoVAE
    audio_encoder: Wav2Vec2FrameEncoder
    device: torch.device | None = None
    static: str = "off"

    def __post_init__(self):
        SamplerConfig(static=self.static)  # an unknown mode is refused here, naming the choices

    def sampler(self, color_correction: float = 1.0) -> SamplerConfig:
        """The sampler of a session made from this pipeline."""
        return SamplerConfig(color_correction=color_correction, static=self.static)


def load_pipeline(checkpoint: str | Path, *, variant: str = "auto", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, attention: str = "auto",
                  wav2vec2: str | Path | None = None, weight_dtype: torch.dtype | None = None,
                  static: str = "off") -> Pipeline:
    """The DiT, its VAE and wav2vec2 from the released checkpoint root (wav2vec2 defaults to
    `<checkpoint>/wav2vec2-base-960h`, where `flashhead download` puts it). wav2vec2 always runs in float32.
    weight_dtype: the DiT's fp8 weight storage (`load_dit`). static: `Pipeline.static`."""
    SamplerConfig(static=static)  # refused before the weights load
    checkpoint = Path(checkpoint)
    model = load_dit(checkpoint, variant=variant, dtype=dtype, device=device, attention=attention,
                     weight_dtype=weight_dtype)
    found = model.config.variant
    try:
        vae = load_vae(checkpoint, device=device, dtype=dtype, variant=found)
    except CheckpointError as e:  # e.g. a root holding only the other variant's VAE
        raise CheckpointError(f"the FlashHead {found} model in {checkpoint} needs {NEEDED_VAE[found]}: {e}") from e
    check_vae_matches_model(vae, model.config)
    audio_path = Path(wav2vec2) if wav2vec2 else checkpoint / AUDIO_DIR
    if not audio_path.exists():
        raise CheckpointError(f"wav2vec2 not found at {audio_path}: download facebook/wav2vec2-base-960h there "
                              f"(`flashhead download {checkpoint}`) or pass its path")
    return Pipeline(model, vae, load_wav2vec2(audio_path, device=device), static=static)


def _muxable_audio(channels, rate: float, samples) -> tuple:
    """The original track for the MP4 (AAC: <= 2 channels at a standard rate), else the 16 kHz mono mixdown."""
    if aac_can_store(rate, channels.shape[0]):
        return channels, int(rate)
    return samples[None], AUDIO_SAMPLE_RATE


def _muxable_stream(track: AudioFile) -> AudioStream:
    """`_muxable_audio` for a probed file, decoded again as a stream: pieces [t, C] at the original rate, else
    [t] of the 16 kHz mono mixdown."""
    if aac_can_store(track.sample_rate, track.channels):
        return AudioStream((piece.T for piece in decode_pieces(track)), track.sample_rate, track.channels)
    return AudioStream(mono_16k_pieces(decode_pieces(track), track.sample_rate), AUDIO_SAMPLE_RATE, 1)


def _speech_and_soundtrack(audio, mode: str) -> tuple[np.ndarray | Iterable[np.ndarray], int, tuple | AudioStream]:
    """The model's 16 kHz mono speech (an array [N], or pieces [t] for a file in stream mode), N, and the MP4's
    audio. A file in stream mode is checked in a first decoding pass and then decoded as two streams (the model's,
    the MP4's), so memory does not grow with its length; other inputs are decoded whole."""
    if mode == "stream" and isinstance(audio, (str, os.PathLike)):
        track = probe_audio_file(audio)
        speech = mono_16k_pieces(decode_pieces(track), track.sample_rate)
        return speech, track.length_16k, _muxable_stream(track)
    channels, rate = read_audio(audio)
    samples = to_mono_16k(channels, rate)
    return samples, len(samples), _muxable_audio(channels, rate, samples)


class FullFrame:
    """The video's frames are the model's (no face crop)."""

    summary = None

    def model_portraits(self, portraits):
        return portraits

    def video_size(self, width: int, height: int) -> tuple[int, int]:
        return width, height

    def video_frames(self, frames: torch.Tensor) -> Iterable[torch.Tensor]:
        return (frames,)


class PastedBack:
    """The face crop as a frame adapter: the model is given the crop's square, and each of its frames is pasted back
    into the full portrait for the video (`face.FaceCrop`)."""

    def __init__(self, crop: FaceCrop):
        self.crop = crop
        self.summary = crop.summary()

    def model_portraits(self, portraits) -> torch.Tensor:
        if isinstance(portraits, Timeline):
            raise FaceError("a face crop needs one portrait, not a timeline: give one image, or disconnect the face "
                            "crop")
        self.crop.check_portrait(portraits)
        return self.crop.reference()

    def video_size(self, width: int, height: int) -> tuple[int, int]:
        return self.crop.video_size

    def video_frames(self, frames: torch.Tensor) -> Iterable[np.ndarray]:
        return self.crop.video_frames(frames)


@dataclass(frozen=True)
class VideoSummary:
    """What `write_talking_video` made. face_crop: where the face was (with a face crop); timeline: where each
    portrait takes over (with a timeline)."""

    out: str
    frames: int
    chunks: int
    seconds: float
    fps: float
    variant: str
    size: str
    face_crop: dict | None = None
    timeline: list[dict] | None = None

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def write_talking_video(pipeline: Pipeline, portraits, audio, out: str | Path, *, height: int = 512, width: int = 512,
                        seed: int = 0, mode: str = "stream", color_correction: float = 1.0,
                        context_seconds: float = DEFAULT_CONTEXT_SECONDS, continue_from=None,
                        face_crop: FaceCrop | None = None, live=None, free_memory: int | None = None,
                        on_chunk: Callable[[int, int, float], None] | None = None,
                        on_frames: Callable[[torch.Tensor, int, int], None] | None = None,
                        on_step: Callable[[int, int, int], None] | None = None,
                        on_state: Callable[[object], None] | None = None,
                        should_cancel: Callable[[], bool] | None = None) -> VideoSummary:
    """Generate and write the MP4 incrementally; returns a VideoSummary.

    portraits: one image (anything `image.load_image` takes) or a `timeline.Timeline` of several with their start
    times (the summary then lists where each takes over); audio: anything `audio.load_audio` takes (a file, a ComfyUI
    AUDIO dict {"waveform": [1, C, T], "sample_rate"}, an array with sample_rate). continue_from: a
    `continuation.ContinuationState` to continue (stream mode, one portrait; checked before anything runs; the seed
    is then unused). face_crop: a `face.FaceCrop` made on the portrait (checked by size): the model is given its
    square and every frame is pasted back into the full portrait, so the MP4 has the portrait's size (made even: an
    odd size loses its last row or column). live: a `live.LiveSink` that streams the video as it is written (the
    MP4's frames and audio, chunk by chunk; it ends with the run's error when the run fails or is cancelled).
    free_memory: bytes free for the run on the VAE's device (default: measured), checked against
    `session.memory_estimate` before anything runs. The MP4 appears only when complete: on error or cancellation
    nothing is left behind.
    Hooks: on_step(chunk, step, chunks in all) before each denoising step; on_frames(the chunk's new frames
    [n, H, W, 3] float 0..1 CPU (the model's, without the paste-back), frames written, frames total) and
    on_chunk(frames written, frames total, seconds elapsed) after each chunk; on_state(state) receives the
    continuation state the run ends in; should_cancel() is polled inside every long stage.
    """
    # The cheap checks first (size, memory, seed, model/VAE pair, portrait against the face crop, the state), then
    # the audio, checked in full (the model hears the 16 kHz mono mixdown, the MP4 keeps the original when AAC can),
    # then the portraits' VAE encodes.
    check_memory(height, width, available_memory(pipeline.vae.device) if free_memory is None else free_memory)
    session = StreamingSession(pipeline.model, pipeline.vae, height=height, width=width, seed=seed,
                               sampler=pipeline.sampler(color_correction), should_cancel=should_cancel,
                               device=pipeline.device)
    frame = FullFrame() if face_crop is None else PastedBack(face_crop)
    portraits = frame.model_portraits(portraits)
    if continue_from is not None:
        check_continuation(continue_from, session, mode, context_seconds)
    speech, num_samples, soundtrack = _speech_and_soundtrack(audio, mode)
    schedule, takeovers = portrait_schedule(portraits, video_frame_count(num_samples), mode, session.config.new_frames)
    run = speech_run(session, pipeline.audio_encoder, speech, mode=mode, context_seconds=context_seconds,
                     num_samples=num_samples, portraits=schedule, state=continue_from, keep_state=on_state is not None)
    if on_step is not None:
        chunks = chunk_count(run.total_frames, mode, session.config.new_frames)
        session.progress = lambda chunk, step: on_step(chunk, step, chunks)
    start = time.perf_counter()
    with VideoWriter(out, *frame.video_size(width, height), fps=FPS, audio=soundtrack, live=live) as writer:
        for frames in run:
            for part in frame.video_frames(frames):
                writer.write(part)
            if on_frames is not None:
                on_frames(frames, writer.frames_written, run.total_frames)
            if on_chunk is not None:
                on_chunk(writer.frames_written, run.total_frames, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if on_state is not None:
        on_state(run.state)
    return VideoSummary(str(out), run.total_frames, session.chunk_index, round(seconds, 2),
                        round(run.total_frames / seconds, 2), pipeline.model.config.variant, f"{width}x{height}",
                        frame.summary, takeovers)
