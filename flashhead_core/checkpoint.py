"""Reading DiT weights: the released folder or a single safetensors file, without materialising random weights.

Accepted layouts:
- the released checkpoint root (`Model_Lite/` and/or `Model_Pro/` inside; the variant picks one),
- a released model folder: `config.json` + `diffusion_pytorch_model.safetensors`, or shards listed by
  `diffusion_pytorch_model.safetensors.index.json`,
- one `.safetensors` file (as ComfyUI users keep it in `models/diffusion_models/`): the config is inferred from
  tensor shapes (docs/algorithm.md#config-from-tensor-shapes). Keys may carry ComfyUI's `model.diffusion_model.` or
  `diffusion_model.` prefix (a file saved from ComfyUI); keys outside it (a VAE or text encoder saved alongside)
  are not the DiT's and are not read.
The model is built on the meta device and each tensor is read once, cast to the compute dtype and assigned, so
peak memory is one copy of the weights in that dtype.

fp8 weight storage (docs/fp8.md): `weight_dtype=torch.float8_e4m3fn` or `float8_e5m2` stores the blocks' Linear
weights (the big matmuls, ~94% of the weights) in fp8; every other tensor stays in the compute dtype and the layers
upcast per call. A ComfyUI scaled fp8 file (a `scaled_fp8` marker tensor whose dtype is the fp8 dtype, float32 meaning
e4m3fn, and per-layer `<layer>.scale_weight`) is loaded as stored: each scaled Linear keeps its fp8 weight and a
float32 `scale_weight` buffer, and computes with weight * scale_weight. Such a file needs the scale-aware layers
(`operations=flashhead_core.layers`); `is_scaled_fp8` tells a host before it picks its layers.

The attention backend is chosen for the device the model computes on: `execution_device` when a host loads the
weights on an offload device (CPU) and moves them to the GPU to run, else `device`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from . import layers
from .attention import resolve_backend
from .config import AUDIO_WINDOW, DIT_HEAD_DIM, PRESETS, VARIANT_BY_LATENT_CHANNELS, WAV2VEC2_LAYERS, ModelConfig
from .errors import CheckpointError, InputError
from .model import FlashHeadDiT
from .release import INDEX_NAME, MODEL_DIRS, WEIGHTS_NAME
from .weights import DictSource, SafetensorsSource, build_on_meta

# Present in the released files, never used by the forward pass: skipped by name.
UNUSED_PREFIXES = ("text_embedding.", "audio_emb.")
# weight_dtype choices, by the names ComfyUI's loaders use.
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
SCALED_FP8_KEY = "scaled_fp8"
# Prefixes of a DiT's keys in files saved from ComfyUI (a full checkpoint, or its diffusion model alone).
SAVED_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


class PrefixedSource:
    """A weight source seen without a prefix: the keys under `prefix` with it removed (others are left out)."""

    def __init__(self, source: SafetensorsSource | DictSource, prefix: str):
        self.source, self.prefix = source, prefix
        self.shapes = {k[len(prefix):]: shape for k, shape in source.shapes.items() if k.startswith(prefix)}

    def get(self, key: str) -> torch.Tensor:
        return self.source.get(self.prefix + key)


def dit_source(source: SafetensorsSource | DictSource) -> SafetensorsSource | DictSource | PrefixedSource:
    """The DiT's tensors of a source by their released names: a ComfyUI-saved file's prefix removed."""
    for prefix in SAVED_PREFIXES:
        if f"{prefix}patch_embedding.weight" in source.shapes:
            return PrefixedSource(source, prefix)
    return source


def is_scaled_fp8(checkpoint: str | Path | dict[str, torch.Tensor], variant: str = "auto") -> bool:
    """Whether a DiT checkpoint (a path and variant as `load_dit` takes them, or a state dict) is a ComfyUI scaled
    fp8 file: its Linears need the scale-aware `flashhead_core.layers` (ComfyUI's casting layers cannot carry the
    scale). Reads the safetensors headers only."""
    if isinstance(checkpoint, dict):
        source = DictSource(checkpoint)
    else:
        source = SafetensorsSource(find_model_files(checkpoint, variant)[1])
    return SCALED_FP8_KEY in dit_source(source).shapes


def find_model_files(path: str | Path, variant: str = "auto") -> tuple[dict | None, list[Path]]:
    """Locate (config.json contents or None, weight files) for a released root, model folder or single file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; the DiT loads from safetensors only")
        return None, [path]
    if not (path / "config.json").exists():
        found = {v: path / d for v, d in MODEL_DIRS.items() if (path / d / "config.json").exists()}
        if variant in found:
            return find_model_files(found[variant])
        if variant == "auto" and len(found) == 1:
            return find_model_files(next(iter(found.values())))
        if variant == "auto" and found:
            raise CheckpointError(f"{path} holds both Model_Lite and Model_Pro: choose the variant (lite or pro)")
        raise CheckpointError(
            f"no FlashHead model in {path}: expected config.json + {WEIGHTS_NAME} (a Model_Lite/ or Model_Pro/ "
            f"folder), or the checkpoint root containing them" + (f" (variant {variant!r} asked for)" if found else ""))
    config = json.loads((path / "config.json").read_text())
    if (path / INDEX_NAME).exists():
        weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = [path / WEIGHTS_NAME]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"weights missing in {path}: {', '.join(f.name for f in missing)}; download them "
                              f"again (the released names are expected: a renamed file is not found)")
    return config, files


