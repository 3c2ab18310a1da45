"""The distilled flow-matching sampler of one chunk (docs/algorithm.md#sampling-one-chunk): shifted timesteps and the 4-step update.

    z = noise
    for i in 0..steps-1:
        z[:, :, :M] = motion latents                 (M = 1 in the first chunk, 2 afterwards)
        flow = DiT(z, t_i)
        x0 = z - sigma_i * flow
        z = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * noise_i   (noise drawn at every step, also the last)
    z[:, :, :M] = motion latents
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 4
    shift: float = 5.0
    num_timesteps: int = 1000
    color_correction: float = 1.0  # strength in [0, 1]; 0 = off

    def __post_init__(self):
        if self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.color_correction <= 1.0:
            raise InputError(f"colour-correction strength must be in [0, 1], got {self.color_correction}")


class GenerationCancelled(Exception):
    """Raised between steps or chunks when the caller's cancellation check says stop."""


def shifted_timesteps(config: SamplerConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[steps + 1] timesteps in [0, num_timesteps]: linear from num_timesteps to 0, then t' = shift*s/(1+(shift-1)*s)
    with s = t/num_timesteps; cast to the pipeline dtype (bf16 turns 937.5 into 936, as the official run does)."""
    raw = torch.linspace(config.num_timesteps, 0, config.steps + 1, dtype=torch.float64)
    s = raw / config.num_timesteps
    return (config.num_timesteps * config.shift * s / (1 + (config.shift - 1) * s)).to(dtype)


def sample_chunk(model: FlashHeadDiT, audio_tokens: torch.Tensor, ref_latent: torch.Tensor,
                 motion_latents: torch.Tensor, timesteps: torch.Tensor, draw_noise: Callable[[], torch.Tensor],
                 num_timesteps: int = 1000, on_step: Callable[[int], None] | None = None,
                 stage: StageHook = untimed) -> torch.Tensor:
    """Denoise one chunk.

    audio_tokens [1, T, N, dim]; ref_latent [1, C, T, h, w]; motion_latents [1, C, M, h, w] (M <= T);
    timesteps [steps + 1] in the pipeline dtype; draw_noise() -> [1, C, T, h, w] in the pipeline dtype, called
    steps + 1 times in a fixed order (initial latent, then one per step). on_step(i) runs before step i (progress,
    cancellation). stage wraps the audio keys/values and each step. Returns the denoised latents [1, C, T, h, w]
    with the motion latents written in.
    """
    frames = motion_latents.shape[2]
    with stage("audio_keys_values"):
        audio = model.audio_context(audio_tokens)  # the blocks' audio keys/values: the same at every step
    z = draw_noise()
    sigmas = timesteps / num_timesteps
    for i in range(len(timesteps) - 1):
        if on_step is not None:
            on_step(i)
        z[:, :, :frames] = motion_latents
        with stage(f"dit_step_{i}"):
            flow = model(z, timesteps[i].reshape(1), ref_latent, audio).to(z.dtype)
            x0 = z - sigmas[i] * flow
            z = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * draw_noise()
    z[:, :, :frames] = motion_latents
    return z
