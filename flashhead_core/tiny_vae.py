"""VAEs with seeded random weights: tiny checkpoints written in the released layouts (tests, demos) and full-size
networks for benchmarks. Nothing here is a trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from .checkpoint import WEIGHTS_NAME, build_on_meta
from .vae import VAE_LTX_DIR, VAE_WAN_FILE
from .vae.ltx import VERSION_090, LtxVAE
from .vae.wan import WanVAE

TINY_WAN_DIM = 4  # the fixture's size; the released VAE has 96
TINY_LTX_CHANNELS = (4, 8, 16, 16)  # released: (128, 256, 512, 512)
TINY_LTX_LAYERS = (1, 1, 1, 1, 1)  # released: (4, 3, 3, 3, 4)


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
                   dtype: torch.dtype = torch.float32, tiling: bool = True) -> WanVAE:
    """A Wan2.1 VAE (released size by default) with random weights."""
    from diffusers import AutoencoderKLWan

    return WanVAE(_random(lambda: AutoencoderKLWan(base_dim=base_dim, z_dim=16), seed, device, dtype), tiling)


def ltx_kwargs(channels: tuple[int, ...] = (128, 256, 512, 512), layers: tuple[int, ...] = (4, 3, 3, 3, 4)) -> dict:
    """AutoencoderKLLTXVideo arguments of a 0.9.0-style VAE with the given widths and resnets per block."""
    return {**VERSION_090, "latent_channels": 128, "block_out_channels": channels,
            "decoder_block_out_channels": channels, "layers_per_block": layers, "decoder_layers_per_block": layers}


def random_ltx_vae(channels: tuple[int, ...] = (128, 256, 512, 512), layers: tuple[int, ...] = (4, 3, 3, 3, 4), *,
                   seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   tiling: bool = True) -> LtxVAE:
    """An LTX-Video 0.9.0 VAE (released size by default) with random weights and random latent statistics."""
    from diffusers import AutoencoderKLLTXVideo

    kwargs = ltx_kwargs(channels, layers)
    return LtxVAE(_random(lambda: AutoencoderKLLTXVideo(**kwargs), seed, device, dtype), tiling)


def write_tiny_wan_vae(directory: str | Path, *, seed: int = 0) -> Path:
    """Write `<directory>/VAE_Wan/Wan2.1_VAE.pth`: a plain state dict in the original Wan key layout (as released),
    base dim 4. Returns the file."""
    from .vae.wan import KEYS

    file = Path(directory) / VAE_WAN_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    state = random_wan_vae(TINY_WAN_DIM, seed=seed).model.state_dict()
    torch.save({KEYS.to_original(k): v.contiguous() for k, v in state.items()}, file)
    return file


def write_tiny_ltx_vae(directory: str | Path, *, seed: int = 0) -> Path:
    """Write `<directory>/VAE_LTX/` in the released diffusers layout (config.json + diffusion_pytorch_model.safetensors
    with latents_mean/latents_std): latent 128, real strides, base channels 4. Returns the folder."""
    folder = Path(directory) / VAE_LTX_DIR
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = ltx_kwargs(TINY_LTX_CHANNELS, TINY_LTX_LAYERS)
    config = {"_class_name": "AutoencoderKLLTXVideo", "_diffusers_version": "0.32.0.dev0", "scaling_factor": 1.0,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()
                 if k not in ("decoder_block_out_channels", "decoder_layers_per_block", "timestep_conditioning",
                              "decoder_spatio_temporal_scaling")}}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = random_ltx_vae(TINY_LTX_CHANNELS, TINY_LTX_LAYERS, seed=seed).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder
