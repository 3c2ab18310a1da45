"""Tiny VAEs with random weights, written in the released layouts (VAE_Wan/Wan2.1_VAE.pth, VAE_LTX/)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..release import VAE_LTX_DIR, VAE_WAN_FILE, WEIGHTS_NAME
from ..vae.wan import KEYS
from .random import ltx_kwargs, random_ltx_vae, random_wan_vae

TINY_WAN_DIM = 4  # the fixture's size; the released VAE has 96
TINY_LTX_CHANNELS = (4, 8, 16, 16)  # released: (128, 256, 512, 512)
TINY_LTX_LAYERS = (1, 1, 1, 1, 1)  # released: (4, 3, 3, 3, 4)


def write_tiny_wan_vae(directory: str | Path, *, seed: int = 0) -> Path:
    """Write `<directory>/VAE_Wan/Wan2.1_VAE.pth`: a plain state dict in the original Wan key layout (as released),
    base dim 4. Returns the file."""
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
