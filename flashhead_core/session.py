"""The streaming session: everything that lives across chunks (identities, motion latents, the noise RNG) in one object.

    session = StreamingSession(model, vae, height=512, width=512, seed=42)
    session.add_identity("anna", image)                   # reference latent encoded once
    for windows in audio_chunks:                          # [1, 33, 5, 12, 768] each
        frames = session.generate_chunk(windows)          # [1, 3, 33, H, W] in [-1, 1], colour-corrected
    session.use_identity("ben")                           # switch between chunks

`stream_frames()` below ties the audio encoder, the session and trimming together and yields the new frames of each
chunk as soon as they are decoded. This module knows no file formats.
"""

from __future__ import annotations

import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .audio import AudioInputError, Wav2Vec2FrameEncoder, once_mode_chunks
from .audio_context_cache import DEFAULT_CONTEXT_SECONDS, stream_chunks
from .config import AUDIO_SAMPLE_RATE, CHUNK_FRAMES, FPS, MAX_SEED, SAMPLES_PER_FRAME
from .image import check_size, match_colors, reference_tensor
from .model import FlashHeadDiT
from .sampler import GenerationCancelled, SamplerConfig, sample_chunk, shifted_timesteps
from .stage_timer import NO_TIMER, StageTimer
from .vae import VideoVAE, check_vae_matches_model
from .video_io import video_to_images

ProgressCallback = Callable[[int, int], None]  # (chunk index, step index)


def check_seed(seed: int, name: str = "seed") -> int:
    """A seed in 0..2**64-1, ComfyUI's range. torch.Generator would take a negative seed as its 64-bit two's
    complement (-1 gives the noise of 2**64-1), so negatives are refused instead of silently aliased."""
    try:
        value = operator.index(seed)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {seed!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be between 0 and {MAX_SEED} (2**64 - 1), got {value}: pick a seed in that "
                         f"range")
    return value


_vae_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_vae_locks_guard = threading.Lock()


def vae_lock(vae: VideoVAE) -> threading.Lock:
    """The lock of one VAE network. diffusers' Wan VAE keeps its causal-convolution feature cache on the module
    during a call, so sessions sharing a VAE in different threads take turns in encode/decode."""
    network = getattr(vae, "model", vae)
    with _vae_locks_guard:
        return _vae_locks.setdefault(network, threading.Lock())


@dataclass
class Identity:
    """One prepared reference: the colour reference [1, 3, 1, H, W] in [-1, 1] and its latent [1, C, T, h, w]."""

    color_reference: torch.Tensor
    ref_latent: torch.Tensor


