"""Tiny checkpoints with random weights, written in exactly the released layouts, so that tests, demos and workflows
exercise the real loading code without downloading anything. Nothing here is a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import INDEX_NAME, MODEL_DIRS, WEIGHTS_NAME
from .config import PRESETS, ModelConfig
from .model import FlashHeadDiT

TINY_TEXT_DIM = 16
TINY_DIT = dict(dim=128, ffn_dim=256, freq_dim=64, num_heads=1, num_layers=2,
                audio_intermediate_dim=8, audio_context_tokens=4,
                audio_channels=32)  # = the hidden size of the tiny wav2vec2 (tiny_audio.py)


def tiny_config(variant: str) -> ModelConfig:
    """The released geometry of `variant` (channels, patch, strides) with a small transformer (head_dim 128)."""
    return PRESETS[variant].with_(**TINY_DIT)


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


def write_tiny_checkpoint(directory: str | Path, variant: str, *, seed: int = 0) -> Path:
    """A complete tiny checkpoint root in the released layout: Model_Lite/ or Model_Pro/, the matching VAE
    (VAE_LTX/ or VAE_Wan/Wan2.1_VAE.pth) and wav2vec2-base-960h/. Returns the root."""
    from .tiny_audio import write_tiny_wav2vec2
    from .tiny_vae import write_tiny_ltx_vae, write_tiny_wan_vae

    root = Path(directory)
    write_tiny_dit(root, variant, seed=seed)
    (write_tiny_ltx_vae if variant == "lite" else write_tiny_wan_vae)(root, seed=seed)
    write_tiny_wav2vec2(root, seed=seed)
    return root
