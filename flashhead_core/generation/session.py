"""The streaming session: everything that lives across chunks (identities, motion latents, the noise RNG) in one object.

    session = StreamingSession(model, vae, height=512, width=512, seed=42)
    session.add_identity("anna", image)                   # reference latent encoded once
    for windows in audio_chunks:                          # [1, 33, 5, 12, 768] each
        frames = session.generate_chunk(windows)          # [1, 3, 33, H, W] in [-1, 1], colour-corrected
    session.use_identity("ben")                           # switch between chunks
    session.last_latents                                  # the chunk's final latents [1, C, T, h, w], as decoded
    generate_chunks([s1, s2], [w1, w2])                   # N streams in one batched 4-step update
    saved = session.snapshot(); ...; session.restore(saved)   # what lives across chunks, e.g. for a continuation

`run.py` is the chunk loop over a session (speech slices, identity schedule, trimming). No file formats here.
"""

from __future__ import annotations

import operator
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..config import CHUNK_FRAMES, MAX_SEED
from ..errors import InputError, SizeError
from ..media.image import check_size, match_colors, reference_tensor
from ..model import FlashHeadDiT
from .sampler import GenerationCancelled, SamplerConfig, StageHook, motion_inputs, sample_chunk, shifted_timesteps, untimed
from ..vae import VideoVAE, check_vae_matches_model

ProgressCallback = Callable[[int, int], None]  # (chunk index, step index)
CancelCheck = Callable[[], None]  # raises GenerationCancelled when the user cancelled; called inside long stages

# Working memory of one chunk beside the loaded weights, per output pixel and chunk frame (33 frames a chunk):
# measured, see `memory_estimate`.
BYTES_PER_PIXEL_FRAME = 144