def config_from_shapes(shapes: dict[str, tuple[int, ...]], config_json: dict | None = None,
                       num_heads: int | None = None) -> ModelConfig:
    """Infer the ModelConfig from tensor shapes; values stated in config.json are checked against them."""
    required = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight", "time_embedding.0.weight",
                "audio_proj.proj1.weight", "audio_proj.proj1_vf.weight", "audio_proj.proj3.weight")
    absent = [k for k in required if k not in shapes]
    if absent:
        raise CheckpointError(f"not a FlashHead DiT checkpoint: missing {', '.join(absent)}. Use the FlashHead "
                              f"weights: Model_Lite/ or Model_Pro/ {WEIGHTS_NAME} of Soul-AILab/SoulX-FlashHead-1_3B")
    dim, in_dim, *patch = shapes["patch_embedding.weight"]
    patch_size = tuple(patch)
    out_dim = shapes["head.head.weight"][0] // math.prod(patch_size)
    if out_dim not in VARIANT_BY_LATENT_CHANNELS:
        raise CheckpointError(f"DiT with {out_dim} latent channels: FlashHead Pro has 16, Lite has 128")
    variant = VARIANT_BY_LATENT_CHANNELS[out_dim]
    audio_channels = shapes["audio_proj.proj1.weight"][1] // (AUDIO_WINDOW * WAV2VEC2_LAYERS)
    t_stride = shapes["audio_proj.proj1_vf.weight"][1] // (WAV2VEC2_LAYERS * audio_channels) - 4
    spatial = PRESETS[variant].vae_stride[1]
    config_json = config_json or {}
    heads = num_heads or config_json.get("num_heads") or dim // DIT_HEAD_DIM
    config = ModelConfig(
        variant=variant, in_dim=in_dim, out_dim=out_dim, patch_size=patch_size,
        vae_stride=(t_stride, spatial, spatial), dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
        freq_dim=shapes["time_embedding.0.weight"][1], num_heads=heads,
        num_layers=len({k.split(".")[1] for k in shapes if k.startswith("blocks.")}),
        eps=config_json.get("eps", 1e-6),
        audio_intermediate_dim=shapes["audio_proj.proj1.weight"][0],
        audio_context_tokens=shapes["audio_proj.proj3.weight"][0] // dim, audio_channels=audio_channels,
    )
    stated = {k: config_json[k] for k in ("dim", "in_dim", "out_dim", "ffn_dim", "freq_dim", "num_layers",
                                          "patch_size", "vae_stride") if k in config_json}
    for key, value in stated.items():
        ours = getattr(config, key)
        if (list(ours) if isinstance(ours, tuple) else ours) != value:
            raise CheckpointError(f"config.json says {key}={value} but the weights have {key}={ours}")
    return config


def fp8_weight_names(model: FlashHeadDiT) -> list[str]:
    """The blocks' Linear weights (attention q/k/v/o and FFN): the ones `weight_dtype` stores in fp8."""
    return [f"blocks.{name}.weight" for name, module in model.blocks.named_modules() if isinstance(module, nn.Linear)]


