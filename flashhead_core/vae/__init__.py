"""Video VAEs: one small interface used by the sampler, with Wan2.1 (Pro) and LTX-Video 0.9.0 (Lite) behind it.

Every VAE works in *normalised* latent space (spec §5): encode() returns latents already normalised with the
checkpoint's per-channel statistics, decode() takes normalised latents.
"""

from __future__ import annotations

from typing import Protocol

import torch


class VideoVAE(Protocol):
    latent_channels: int  # 16 (Wan2.1) or 128 (LTX)
    stride: tuple[int, int, int]  # (t, h, w): (4, 8, 8) or (8, 32, 32)
    dtype: torch.dtype
    device: torch.device

    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """frames [B, 3, T, H, W] in [-1, 1] (T = 1 + k*stride_t) -> normalised latents [B, C, 1 + k, H/s, W/s]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, t, h, w] -> frames [B, 3, 1 + (t-1)*stride_t, h*s, w*s] (~[-1, 1])."""
