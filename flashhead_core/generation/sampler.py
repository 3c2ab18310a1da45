"""The distilled flow-matching sampler of one chunk (docs/algorithm.md#sampling-one-chunk): shifted timesteps and the 4-step update.

    z = noise
    for i in 0..steps-1:
        z[:, :, :M] = motion latents                 (M = 1 in the first chunk, 2 afterwards)
        flow = DiT(z, t_i)
        x0 = z - sigma_i * flow
        z = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * noise_i   (noise drawn at every step, also the last)
    z[:, :, :M] = motion latents

The static chunk step (`SamplerConfig(static="auto")`, `sample_chunk(..., static="auto")`): the same 4 steps (audio
keys/values included) as one function of fixed-shape tensors, with no host synchronisation and no data-dependent Python control
flow, compiled once with `torch.compile(fullgraph=True, dynamic=False)`: chunk 1 (M = 1) and later chunks (M = 2)
differ only in the motion mask's values, so every chunk, identity switch and session of the same size reuses one
graph. On CUDA the graph is also recorded as a CUDA graph and replayed (torch.compile's "reduce-overhead", i.e.
CUDA-graph trees: they keep the static input buffers, the memory pool and the warm-up for us, and they capture the
fused Inductor kernels; a hand-made torch.cuda.CUDAGraph would capture unfused eager kernels and need all of that by
hand). "auto": CUDA graphs on CUDA, not elsewhere; "compiled" / "cuda_graphs" force one (`flashhead bench gpu`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch

from ..model import FlashHeadDiT
from ..errors import InputError

# Wraps one named stage of a chunk (audio_projection, dit_step_0, vae_decode, ...); `flashhead bench e2e` times them.
StageHook = Callable[[str], AbstractContextManager]


def untimed(name: str) -> AbstractContextManager:
    return nullcontext()


STATIC_MODES = ("off", "auto", "compiled", "cuda_graphs")


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 4
    shift: float = 5.0
    num_timesteps: int = 1000
    color_correction: float = 1.0  # strength in [0, 1]; 0 = off
    static: str = "off"  # "off" (eager), or the compiled static step: "auto", "compiled", "cuda_graphs" (module doc)

    def __post_init__(self):
        if self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.color_correction <= 1.0:
            raise InputError(f"colour-correction strength must be in [0, 1], got {self.color_correction}")
        if self.static not in STATIC_MODES:
            raise InputError(f"static must be one of {', '.join(STATIC_MODES)}, got {self.static!r}")


class GenerationCancelled(Exception):
    """Raised between steps or chunks when the caller's cancellation check says stop."""