def attach_fp8_scales(model: FlashHeadDiT, source: SafetensorsSource | DictSource) -> dict[str, torch.dtype]:
    """Give each Linear that the scaled fp8 `source` scales a (meta) `scale_weight` buffer; returns the storage dtype
    of its weight (the marker's fp8 dtype) and scale (float32) by key."""
    stored = source.get(SCALED_FP8_KEY).dtype
    stored = torch.float8_e4m3fn if stored == torch.float32 else stored
    modules, dtypes = dict(model.named_modules()), {}
    for key in [k for k in source.shapes if k.endswith(".scale_weight")]:
        name = key.removesuffix(".scale_weight")
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise CheckpointError(f"scaled fp8 file: {key} scales {name}, which is not a Linear of the DiT")
        if not hasattr(layer, "scale_weight"):
            raise CheckpointError(f"scaled fp8 file: {type(layer).__module__}.{type(layer).__name__} has no "
                                  f"scale_weight buffer; load it with operations=flashhead_core.layers")
        layer.register_buffer("scale_weight", torch.empty(source.shapes[key]))
        dtypes.update({f"{name}.weight": stored, key: torch.float32})
    return dtypes


def build_dit(config: ModelConfig, source: SafetensorsSource | DictSource | PrefixedSource, *,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", attention: str = "auto",
              weight_dtype: torch.dtype | None = None, operations=layers,
              execution_device: torch.device | str | None = None) -> FlashHeadDiT:
    """Construct the DiT on the meta device and assign the source's tensors (cast to `dtype`, the blocks' Linear
    weights to `weight_dtype` when given, a scaled fp8 file's scaled weights as stored) on `device`.
    `attention` is resolved for `execution_device` (default `device`). `operations`: see FlashHeadDiT."""
    if weight_dtype not in WEIGHT_DTYPES.values():
        raise InputError(f"weight_dtype must be one of {', '.join(map(str, WEIGHT_DTYPES.values()))} "
                         f"({', '.join(WEIGHT_DTYPES)}), not {weight_dtype!r}")
    backend = resolve_backend(attention, torch.device(execution_device if execution_device is not None else device))
    with torch.device("meta"):
        model = FlashHeadDiT(config, backend, operations)
    dtypes = dict.fromkeys(fp8_weight_names(model), weight_dtype) if weight_dtype else {}
    skip = UNUSED_PREFIXES
    if SCALED_FP8_KEY in source.shapes:
        dtypes.update(attach_fp8_scales(model, source))
        skip += (SCALED_FP8_KEY,)
    return build_on_meta(lambda: model, source, device=device, dtype=dtype, dtypes=dtypes,
                         what=f"a FlashHead {config.variant} DiT", skip_prefixes=skip)


def load_dit(path: str | Path, *, variant: str = "auto", dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", attention: str = "auto", num_heads: int | None = None,
             weight_dtype: torch.dtype | None = None, operations=layers,
             execution_device: torch.device | str | None = None) -> FlashHeadDiT:
    """Load a FlashHead DiT from a released root/folder or a single safetensors file (ComfyUI's key prefixes
    allowed) onto `device`.

    variant: "auto", "lite" or "pro" (a mismatch with the file is an error). num_heads: only for non-standard
    single files (default dim / 128, or config.json's value). dtype: the compute dtype. weight_dtype: None,
    torch.float8_e4m3fn or torch.float8_e5m2 (the blocks' Linear weights; see the module docstring).
    attention: "auto" or a backend name (attention.BACKENDS), chosen and checked for `execution_device`: where the
    model will compute when that is not where it is loaded (a host that moves it to the GPU to run; default
    `device`). operations: the layer namespace (FlashHeadDiT); a scaled fp8 file needs flashhead_core.layers
    (`is_scaled_fp8`).
    """
    if variant not in ("auto", "lite", "pro"):
        raise CheckpointError(f"variant must be auto, lite or pro, not {variant!r}")
    config_json, files = find_model_files(path, variant)
    source = dit_source(SafetensorsSource(files))
    config = config_from_shapes(source.shapes, config_json, num_heads)
    if variant != "auto" and variant != config.variant:
        raise CheckpointError(f"{path} is a FlashHead {config.variant} model, but {variant} was asked for")
    return build_dit(config, source, dtype=dtype, device=device, attention=attention, weight_dtype=weight_dtype,
                     operations=operations, execution_device=execution_device)
