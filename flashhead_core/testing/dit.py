"""A tiny FlashHead DiT with random weights, written exactly in the released Model_Lite/ or Model_Pro/ layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import PRESETS, ModelConfig
from ..model import FlashHeadDiT
from ..release import INDEX_NAME, MODEL_DIRS, WEIGHTS_NAME
from .random import randomize_

TINY_TEXT_DIM = 16
TINY_DIT = dict(dim=128, ffn_dim=256, freq_dim=64, num_heads=1, num_layers=2,
                audio_intermediate_dim=8, audio_context_tokens=4,
                audio_channels=32)  # = the hidden size of the tiny wav2vec2 (wav2vec2.py)


def tiny_config(variant: str) -> ModelConfig:
    """The released geometry of `variant` (channels, patch, strides) with a small transformer (head_dim 128)."""
    return replace(PRESETS[variant], **TINY_DIT)


def unused_released_weights(config: ModelConfig, text_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The `text_embedding.*` / `audio_emb.*` tensors that released files carry and the forward never uses."""
    g = torch.Generator().manual_seed(seed)
    audio = config.audio_channels
    shapes = {
        "text_embedding.0.weight": (config.dim, text_dim), "text_embedding.0.bias": (config.dim,),
        "text_embedding.2.weight": (config.dim, config.dim), "text_embedding.2.bias": (config.dim,),
        "audio_emb.proj.0.weight": (audio,), "audio_emb.proj.0.bias": (audio,),
        "audio_emb.proj.1.weight": (audio, audio), "audio_emb.proj.1.bias": (audio,),
        "audio_emb.proj.3.weight": (config.dim, audio), "audio_emb.proj.3.bias": (config.dim,),
        "audio_emb.proj.4.weight": (config.dim,), "audio_emb.proj.4.bias": (config.dim,),
    }
    return {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}


def released_config_json(config: ModelConfig, text_dim: int) -> dict:
    """config.json as the release writes it (diffusers ModelMixin style)."""
    return {
        "_class_name": "WanModelAudioProject", "_diffusers_version": "0.31.0", "dim": config.dim, "eps": config.eps,
        "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "has_image_input": False, "in_dim": config.in_dim,
        "num_heads": config.num_heads, "num_layers": config.num_layers, "out_dim": config.out_dim,
        "patch_size": list(config.patch_size), "text_dim": text_dim, "vae_stride": list(config.vae_stride),
    }


def write_tiny_dit(directory: str | Path, variant: str, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   shards: int = 1) -> Path:
    """Write `<directory>/Model_Lite|Model_Pro/` (config.json + safetensors, sharded when shards > 1).

    Returns the model folder."""
    config = tiny_config(variant)
    folder = Path(directory) / MODEL_DIRS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    state = randomize_(FlashHeadDiT(config), seed).state_dict()
    state.update(unused_released_weights(config, TINY_TEXT_DIM, seed))
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    (folder / "config.json").write_text(json.dumps(released_config_json(config, TINY_TEXT_DIM), indent=2,
                                                   sort_keys=True) + "\n")
    if shards == 1:
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return folder
