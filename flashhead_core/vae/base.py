"""The video VAE interface (`VideoVAE`), implemented by Wan2.1 (`wan.py`) and LTX-Video 0.9.0 (`ltx.py`) on top of
diffusers' networks. Latents are *normalised* everywhere: encode() returns them normalised with the checkpoint's
per-channel statistics, decode() takes them normalised (docs/algorithm.md#vaes).

    latents = vae.encode(frames)      # [B, 3, 1 + 4k, H, W] in [-1, 1] -> [B, 16, 1 + k, H/8, W/8], float32
    frames = vae.decode(latents)      # -> [B, 3, 1 + 4k, H, W], float32
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .tiling import halo_tiled

TILE_PIXELS = 512


class VideoVAE:
    """The interface every FlashHead VAE has, and what Wan and LTX share: input checks, dtype/device handling, decode (tiled above `tile_pixels`). Subclasses
    define `normalise` / `unnormalise` (in the VAE dtype), `encode`, the two halves of the tiled decode and the class
    constants below.

    Inputs may come in any float dtype and device; they are moved to the VAE's. Outputs are float32 on the VAE's
    device whatever the VAE dtype (callers cast: the DiT to its dtype, colour correction works in float32).

    Tiled decode (`tiling`, on by default, for frames with a side above `tile_pixels`): the decoder is split in two.
    Its start (`_decode_low_resolution`: up to 1/4 (Wan) or 1/8 (LTX) of the output resolution, Wan's frame-wide
    attention included) runs on whole frames; the rest (`_decode_high_resolution`: the high-resolution layers, where
    most of the compute and memory go) is spatially local and runs tile by tile with a halo of `halo()` pixels, its
    receptive radius, so the result equals the untiled decode up to float rounding (`halo_tiled`)."""

    family: str  # "wan" or "ltx"
    variant: str  # the FlashHead variant this VAE belongs to: "pro" or "lite"
    latent_channels: int
    stride: tuple[int, int, int]
    clamp_output: bool  # Wan clamps decoded frames to [-1, 1], LTX does not
    tiled_scale: int  # output pixels per pixel of the high-resolution half's input

    def __init__(self, model: nn.Module, tiling: bool = True):
        self.model = model
        # Where encode/decode compute (inputs are moved there); None: where the network's first parameter is. A host
        # that keeps part of the network offloaded (ComfyUI, with `operations`) sets its compute device here.
        self.execution_device: torch.device | None = None
        self.tiling = tiling  # decode frames with a side above tile_pixels tile by tile (bounded memory, exact)
        self.tile_pixels = TILE_PIXELS  # the largest tile core, in output pixels (the halo comes on top)

    # Read from the network each time, so the wrapper follows it when a host (ComfyUI) moves it between devices.
    @property
    def device(self) -> torch.device:
        """The compute device: `execution_device` when set, else the first parameter's device."""
        if self.execution_device is not None:
            return torch.device(self.execution_device)
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def posterior(self, frames: torch.Tensor):
        """frames [B, 3, T, H, W] in [-1, 1] -> diffusers' DiagonalGaussianDistribution of the *unnormalised*
        latents (.mean, .logvar: [B, C, 1 + (T-1)/stride_t, H/s, W/s])."""
        _check_shape("frames", frames, 3, self.stride)
        return self.model.encode(frames.to(self.device, self.dtype)).latent_dist

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
        """normalised latents [B, C, t, h, w] -> frames [B, 3, 1 + (t-1)*stride_t, h*s, w*s], float32.

        on_tile() runs before each tile of a tiled decode (a cancel check: it may raise)."""
        _check_shape("latents", latents, self.latent_channels, (1, 1, 1))
        z = self.unnormalise(latents.to(self.device, self.dtype))
        if self.tiling and max(z.shape[-2:]) * self.stride[1] > self.tile_pixels:
            features = self._decode_low_resolution(z)
            tile = max(1, self.tile_pixels // self.tiled_scale)
            run = self._decode_high_resolution
            if on_tile is not None:
                def run(x, decode=run):
                    on_tile()
                    return decode(x)
            frames = halo_tiled(run, features, tile, self.halo())
        else:
            frames = self._decode_unnormalised(z).float()
        return frames.clamp(-1, 1) if self.clamp_output else frames

    def _decode_unnormalised(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample

    def _decode_low_resolution(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents [B, C, t, h, w] -> the decoder's features where the spatially local rest starts,
        [B, C', T', h*k, w*k] with k = stride / tiled_scale."""
        raise NotImplementedError

    def _decode_high_resolution(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, C', T', h', w'] (all of them or one tile) -> frames [B, 3, T, h'*tiled_scale,
        w'*tiled_scale]. Spatially local: an output pixel depends on the features within `halo()` pixels."""
        raise NotImplementedError

    def halo(self) -> int:
        """The receptive radius of `_decode_high_resolution`, in pixels of its input."""
        raise NotImplementedError

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unnormalise(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check_shape(name: str, x: torch.Tensor, channels: int, stride: tuple[int, int, int]) -> None:
    """x [B, channels, T, H, W] with T = 1 + k*stride[0], H and W multiples of stride[1], stride[2]."""
    if x.dim() != 5 or x.shape[1] != channels:
        raise ValueError(f"{name} must be [B, {channels}, T, H, W], got {list(x.shape)}")
    t, h, w = x.shape[2:]
    if (t - 1) % stride[0] or h % stride[1] or w % stride[2]:
        raise ValueError(f"{name} {list(x.shape)}: frames must be 1 + k*{stride[0]} and height/width multiples of "
                         f"{stride[1]} for this VAE")
