"""Wan2.1 VAE (FlashHead Pro): diffusers' `AutoencoderKLWan` plus the published latent statistics (docs/algorithm.md#vaes).

encode: posterior mean mu, z = (mu - mean) * inv_std with inv_std = 1/std rounded in the VAE dtype (the official
wrapper's arithmetic). decode: decoder(z / inv_std + mean), clamped to [-1, 1]. The network is causal in time:
diffusers encodes frame 0 alone and then groups of 4 frames, decodes one latent frame at a time, and resets its
feature cache at the start of every call, as the official code does.

Tiled decode: the mid-block attention spans the whole frame, so conv_in, mid_block and up block 0 (latent
resolution, then 1/4 of the output's, where the features are small) run whole; up blocks 1-3 and the head are
spatially local (3x3 convolutions, per-pixel RMS norms, nearest upsampling, time-only causal convolutions) and run
tile by tile. Each half streams the latent frames exactly as diffusers' `_decode` does, with its own feature cache
(the high-resolution half: one per tile, each tile running through all frames before the next).

Key layouts: the released `Wan2.1_VAE.pth` (and ComfyUI's `wan_2.1_vae.safetensors`) use the original Wan names
(`encoder.downsamples.0.residual.2.weight`, `decoder.head.2.weight`, `conv1.weight`); diffusers files use
diffusers' names. `KEYS` maps one to the other.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T, WanCausalConv3d, WanRMS_norm

from .. import layers
from ..errors import CheckpointError
from ..weights import build_on_meta, require_keys
from .base import VideoVAE
from .keymap import KeyMap, check_config_json
from .tiling import receptive_radius

VARIANT = "pro"
WHAT = "the Wan2.1 VAE (VAE_Wan/Wan2.1_VAE.pth)"
TILED_FROM_BLOCK = 1  # tiled decode: up_blocks[1:] and the head run in tiles, on features at 1/4 resolution
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def _key_map() -> KeyMap:
    """Wan2.1 layout (4 stages, 2 residual blocks each; the decoder has 3 per stage) <-> diffusers."""
    blocks = [("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")]
    for side in ("encoder", "decoder"):
        blocks += [(f"{side}.conv1.", f"{side}.conv_in."), (f"{side}.head.0.", f"{side}.norm_out."),
                   (f"{side}.head.2.", f"{side}.conv_out."), (f"{side}.middle.0.", f"{side}.mid_block.resnets.0."),
                   (f"{side}.middle.1.", f"{side}.mid_block.attentions.0."),
                   (f"{side}.middle.2.", f"{side}.mid_block.resnets.1.")]
    blocks += [(f"encoder.downsamples.{i}.", f"encoder.down_blocks.{i}.") for i in range(11)]
    for stage in range(4):
        blocks += [(f"decoder.upsamples.{4 * stage + r}.", f"decoder.up_blocks.{stage}.resnets.{r}.") for r in range(3)]
        if stage < 3:
            blocks.append((f"decoder.upsamples.{4 * stage + 3}.", f"decoder.up_blocks.{stage}.upsamplers.0."))
    leaves = (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
              ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))
    return KeyMap(tuple(blocks), leaves)


KEYS = _key_map()


def layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """"original", "diffusers" or None (not a Wan VAE). The `.gamma` RMS-norm gains set it apart from image VAEs."""
    if "decoder.head.0.gamma" in shapes:
        return "original"
    if "decoder.norm_out.gamma" in shapes:
        return "diffusers"
    return None


def model_kwargs(shapes: dict[str, tuple[int, ...]]) -> dict:
    """AutoencoderKLWan arguments from diffusers-named shapes (the rest of the geometry is Wan2.1's, checked by the
    key-by-key comparison)."""
    require_keys(shapes, ("encoder.conv_in.weight", "post_quant_conv.weight"), WHAT)
    return {"base_dim": shapes["encoder.conv_in.weight"][0], "z_dim": shapes["post_quant_conv.weight"][0]}


def from_state_dict(state: dict[str, torch.Tensor], layout: str, *, config_json: dict | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    tiling: bool = True, operations=None) -> "WanVAE":
    """operations: None (diffusers' torch.nn layers) or a namespace (comfy.ops.manual_cast, flashhead_core.layers):
    see `use_operations`."""
    if layout == "original":
        state = {KEYS.to_diffusers(k): v for k, v in state.items()}
    kwargs = model_kwargs({k: tuple(v.shape) for k, v in state.items()})
    if kwargs["z_dim"] != WanVAE.latent_channels:
        raise CheckpointError(f"a Wan VAE with {kwargs['z_dim']} latent channels (Wan2.2's has 48) is not "
                              f"{WHAT}, which has 16")
    check_config_json(config_json, kwargs, "AutoencoderKLWan", WHAT)
    model = build_on_meta(lambda: AutoencoderKLWan(**kwargs), state, device=device, dtype=dtype, what=WHAT,
                          file_names=KEYS.to_original if layout == "original" else str)
    if operations is not None:
        use_operations(model, operations)
    return WanVAE(model, tiling)


def use_operations(model: AutoencoderKLWan, operations) -> int:
    """Re-class the network onto `operations` (layers.use_operations: WanCausalConv3d -> operations.Conv3d, the
    attention's and resamplers' Conv2d -> operations.Conv2d), and its RMS norms, which no namespace has, onto
    `OffloadableRMSNorm` (gains moved to the input's device per call). Returns how many Conv layers were re-classed."""
    count = layers.use_operations(model, operations)
    for module in model.modules():
        if type(module) is WanRMS_norm:
            module.__class__ = OffloadableRMSNorm
    return count


class OffloadableRMSNorm(WanRMS_norm):
    """diffusers' WanRMS_norm whose gain (and bias) may be on another device than the input, as a host that keeps
    part of the network offloaded leaves them: moved to the input's device for the call (dtype kept), then diffusers'
    own forward runs, so the arithmetic is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if self.gamma.device == x.device and (not isinstance(bias, torch.Tensor) or bias.device == x.device):
            return super().forward(x)
        moved = SimpleNamespace(channel_first=self.channel_first, scale=self.scale, gamma=self.gamma.to(x.device),
                                bias=bias.to(x.device) if isinstance(bias, torch.Tensor) else bias)
        return WanRMS_norm.forward(moved, x)


class WanVAE(VideoVAE):
    family, variant, latent_channels, stride, clamp_output = "wan", VARIANT, 16, (4, 8, 8), True
    tiled_scale = 4  # up block 0 upsamples 2x: the tiles are cut at 1/4 of the output resolution

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, inv_std), each [1, 16, 1, 1, 1] in the VAE's dtype on its device."""
        dtype, device = self.dtype, self.device
        mean = torch.tensor(LATENT_MEAN, dtype=dtype, device=device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=dtype, device=device).view(1, -1, 1, 1, 1)
        return mean, inv_std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """frames [B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised posterior mean [B, 16, 1 + k, H/8, W/8], float32.
        Deterministic: `generator` is accepted for the common interface and not used."""
        return self.normalise(self.posterior(frames).mean).float()

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.statistics()
        return (z - mean) * inv_std

    def unnormalise(self, z: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.statistics()
        return z / inv_std + mean

    # --- tiled decode: diffusers' WanDecoder3d.forward in two halves --------------------------------------------

    def _decode_low_resolution(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 16, t, h, w] -> [B, 192, 1 + 2(t-1), 2h, 2w] (post_quant_conv, conv_in, mid_block, up block 0)."""
        decoder = self.model.decoder

        def step(x, cache, index):
            x = decoder.mid_block(_cached_conv(decoder.conv_in, x, cache, index), feat_cache=cache, feat_idx=index)
            for block in decoder.up_blocks[:TILED_FROM_BLOCK]:
                x = block(x, feat_cache=cache, feat_idx=index)  # first_chunk only matters to Wan2.2's up blocks
            return x

        return self._stream(step, self.model.post_quant_conv(z).split(1, 2))

    def _decode_high_resolution(self, features: torch.Tensor) -> torch.Tensor:
        """[B, 192, 1 + 2(t-1), h', w'] -> frames [B, 3, 1 + 4(t-1), 4h', 4w'], unclamped (up blocks 1-3, norm_out,
        conv_out). Up block 0 doubled each latent frame but the first: the chunks are 1, 2, 2, ... frames."""
        decoder = self.model.decoder

        def step(x, cache, index):
            for block in decoder.up_blocks[TILED_FROM_BLOCK:]:
                x = block(x, feat_cache=cache, feat_idx=index)
            return _cached_conv(decoder.conv_out, decoder.nonlinearity(decoder.norm_out(x)), cache, index)

        frames = features.shape[2]
        return self._stream(step, features.split([1] + [2] * ((frames - 1) // 2), 2))

    def _stream(self, step: Callable, chunks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Run `step(chunk, cache, index)` over the chunks of one latent frame each, in order, as diffusers' `_decode`
        runs the decoder: one fresh feature cache (a slot per causal convolution) for the clip, the slot index reset
        for every chunk -> the outputs concatenated in time."""
        cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in self.model.decoder.modules())
        return torch.cat([step(chunk, cache, [0]) for chunk in chunks], 2)

    def halo(self) -> int:
        """12 pixels at 1/4 resolution for Wan2.1: 3x3 convolutions per level in up blocks 1-3 + head, 6 / 7 / 8."""
        levels = [0]
        for block in self.model.decoder.up_blocks[TILED_FROM_BLOCK:]:
            levels[-1] += 2 * len(block.resnets)
            if block.upsamplers is not None:
                levels.append(1)  # the upsampler's 3x3 convolution runs after the 2x nearest upsampling
        levels[-1] += 1  # conv_out
        return receptive_radius(levels)


def _cached_conv(conv: WanCausalConv3d, x: torch.Tensor, cache: list, index: list[int]) -> torch.Tensor:
    """One causal convolution with diffusers' feature cache (as around conv_in / conv_out in WanDecoder3d.forward):
    the cached frames of the previous chunk are prepended, and the last CACHE_T frames of x are cached."""
    i = index[0]
    cached = x[:, :, -CACHE_T:].clone()
    if cached.shape[2] < 2 and cache[i] is not None:
        cached = torch.cat([cache[i][:, :, -1:].to(cached.device), cached], 2)
    x = conv(x, cache[i])
    cache[i] = cached
    index[0] += 1
    return x
