"""Seeded random weights of a sensible scale, for tiny test checkpoints and full-size benchmark models. Models are
built through the loaders' meta-device path (no random init, one copy of the weights). Nothing here is trained."""

from __future__ import annotations

import math
from typing import Callable

import torch
from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan
from torch import nn
from transformers import Wav2Vec2Model

from ..attention import resolve_backend
from ..audio.wav2vec2 import BASE_960H_CONFIG, Wav2Vec2FrameEncoder, wav2vec2_config
from ..model import FlashHeadDiT
from ..vae.ltx import VERSION_090, LtxVAE
from ..vae import ltx, wan
from ..vae.wan import WanVAE
from ..weights import build_on_meta


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with seeded random values of a sensible scale (norm gains near 1, the rest small)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        values = torch.randn(param.shape, generator=generator)
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight", "norm.weight")):
            values = 1 + 0.1 * values
        else:
            fan_in = param.shape[1] if param.dim() > 1 else param.shape[-1]
            values = values * min(0.1, fan_in ** -0.5)
        param.data.copy_(values.to(param.dtype))
    return model


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded float32 values of a sensible scale for a VAE state dict: convolutions N(0, 1/fan_in), biases small,
    RMS-norm gains near 1, LTX latent statistics mean ~ 0.1 N(0, 1) and std in [1, 1.2)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator)
        if name == "latents_std":
            values = 1 + 0.2 * torch.rand(shape, generator=generator)
        elif name.endswith("gamma"):
            values = 1 + 0.1 * values
        elif name == "latents_mean":
            values = 0.1 * values
        elif len(shape) > 1:
            values = values * math.prod(shape[1:]) ** -0.5
        else:
            values = 0.05 * values
        state[name] = values
    return state


def _random(factory: Callable[[], nn.Module], seed: int, device, dtype) -> nn.Module:
    """Build through the loader's path (meta device, assign): no random init, one copy of the weights."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in factory().state_dict().items()}
    return build_on_meta(factory, random_state(shapes, seed), device=device, dtype=dtype, what="a random VAE")


def random_wan_vae(base_dim: int = 96, *, seed: int = 0, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, tiling: bool = True, operations=None) -> WanVAE:
    """A Wan2.1 VAE (released size by default) with random weights (operations: as in load_vae)."""
    model = _random(lambda: AutoencoderKLWan(base_dim=base_dim, z_dim=16), seed, device, dtype)
    if operations is not None:
        wan.use_operations(model, operations)
    return WanVAE(model, tiling)


def ltx_kwargs(channels: tuple[int, ...] = (128, 256, 512, 512), layers: tuple[int, ...] = (4, 3, 3, 3, 4)) -> dict:
    """AutoencoderKLLTXVideo arguments of a 0.9.0-style VAE with the given widths and resnets per block."""
    return {**VERSION_090, "latent_channels": 128, "block_out_channels": channels,
            "decoder_block_out_channels": channels, "layers_per_block": layers, "decoder_layers_per_block": layers}


def random_ltx_vae(channels: tuple[int, ...] = (128, 256, 512, 512), layers: tuple[int, ...] = (4, 3, 3, 3, 4), *,
                   seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   tiling: bool = True, operations=None) -> LtxVAE:
    """An LTX-Video 0.9.0 VAE (released size by default) with random weights and random latent statistics
    (operations: as in load_vae)."""
    kwargs = ltx_kwargs(channels, layers)
    model = _random(lambda: AutoencoderKLLTXVideo(**kwargs), seed, device, dtype)
    if operations is not None:
        ltx.use_operations(model, operations)
    return LtxVAE(model, tiling)


def random_dit(config, device: torch.device, dtype: torch.dtype, attention: str = "auto"):
    """A FlashHeadDiT of `config` with random weights, built on the meta device (one copy of the weights)."""
    with torch.device("meta"):
        model = FlashHeadDiT(config, attention_backend=resolve_backend(attention, device))
    return randomize_(model.to_empty(device=device).to(dtype)).eval().requires_grad_(False)


def random_wav2vec2(device: torch.device):
    """wav2vec2-base-960h (float32, as always) with random weights, wrapped as FlashHead's frame encoder."""
    with torch.device("meta"):
        model = Wav2Vec2Model(wav2vec2_config(BASE_960H_CONFIG))
    return Wav2Vec2FrameEncoder(randomize_(model.to_empty(device=device)).eval().requires_grad_(False))