def memory_estimate(height: int, width: int, chunk_frames: int = CHUNK_FRAMES) -> int:
    """Bytes one chunk needs beside the weights at height x width: BYTES_PER_PIXEL_FRAME * H * W * chunk_frames.

    BYTES_PER_PIXEL_FRAME is the larger of the Lite and Pro slopes measured by `flashhead bench chunk-memory` (peak
    RSS of a one-chunk run above the RSS after loading, fitted as a line in H * W * 33), rounded up; the figures and
    the method are in docs/performance.md."""
    return BYTES_PER_PIXEL_FRAME * height * width * chunk_frames


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free on `device` (CUDA: the driver's figure; CPU: MemAvailable on Linux), None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def check_memory(height: int, width: int, free: int | None) -> None:
    """Refuse (SizeError) a size whose chunk would not fit in `free` bytes (None: unknown, not checked), before any
    work starts: at 2048x2048 one chunk needs gigabytes, and running out of memory stalls the machine."""
    needed = memory_estimate(height, width)
    if free is None or needed <= free:
        return
    side = int((free / memory_estimate(1, 1)) ** 0.5) // 32 * 32
    raise SizeError(f"{width}x{height} needs about {needed / 2**30:.1f} GiB of working memory per chunk, but only "
                    f"{free / 2**30:.1f} GiB is free: use a smaller size (FlashHead is trained at 512x512; up to "
                    f"about {side}x{side} fits now) or free memory (close other programs or models)")


def check_seed(seed: int, name: str = "seed") -> int:
    """A seed in 0..2**64-1, ComfyUI's range. torch.Generator would take a negative seed as its 64-bit two's
    complement (-1 gives the noise of 2**64-1), so negatives are refused instead of silently aliased."""
    try:
        value = operator.index(seed)
    except TypeError:
        raise InputError(f"{name} must be a whole number, got {seed!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"{name} must be between 0 and {MAX_SEED} (2**64 - 1), got {value}: pick a seed in that "
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


def decode_chunk(vae: VideoVAE, latents: torch.Tensor, color_reference: torch.Tensor, strength: float, *,
                 check_cancel: CancelCheck | None = None, stage: StageHook = untimed) -> torch.Tensor:
    """Normalised latents [1, C, t, h, w] -> decoded frames [1, 3, T, H, W] in [-1, 1] (float32), colour-corrected
    towards color_reference [1, 3, 1, H, W] with `strength` (0: none). What a chunk's frames are, for the session and
    for decoding a saved LATENT again. check_cancel runs before every decode tile and every corrected frame."""
    with stage("vae_decode"), vae_lock(vae):
        frames = vae.decode(latents.to(vae.dtype), on_tile=check_cancel)
    if strength > 0:
        with stage("color_correction"):
            reference = color_reference.to(frames.device, frames.dtype)
            for t in range(frames.shape[2]):  # frame by frame: per-frame statistics, so the same result, less memory
                if check_cancel is not None:
                    check_cancel()
                frames[:, :, t:t + 1] = match_colors(frames[:, :, t:t + 1], reference, strength)
    return frames


@dataclass
class Identity:
    """One prepared reference: the colour reference [1, 3, 1, H, W] in [-1, 1] and its latent [1, C, T, h, w]."""

    color_reference: torch.Tensor
    ref_latent: torch.Tensor


class StreamingSession:
    """Chunked autoregressive generation for one stream. Not thread-safe: one session per stream (sessions sharing
    a model and VAE may run in parallel threads).

    device: where the DiT computes (default: where its first parameter is). A host that keeps part of the weights
    offloaded (ComfyUI's low-VRAM modes; the layers cast each weight to the input's device) passes its compute
    device here."""

    def __init__(self, model: FlashHeadDiT, vae: VideoVAE, *, height: int = 512, width: int = 512, seed: int = 0,
                 sampler: SamplerConfig = SamplerConfig(), chunk_frames: int = CHUNK_FRAMES,
                 vae_generator_seed: int | None = None,
                 progress: ProgressCallback | None = None, should_cancel: Callable[[], bool] | None = None,
                 stage: StageHook = untimed, device: torch.device | str | None = None):
        check_vae_matches_model(vae, model.config)
        check_size(height, width, model.config.spatial_multiple)
        self.model, self.vae, self.sampler = model, vae, sampler
        self.config = model.config
        self.height, self.width = height, width
        self.chunk_frames = chunk_frames  # 33 in the product; the reference fixtures use fewer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = model.dtype
        self.timesteps = shifted_timesteps(sampler, self.dtype).to(self.device)
        # Noise is drawn on the CPU in float32 and then cast: the same seed gives the same noise on any device.
        self.noise_generator = torch.Generator().manual_seed(check_seed(seed))
        # A stochastic VAE encode (LTX posterior sampling) draws from its own stream, so the noise stays aligned.
        self.vae_generator = torch.Generator().manual_seed(
            check_seed(seed if vae_generator_seed is None else vae_generator_seed, "vae_generator_seed"))
        self.vae_lock = vae_lock(vae)
        self.progress, self.should_cancel = progress, should_cancel
        self.stage = stage  # wraps each stage of a chunk (flashhead bench e2e times them)
        self.identities: dict[str, Identity] = {}
        self.active: str | None = None
        self.motion_latents: torch.Tensor | None = None
        self.last_latents: torch.Tensor | None = None  # the last chunk's final latents, as the VAE decoded them
        self.chunk_index = 0

    @property
    def latent_shape(self) -> tuple[int, ...]:
        t_stride, h_stride, w_stride = self.config.vae_stride
        return (1, self.config.out_dim, 1 + (self.chunk_frames - 1) // t_stride, self.height // h_stride,
                self.width // w_stride)

    def add_identity(self, name: str, image) -> None:
        """Prepare a reference (any input `image.load_image` takes); the first one added becomes active."""
        self.check_cancel()
        color_reference = reference_tensor(image, self.height, self.width).to(self.device)
        self.check_cancel()
        clip = color_reference.to(self.vae.dtype).expand(-1, -1, self.chunk_frames, -1, -1)
        with torch.no_grad(), self.vae_lock:
            ref_latent = self.vae.encode(clip, generator=self.vae_generator).to(self.dtype)
        self.check_cancel()
        self.identities[name] = Identity(color_reference, ref_latent)
        if self.active is None:
            self.use_identity(name)

    def use_identity(self, name: str) -> None:
        """Switch identity before the next chunk. The motion restarts from the new reference (a clean cut)."""
        if name not in self.identities:
            raise InputError(f"unknown identity {name!r}; prepared: {', '.join(self.identities) or 'none'}")
        self.active = name
        self.motion_latents = self.identities[name].ref_latent[:, :, :1]

    def snapshot(self, on_cpu: bool = True) -> "SessionState":
        """What lives across chunks, now (between chunks): `restore` puts it into a session of the same model, VAE
        and size. on_cpu=False keeps the tensors where they are, uncopied (no device sync; the session replaces
        them each chunk, never changes them in place), for a state that may be thrown away: `.on_cpu()` later."""
        identity = self.identities[self.active]
        state = SessionState(self.active, identity.color_reference, identity.ref_latent, self.motion_latents,
                             self.noise_generator.get_state(), self.vae_generator.get_state(), self.chunk_index)
        return state.on_cpu() if on_cpu else state

    def restore(self, state: "SessionState") -> None:
        """Continue from `state`: its identity becomes the active one (no VAE encode), with its motion latents, both
        generators and the chunk index."""
        self.identities[state.identity_name] = Identity(state.color_reference.to(self.device),
                                                        state.ref_latent.to(self.device, self.dtype))
        self.active = state.identity_name
        self.motion_latents = state.motion_latents.to(self.device, self.dtype)
        self.noise_generator.set_state(state.noise_state)
        self.vae_generator.set_state(state.vae_state)
        self.chunk_index = state.chunk_index

    def draw_noise(self) -> torch.Tensor:
        """The next noise tensor [1, C, T, h, w] in the pipeline dtype from this stream's generator."""
        noise = torch.randn(self.latent_shape, generator=self.noise_generator, dtype=torch.float32)
        return noise.to(device=self.device, dtype=self.dtype)

    @property
    def cancelled(self) -> bool:
        """The caller's should_cancel says stop."""
        return self.should_cancel is not None and self.should_cancel()

    def check_cancel(self) -> None:
        """Raise GenerationCancelled when the caller's should_cancel says stop."""
        if self.cancelled:
            raise GenerationCancelled(f"generation cancelled at chunk {self.chunk_index}")

    def on_step(self, step: int) -> None:
        if self.progress is not None:
            self.progress(self.chunk_index, step)

    def generate_chunk(self, audio_windows: torch.Tensor,
                       draw_noise: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """audio_windows [1, 33, 5, 12, 768] -> all decoded, colour-corrected frames [1, 3, 33, H, W] in [-1, 1].

        The caller keeps the new ones (see `run.ChunkRun`); the chunk's final latents stay in `last_latents`.
        draw_noise replaces the session RNG (fixture replay)."""
        return generate_chunks([self], [audio_windows], draw_noise)[0]

    def finish_chunk(self, latents: torch.Tensor, identity: Identity, check_cancel: CancelCheck) -> torch.Tensor:
        """The denoised latents [1, C, T, h, w] of this session's chunk -> its decoded, colour-corrected frames
        [1, 3, 33, H, W]; the last motion_frames are encoded again as the next chunk's motion latents. check_cancel:
        the batch's (`generate_chunks`), run between decode tiles and corrected frames."""
        self.last_latents = latents.to(self.vae.dtype)
        frames = decode_chunk(self.vae, self.last_latents, identity.color_reference, self.sampler.color_correction,
                              check_cancel=check_cancel, stage=self.stage)
        with self.stage("motion_reencode"), self.vae_lock:
            motion_clip = frames[:, :, -self.config.motion_frames:]
            self.motion_latents = self.vae.encode(motion_clip, generator=self.vae_generator).to(self.dtype)
        self.chunk_index += 1
        return frames


@dataclass(frozen=True, eq=False)
class SessionState:
    """A StreamingSession between chunks (`snapshot`/`restore`), on the CPU: the active identity, the next chunk's
    motion latents [1, C, M, h, w], both generators' states (torch.Generator.get_state(), uint8) and the chunk index."""

    identity_name: str
    color_reference: torch.Tensor  # [1, 3, 1, H, W] float32 in [-1, 1]
    ref_latent: torch.Tensor  # [1, C, T, h, w]
    motion_latents: torch.Tensor
    noise_state: torch.Tensor
    vae_state: torch.Tensor
    chunk_index: int

    def on_cpu(self) -> "SessionState":
        """This state with its tensors copied to the CPU (what a ContinuationState keeps)."""
        def copy(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.detach().to("cpu", copy=True)

        return replace(self, color_reference=copy(self.color_reference), ref_latent=copy(self.ref_latent),
                       motion_latents=copy(self.motion_latents))


def generate_chunks(sessions: list[StreamingSession], windows: list[torch.Tensor],
                    draw_noise: Callable[[], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """One chunk for each session (sharing one model and VAE, same size): windows[k] [1, 33, 5, 12, 768] ->
    decoded, colour-corrected frames [1, 3, 33, H, W] in [-1, 1] per session, through one batched 4-step update
    (`sampler.sample_chunk`). Each session draws its own noise, keeps its own motion and identity; N = 1 is the
    single-stream chunk. draw_noise (one session only) replaces the session RNG (fixture replay). The chunk stops
    (GenerationCancelled) at a step where every session wants to stop; while one of them goes on, the others' rows
    are generated too (their callers drop them), so that no session loses a chunk to another one's cancel."""
    lead = sessions[0]
    for session in sessions:
        if session.active is None:
            raise RuntimeError("no identity prepared: call add_identity() first")

    def check_cancel() -> None:
        if all(session.cancelled for session in sessions):
            lead.check_cancel()

    check_cancel()
    identities = [s.identities[s.active] for s in sessions]
    steps = len(lead.timesteps)
    with torch.no_grad():
        with lead.stage("audio_projection"):
            audio_tokens = lead.model.audio_proj(torch.cat([w.to(lead.device) for w in windows]))
        # Each stream draws its steps + 1 noise tensors in the order the update uses them: [steps + 1, N, C, T, h, w].
        draws = [s.draw_noise for s in sessions] if draw_noise is None else [draw_noise]
        noise = torch.stack([torch.cat(step) for step in zip(*[[draw() for _ in range(steps)] for draw in draws])])
        motion, mask = motion_inputs([s.motion_latents for s in sessions], lead.latent_shape[2])

        def on_step(step: int) -> None:
            check_cancel()
            for session in sessions:
                session.on_step(step)

        latents = sample_chunk(lead.model, audio_tokens, torch.cat([i.ref_latent for i in identities]), motion, mask,
                               noise, lead.timesteps, lead.sampler.num_timesteps, on_step, lead.stage,
                               static=lead.sampler.static)
        return [session.finish_chunk(latents[row:row + 1], identity, check_cancel)
                for row, (session, identity) in enumerate(zip(sessions, identities))]
