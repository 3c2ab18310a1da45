"""Loading a video VAE from any released or ComfyUI layout, and checking it belongs to the model.

Every VAE works in *normalised* latent space (docs/algorithm.md#vaes): encode() returns latents already normalised with the
checkpoint's per-channel statistics, decode() takes normalised latents. Both networks are diffusers' classes
(`AutoencoderKLWan`, `AutoencoderKLLTXVideo`); this package adds the normalisation, the loaders for the released
file layouts and an exact tiled decode for frames above 512x512 (bounded memory).

    vae = load_vae("SoulX-FlashHead-1_3B", variant="pro", dtype=torch.bfloat16, device="cuda")
    latents = vae.encode(frames)      # [B, 3, 1 + 4k, H, W] in [-1, 1] -> [B, 16, 1 + k, H/8, W/8], float32
    frames = vae.decode(latents)      # -> [B, 3, 1 + 4k, H, W], float32

Accepted files (`load_vae` finds out which VAE it is from the tensor names):
- the checkpoint root (holding `VAE_Wan/` and/or `VAE_LTX/`; `variant` picks one when both are there),
- `VAE_Wan/Wan2.1_VAE.pth` (or its folder), or the same weights as `.safetensors` (ComfyUI's `wan_2.1_vae.safetensors`)
  with the original Wan key names or diffusers' names,
- `VAE_LTX/` (diffusers layout: `config.json` + `diffusion_pytorch_model.safetensors`), or one LTX `.safetensors`
  file with diffusers names or the original LTX-Video names (`res_blocks`, `per_channel_statistics.*`, optionally
  under a `vae.` prefix as in the original all-in-one LTX-Video checkpoint).
The network is built on the meta device and each tensor is assigned once (no random init).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..release import VAE_LTX_DIR, VAE_WAN_FILE, WEIGHTS_NAME
from ..weights import DictSource, SafetensorsSource
from . import ltx, wan
from .base import VideoVAE

NEEDED_VAE = {"pro": f"the Wan2.1 VAE ({VAE_WAN_FILE})", "lite": f"the LTX-Video 0.9.0 VAE ({VAE_LTX_DIR}/)"}


def load_vae(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
             variant: str = "auto", tiling: bool = True, operations=None,
             execution_device: torch.device | str | None = None) -> VideoVAE:
    """Load the Wan2.1 or LTX-Video VAE from any accepted layout (module docstring). variant: "auto", "pro" (Wan)
    or "lite" (LTX); a file of the other kind is an error. tiling: the exact tiled decode above 512x512 (False:
    always decode whole frames). operations: None (diffusers' torch.nn layers, as built) or a namespace such as
    comfy.ops.manual_cast or flashhead_core.layers: the network's Conv/Linear/norm layers are re-classed onto it in
    place after loading (flashhead_core.layers.use_operations), so a host can keep weights offloaded and cast them
    per layer. execution_device: where it computes when that is not where it is loaded (a host that moves it there
    to run it; default: where its weights are)."""
    if variant not in ("auto", "lite", "pro"):
        raise CheckpointError(f"variant must be auto, lite or pro, not {variant!r}")
    file, config_json = find_vae_file(path, variant)
    source = _open(file)
    vae = vae_from_state_dict(source, config_json=config_json, device=device, dtype=dtype, variant=variant,
                              tiling=tiling, origin=str(file), operations=operations)
    vae.execution_device = execution_device
    return vae


def find_vae_file(path: str | Path, variant: str = "auto") -> tuple[Path, dict | None]:
    """(weights file, config.json contents or None) for a checkpoint root, a VAE folder or a single file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"VAE not found: {path}. FlashHead Pro needs {NEEDED_VAE['pro']}, Lite needs "
                              f"{NEEDED_VAE['lite']}, both from Soul-AILab/SoulX-FlashHead-1_3B")
    if path.is_file():
        if path.suffix not in (".pth", ".pt", ".safetensors"):
            raise CheckpointError(f"{path}: expected a .pth or .safetensors VAE file")
        return path, None
    if (path / "config.json").exists():
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            raise CheckpointError(f"{path} has config.json but no {WEIGHTS_NAME}; download the folder again")
        try:
            return weights, json.loads((path / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({e}); download it again") from e
    if (path / VAE_WAN_FILE.name).exists():
        return path / VAE_WAN_FILE.name, None
    found = {v: p for v, p in (("pro", path / VAE_WAN_FILE), ("lite", path / VAE_LTX_DIR)) if p.exists()}
    if variant in found:
        return find_vae_file(found[variant])
    if variant == "auto" and len(found) == 1:
        return find_vae_file(next(iter(found.values())))
    if variant == "auto" and found:
        raise CheckpointError(f"{path} holds both VAE_Wan and VAE_LTX: choose the variant (pro: Wan2.1, lite: LTX)")
    raise CheckpointError(f"no VAE in {path}: expected {VAE_WAN_FILE}, {VAE_LTX_DIR}/ (config.json + {WEIGHTS_NAME}),"
                          f" or a .pth/.safetensors VAE file")


def _open(file: Path) -> SafetensorsSource | DictSource:
    """Shapes first, tensors on demand: a foreign safetensors file is rejected before its tensors are read."""
    if file.suffix == ".safetensors":
        return SafetensorsSource([file])
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"cannot read {file}: {str(e).splitlines()[0]}. The file is truncated or corrupt; "
                              f"download it again.") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a plain state dict of tensors (as VAE_Wan/Wan2.1_VAE.pth is)")
    return DictSource(state)


def vae_from_state_dict(source: SafetensorsSource | DictSource | dict[str, torch.Tensor], *,
                        config_json: dict | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, variant: str = "auto", tiling: bool = True,
                        origin: str = "state dict", operations=None) -> VideoVAE:
    """Recognise the VAE in a state dict (any accepted key layout) and build it (operations: as in load_vae)."""
    if isinstance(source, dict):
        source = DictSource(source)
    families = {"wan": wan, "ltx": ltx}
    for prefix in ("", "vae."):
        shapes = {k[len(prefix):]: s for k, s in source.shapes.items() if k.startswith(prefix)}
        found = [(name, module.layout(shapes)) for name, module in families.items()]
        found = [(name, layout) for name, layout in found if layout]
        if found:
            break
    else:
        raise CheckpointError(f"{origin}: {_describe_foreign(source.shapes)}")
    name, layout = found[0]
    module = families[name]
    if variant not in ("auto", module.VARIANT):
        raise CheckpointError(f"{origin} is {NEEDED_VAE[module.VARIANT]}, but the {variant} variant needs "
                              f"{NEEDED_VAE[variant]}")
    state = {k: source.get(prefix + k) for k in shapes}
    try:
        return module.from_state_dict(state, layout, config_json=config_json, device=device, dtype=dtype,
                                      tiling=tiling, operations=operations)
    except CheckpointError as e:
        raise CheckpointError(f"{origin}: {e}") from e


def _describe_foreign(shapes: dict[str, tuple[int, ...]]) -> str:
    """Why a checkpoint is not a FlashHead VAE, and what to use instead."""
    fix = f"FlashHead Pro needs {NEEDED_VAE['pro']}, Lite needs {NEEDED_VAE['lite']}"
    if "patch_embedding.weight" in shapes or any(k.startswith("blocks.") for k in shapes):
        return f"this is a diffusion model (DiT) checkpoint, not a VAE; load it as the model. {fix}"
    image_convs = [k for k, s in shapes.items() if k.startswith(("encoder.", "decoder.")) and len(s) == 4]
    if image_convs:
        return (f"this is an image VAE (2-D convolutions such as {image_convs[0]} {list(shapes[image_convs[0]])}),"
                f" not a video VAE. {fix}")
    sample = ", ".join(sorted(shapes)[:4]) or "no tensors"
    return f"not a Wan2.1 or LTX-Video 0.9.0 VAE (keys: {sample}, ...). {fix}"


def check_vae_matches_model(vae: VideoVAE, model_config) -> None:
    """Raise CheckpointError when the VAE's latent channels or strides are not those of `model_config` (a
    config.ModelConfig): a Lite model needs the LTX VAE, a Pro model the Wan2.1 VAE."""
    need = (model_config.out_dim, tuple(model_config.vae_stride))
    have = (vae.latent_channels, tuple(vae.stride))
    if have != need:
        which = {16: NEEDED_VAE["pro"], 128: NEEDED_VAE["lite"]}.get(vae.latent_channels, "an unknown VAE")
        raise CheckpointError(
            f"VAE mismatch: the FlashHead {model_config.variant} model needs {NEEDED_VAE[model_config.variant]} "
            f"({need[0]} latent channels, stride {list(need[1])}), but the loaded VAE is {which} "
            f"({have[0]} latent channels, stride {list(have[1])}). Load the VAE that matches the model.")