class StreamingSession:
    """Chunked autoregressive generation for one stream. Not thread-safe: one session per stream (sessions sharing
    a model and VAE may run in parallel threads)."""

    def __init__(self, model: FlashHeadDiT, vae: VideoVAE, *, height: int = 512, width: int = 512, seed: int = 0,
                 sampler: SamplerConfig = SamplerConfig(), chunk_frames: int = CHUNK_FRAMES,
                 vae_generator_seed: int | None = None,
                 progress: ProgressCallback | None = None, should_cancel: Callable[[], bool] | None = None,
                 timer: StageTimer = NO_TIMER):
        check_vae_matches_model(vae, model.config)
        check_size(height, width, model.config.spatial_multiple)
        self.model, self.vae, self.sampler = model, vae, sampler
        self.config = model.config
        self.height, self.width = height, width
        self.chunk_frames = chunk_frames  # 33 in the product; the reference fixtures use fewer
        self.device, self.dtype = next(model.parameters()).device, model.dtype
        self.timesteps = shifted_timesteps(sampler, self.dtype).to(self.device)
        # Noise is drawn on the CPU in float32 and then cast: the same seed gives the same noise on any device.
        self.noise_generator = torch.Generator().manual_seed(check_seed(seed))
        # A stochastic VAE encode (LTX posterior sampling) draws from its own stream, so the noise stays aligned.
        self.vae_generator = torch.Generator().manual_seed(
            check_seed(seed if vae_generator_seed is None else vae_generator_seed, "vae_generator_seed"))
        self.vae_lock = vae_lock(vae)
        self.progress, self.should_cancel = progress, should_cancel
        self.timer = timer  # per-stage timings (flashhead bench e2e); NO_TIMER does nothing
        self.identities: dict[str, Identity] = {}
        self.active: str | None = None
        self.motion_latents: torch.Tensor | None = None
        self.chunk_index = 0

    @property
    def latent_shape(self) -> tuple[int, ...]:
        t_stride, h_stride, w_stride = self.config.vae_stride
        return (1, self.config.out_dim, 1 + (self.chunk_frames - 1) // t_stride, self.height // h_stride,
                self.width // w_stride)

    def add_identity(self, name: str, image) -> None:
        """Prepare a reference (any input `image.load_image` takes); the first one added becomes active."""
        color_reference = reference_tensor(image, self.height, self.width).to(self.device)
        clip = color_reference.to(self.vae.dtype).expand(-1, -1, self.chunk_frames, -1, -1)
        with torch.no_grad(), self.vae_lock:
            ref_latent = self.vae.encode(clip, generator=self.vae_generator).to(self.dtype)
        self.identities[name] = Identity(color_reference, ref_latent)
        if self.active is None:
            self.use_identity(name)

    def use_identity(self, name: str) -> None:
        """Switch identity before the next chunk. The motion restarts from the new reference (a clean cut)."""
        if name not in self.identities:
            raise KeyError(f"unknown identity {name!r}; prepared: {', '.join(self.identities) or 'none'}")
        self.active = name
        self.motion_latents = self.identities[name].ref_latent[:, :, :1]

    def _draw_noise(self) -> torch.Tensor:
        noise = torch.randn(self.latent_shape, generator=self.noise_generator, dtype=torch.float32)
        return noise.to(device=self.device, dtype=self.dtype)

    def _check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCancelled(f"generation cancelled at chunk {self.chunk_index}")

    def _on_step(self, step: int) -> None:
        self._check_cancel()
        if self.progress is not None:
            self.progress(self.chunk_index, step)

    def generate_chunk(self, audio_windows: torch.Tensor,
                       draw_noise: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """audio_windows [1, 33, 5, 12, 768] -> all decoded, colour-corrected frames [1, 3, 33, H, W] in [-1, 1].

        The caller keeps the new ones (see `frames_to_keep`). draw_noise replaces the session RNG (fixture replay).
        """
        if self.active is None:
            raise RuntimeError("no identity prepared: call add_identity() first")
        self._check_cancel()
        identity = self.identities[self.active]
        timer = self.timer
        with torch.no_grad():
            with timer.stage("audio_projection"):
                audio_tokens = self.model.audio_proj(audio_windows.to(self.device))
            latents = sample_chunk(self.model, audio_tokens, identity.ref_latent, self.motion_latents,
                                   self.timesteps, draw_noise or self._draw_noise, self.sampler.num_timesteps,
                                   self._on_step, timer)
            with timer.stage("vae_decode"), self.vae_lock:
                frames = self.vae.decode(latents.to(self.vae.dtype))
            if self.sampler.color_correction > 0:
                with timer.stage("color_correction"):
                    frames = match_colors(frames, identity.color_reference.to(frames.dtype),
                                          self.sampler.color_correction)
            with timer.stage("motion_reencode"), self.vae_lock:
                motion_clip = frames[:, :, -self.config.motion_frames:]
                self.motion_latents = self.vae.encode(motion_clip, generator=self.vae_generator).to(self.dtype)
        self.chunk_index += 1
        return frames


def frames_to_keep(chunk_index: int, mode: str, motion_frames: int) -> slice:
    """Which of a chunk's 33 decoded frames are new: stream mode drops the motion frames of every chunk, once mode
    keeps all of chunk 0 (spec §3)."""
    if mode == "once" and chunk_index == 0:
        return slice(0, CHUNK_FRAMES)
    return slice(motion_frames, CHUNK_FRAMES)


def stream_frames(session: StreamingSession, audio_chunks: Iterable[torch.Tensor], mode: str,
                  total_frames: int) -> Iterator[torch.Tensor]:
    """Run the session over the chunk windows and yield each chunk's new frames as [n, H, W, 3] float32 in 0..1 on
    the CPU, stopping at exactly `total_frames` (the audio's duration; the padding is trimmed). No chunk is taken
    from `audio_chunks` after the last one needed (in stream mode, taking one encodes its audio)."""
    if total_frames <= 0:
        return
    emitted = 0
    for index, windows in enumerate(audio_chunks):
        frames = session.generate_chunk(windows)[0, :, frames_to_keep(index, mode, session.config.motion_frames)]
        frames = frames[:, : total_frames - emitted]
        emitted += frames.shape[1]
        yield video_to_images(frames[None])
        if emitted >= total_frames:
            return


AUDIO_MODES = ("stream", "once")


def video_frame_count(num_samples: int) -> int:
    """Frames that cover a 16 kHz track exactly: round(seconds * 25). A track that rounds to no frame at all (320
    samples, 20 ms, or less) raises AudioInputError: there would be no video to write."""
    frames = round(num_samples * FPS / AUDIO_SAMPLE_RATE)
    if frames < 1:
        milliseconds = num_samples / AUDIO_SAMPLE_RATE * 1000
        raise AudioInputError(f"the audio lasts {milliseconds:.1f} ms ({num_samples} samples at 16 kHz), less than "
                              f"one video frame ({1000 // FPS} ms, {SAMPLES_PER_FRAME} samples): use a longer track "
                              f"(padding it with silence is fine)")
    return frames


def audio_chunks(encoder: Wav2Vec2FrameEncoder, samples: np.ndarray | Iterable[np.ndarray], mode: str,
                 new_frames: int, context_seconds: float = DEFAULT_CONTEXT_SECONDS) -> Iterator[torch.Tensor]:
    """The chunk windows [1, 33, 5, 12, 768] of a 16 kHz mono track in 'stream' (Temporal Audio Context Cache) or
    'once' mode, lazily: stream mode encodes each chunk's 8-s context only when the chunk is generated. The track is
    an array [N]; stream mode also takes it as an iterable of pieces [t] (read as the chunks need them)."""
    if mode == "stream":
        return stream_chunks(encoder, samples, new_frames, context_seconds)
    if mode == "once":
        return once_mode_chunks(encoder, samples, new_frames)
    raise ValueError(f"audio mode must be one of {', '.join(AUDIO_MODES)}, not {mode!r}")


def check_encoder_fits(encoder: Wav2Vec2FrameEncoder, config) -> None:
    """The encoder's feature width must be what the DiT's audio projection reads (768: wav2vec2-base-960h)."""
    hidden = encoder.model.config.hidden_size
    if hidden != config.audio_channels:
        raise ValueError(f"the audio encoder gives {hidden}-wide features but the DiT's audio projection takes "
                         f"{config.audio_channels}: use the wav2vec2 that belongs to this checkpoint "
                         f"(facebook/wav2vec2-base-960h for the released models)")


def stream_talking_head(session: StreamingSession, encoder: Wav2Vec2FrameEncoder,
                        samples: np.ndarray | Iterable[np.ndarray], mode: str = "stream",
                        context_seconds: float = DEFAULT_CONTEXT_SECONDS, num_samples: int | None = None
                        ) -> Iterator[torch.Tensor]:
    """Speech [N] float32 at 16 kHz -> the video's frames, chunk by chunk, as [n, H, W, 3] float32 0..1 on the CPU;
    round(N / 16000 * 25) frames in all. In stream mode the speech may come as pieces [t] (e.g. a file decoded as a
    stream), with their total N given as num_samples."""
    check_encoder_fits(encoder, session.config)
    chunks = audio_chunks(encoder, samples, mode, session.config.new_frames, context_seconds)
    return stream_frames(session, chunks, mode, video_frame_count(len(samples) if num_samples is None else num_samples))