def shifted_timesteps(config: SamplerConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[steps + 1] timesteps in [0, num_timesteps]: linear from num_timesteps to 0, then t' = shift*s/(1+(shift-1)*s)
    with s = t/num_timesteps; cast to the pipeline dtype (bf16 turns 937.5 into 936, as the official run does)."""
    raw = torch.linspace(config.num_timesteps, 0, config.steps + 1, dtype=torch.float64)
    s = raw / config.num_timesteps
    return (config.num_timesteps * config.shift * s / (1 + (config.shift - 1) * s)).to(dtype)


def motion_inputs(motion_latents: list[torch.Tensor], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each stream's motion latents [1, C, M_i, h, w] (M_i <= frames; M is 1 after an identity switch, 2 otherwise)
    -> (motion [N, C, frames, h, w], zero past each M_i; mask [N, 1, frames, 1, 1] bool, True on the first M_i):
    the fixed-shape form the 4-step update writes into the latents, whatever M each stream has."""
    motion = torch.zeros((len(motion_latents), motion_latents[0].shape[1], frames, *motion_latents[0].shape[3:]),
                         dtype=motion_latents[0].dtype, device=motion_latents[0].device)
    mask = torch.zeros((len(motion_latents), 1, frames, 1, 1), dtype=torch.bool, device=motion.device)
    for row, latents in enumerate(motion_latents):
        motion[row, :, :latents.shape[2]] = latents[0]
        mask[row, :, :latents.shape[2]] = True
    return motion, mask


def sample_chunk(model: FlashHeadDiT, audio_tokens: torch.Tensor, ref_latent: torch.Tensor, motion: torch.Tensor,
                 motion_mask: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, num_timesteps: int = 1000,
                 on_step: Callable[[int], None] | None = None, stage: StageHook = untimed,
                 static: str = "off") -> torch.Tensor:
    """Denoise one chunk of N streams at once (N = 1 for a single stream; every row is computed as it would be alone).

    audio_tokens [N, T, n, dim]; ref_latent [N, C, T, h, w]; motion [N, C, T, h, w] and motion_mask [N, 1, T, 1, 1]
    (from `motion_inputs`); noise [steps + 1, N, C, T, h, w] in the pipeline dtype (the initial latent, then one per
    step, drawn beforehand by each stream's generator); timesteps [steps + 1] in the pipeline dtype. on_step(i) runs
    before step i (progress, cancellation). stage wraps the audio keys/values and each step. Returns the denoised
    latents [N, C, T, h, w] with the motion latents written in.

    static: "off" (eager), or a `STATIC_MODES` mode of the compiled static step (`chunk_step`): on_step(i) then runs
    for every step before they are launched (they run as one graph, so cancelling takes effect between chunks), and
    stage wraps them all as "dit_steps".
    """
    if static == "off":
        return _chunk_steps(model, audio_tokens, ref_latent, motion, motion_mask, noise, timesteps, num_timesteps,
                            on_step, stage)
    for i in range(len(timesteps) - 1):
        if on_step is not None:
            on_step(i)
    with stage("dit_steps"):
        step = chunk_step(motion.device, None if static == "auto" else static == "cuda_graphs")
        return step(model, audio_tokens, ref_latent, motion, motion_mask, noise, timesteps, num_timesteps)


def _chunk_steps(model: FlashHeadDiT, audio_tokens: torch.Tensor, ref_latent: torch.Tensor, motion: torch.Tensor,
                 motion_mask: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, num_timesteps: int,
                 on_step: Callable[[int], None] | None = None, stage: StageHook = untimed) -> torch.Tensor:
    """`sample_chunk`'s update (eager), and with on_step None and stage `untimed` the body of the static step: the
    loop runs over the static number of steps and every tensor has the shape of its input."""
    with stage("audio_keys_values"):
        audio = model.audio_context(audio_tokens)  # the blocks' audio keys/values: the same at every step
    z = noise[0]
    sigmas = timesteps / num_timesteps
    for i in range(timesteps.shape[0] - 1):
        if on_step is not None:
            on_step(i)
        z = torch.where(motion_mask, motion, z)
        with stage(f"dit_step_{i}"):
            flow = model(z, timesteps[i].reshape(1), ref_latent, audio).to(z.dtype)
            x0 = z - sigmas[i] * flow
            z = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise[i + 1]
    return torch.where(motion_mask, motion, z)


def cuda_graphs_default(device: torch.device | str) -> bool:
    """Whether the static step is replayed as a CUDA graph on `device` by default: on CUDA yes, elsewhere no."""
    return torch.device(device).type == "cuda"


def chunk_step(device: torch.device | str, cuda_graphs: bool | None = None) -> Callable[..., torch.Tensor]:
    """The static chunk step for `device`: (model, audio_tokens, ref_latent, motion, motion_mask, noise, timesteps,
    num_timesteps) -> latents [N, C, T, h, w], as `sample_chunk` without hooks; compiled on first use per shape.
    cuda_graphs: None = `cuda_graphs_default(device)`; True only on CUDA."""
    cuda_graphs = cuda_graphs_default(device) if cuda_graphs is None else cuda_graphs
    if cuda_graphs and torch.device(device).type != "cuda":
        raise InputError(f"CUDA graphs need a CUDA device, got {device}: pass cuda_graphs=False (or None)")
    return _compiled_step(cuda_graphs)


@functools.lru_cache(maxsize=2)
def _compiled_step(cuda_graphs: bool) -> Callable[..., torch.Tensor]:
    compiled = torch.compile(_chunk_steps, fullgraph=True, dynamic=False,
                             mode="reduce-overhead" if cuda_graphs else None)
    if not cuda_graphs:
        return compiled

    def replay(*args) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new chunk: the previous replay's outputs may be reused
        return compiled(*args).clone()  # the graph's output buffer is overwritten by the next replay
    return replay
