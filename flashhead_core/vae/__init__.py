"""Video VAEs: one small interface used by the sampler, with Wan2.1 (Pro) and LTX-Video 0.9.0 (Lite) behind it.

Every VAE works in *normalised* latent space (spec §5): encode() returns latents already normalised with the
checkpoint's per-channel statistics, decode() takes normalised latents. Both networks are diffusers' classes
(`AutoencoderKLWan`, `AutoencoderKLLTXVideo`); this package adds the normalisation, the loaders for the released
file layouts and an optional tiled decode.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from ..checkpoint import WEIGHTS_NAME, CheckpointError, DictSource, SafetensorsSource

VAE_WAN_FILE = Path("VAE_Wan") / "Wan2.1_VAE.pth"
VAE_LTX_DIR = Path("VAE_LTX")
NEEDED_VAE = {"pro": f"the Wan2.1 VAE ({VAE_WAN_FILE})", "lite": f"the LTX-Video 0.9.0 VAE ({VAE_LTX_DIR}/)"}
# Tiled decode (opt-in): tiles of 512x512 output pixels overlapping by 192, blended with linear ramps.
TILE_PIXELS = 512
TILE_OVERLAP_PIXELS = 192


class VideoVAE(Protocol):
    latent_channels: int  # 16 (Wan2.1) or 128 (LTX)
    stride: tuple[int, int, int]  # (t, h, w): (4, 8, 8) or (8, 32, 32)
    dtype: torch.dtype
    device: torch.device

    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """frames [B, 3, T, H, W] in [-1, 1] (T = 1 + k*stride_t) -> normalised latents [B, C, 1 + k, H/s, W/s]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, t, h, w] -> frames [B, 3, 1 + (t-1)*stride_t, h*s, w*s] (~[-1, 1])."""


# --- the shared wrapper -----------------------------------------------------------------------------------------

class DiffusersVAE:
    """What Wan and LTX share: input checks, dtype/device handling, decode (optionally tiled). Subclasses define
    `normalise` / `unnormalise` (in the VAE dtype), `encode` and the class constants below.

    Inputs may come in any float dtype and device; they are moved to the VAE's. Outputs are float32 on the VAE's
    device whatever the VAE dtype (callers cast: the DiT to its dtype, colour correction works in float32)."""

    family: str  # "wan" or "ltx"
    variant: str  # the FlashHead variant this VAE belongs to: "pro" or "lite"
    latent_channels: int
    stride: tuple[int, int, int]
    clamp_output: bool  # Wan clamps decoded frames to [-1, 1], LTX does not

    def __init__(self, model: nn.Module, tiling: bool = False):
        self.model = model
        weight = next(model.parameters())
        self.dtype, self.device = weight.dtype, weight.device
        self.tiling = tiling  # decode frames larger than TILE_PIXELS in blended tiles (bounded memory, not exact)

    @torch.no_grad()
    def posterior(self, frames: torch.Tensor):
        """frames [B, 3, T, H, W] in [-1, 1] -> diffusers' DiagonalGaussianDistribution of the *unnormalised*
        latents (.mean, .logvar: [B, C, 1 + (T-1)/stride_t, H/s, W/s])."""
        _check_shape("frames", frames, 3, self.stride)
        return self.model.encode(frames.to(self.device, self.dtype)).latent_dist

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, t, h, w] -> frames [B, 3, 1 + (t-1)*stride_t, h*s, w*s], float32."""
        _check_shape("latents", latents, self.latent_channels, (1, 1, 1))
        z = self.unnormalise(latents.to(self.device, self.dtype))
        spatial = self.stride[1]
        if self.tiling and max(z.shape[-2:]) * spatial > TILE_PIXELS:
            frames = tiled_decode(self._decode_unnormalised, z, spatial)
        else:
            frames = self._decode_unnormalised(z).float()
        return frames.clamp(-1, 1) if self.clamp_output else frames

    def _decode_unnormalised(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample

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


def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, spatial_stride: int,
                 tile_pixels: int = TILE_PIXELS, overlap_pixels: int = TILE_OVERLAP_PIXELS) -> torch.Tensor:
    """Decode unnormalised latents z [B, C, t, h, w] in overlapping spatial tiles of `tile_pixels` output pixels and
    blend the overlaps with linear ramps -> frames [B, 3, T, h*s, w*s] float32.

    Peak memory is one tile's decode plus the float32 output. Not exact: each tile sees zero padding instead of its
    neighbours (and Wan's mid-block attention only its own tile); see README for the measured error."""
    s = spatial_stride
    tile, overlap = tile_pixels // s, overlap_pixels // s
    h, w = z.shape[-2:]
    out = weight = None
    for top in _tile_starts(h, tile, tile - overlap):
        for left in _tile_starts(w, tile, tile - overlap):
            part = decode(z[..., top:top + tile, left:left + tile]).float()
            ph, pw = part.shape[-2:]
            ramp = (_ramp(ph, overlap * s, top > 0, top + tile < h)[:, None]
                    * _ramp(pw, overlap * s, left > 0, left + tile < w)[None, :]).to(part.device)
            if out is None:
                out = part.new_zeros(*part.shape[:-2], h * s, w * s)
                weight = part.new_zeros(h * s, w * s)
            rows, cols = slice(top * s, top * s + ph), slice(left * s, left * s + pw)
            out[..., rows, cols] += part * ramp
            weight[rows, cols] += ramp
    return out / weight


def _tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Tile offsets covering [0, size): every `step`, the last one flush with the end."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, step)) + [size - tile]


def _ramp(n: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """[n] blending weights: 1, rising linearly over the first `overlap` entries / falling over the last ones."""
    weights = torch.ones(n)
    edge = (torch.arange(min(overlap, n)) + 0.5) / overlap
    if rise:
        weights[:len(edge)] = edge
    if fall:
        weights[n - len(edge):] = torch.minimum(weights[n - len(edge):], edge.flip(0))
    return weights


# --- key layouts and building -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyMap:
    """One-to-one renaming between an original checkpoint layout and diffusers' layout.

    `blocks` pairs (original prefix, diffusers prefix); a prefix ending in '.' names a module, one without names a
    whole key. Inside a matched module, `leaves` renames the remaining path (original, diffusers). Keys matching no
    block keep their name."""

    blocks: tuple[tuple[str, str], ...]
    leaves: tuple[tuple[str, str], ...] = ()

    def to_diffusers(self, key: str) -> str:
        return _rename(key, self.blocks, self.leaves)

    def to_original(self, key: str) -> str:
        return _rename(key, tuple((b, a) for a, b in self.blocks), tuple((b, a) for a, b in self.leaves))


def _rename(key: str, blocks: tuple[tuple[str, str], ...], leaves: tuple[tuple[str, str], ...]) -> str:
    matches = [(a, b) for a, b in blocks if key == a or (a.endswith(".") and key.startswith(a))]
    if not matches:
        return key
    old, new = max(matches, key=lambda pair: len(pair[0]))
    rest = "." + key[len(old):]
    for a, b in leaves:
        rest = rest.replace("." + a, "." + b)
    return new + rest[1:]


def check_config_json(config_json: dict | None, kwargs: dict, class_name: str, what: str) -> None:
    """A diffusers config.json must name `class_name` and agree with the arguments inferred from the weights."""
    if config_json is None:
        return
    if config_json.get("_class_name") != class_name:
        raise CheckpointError(f"config.json is for {config_json.get('_class_name')!r}, expected {class_name} "
                              f"({what})")
    for key, ours in kwargs.items():
        stated = config_json.get(key)
        if stated is not None and (list(ours) if isinstance(ours, tuple) else ours) != stated:
            raise CheckpointError(f"config.json says {key}={stated}, but {what} needs {key}="
                                  f"{list(ours) if isinstance(ours, tuple) else ours}")


# --- loading ----------------------------------------------------------------------------------------------------

def load_vae(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
             variant: str = "auto", tiling: bool = False) -> DiffusersVAE:
    """Load the Wan2.1 or LTX-Video VAE from any accepted layout (module docstring). variant: "auto", "pro" (Wan)
    or "lite" (LTX); a file of the other kind is an error. tiling: opt-in tiled decode above 512x512."""
    if variant not in ("auto", "lite", "pro"):
        raise CheckpointError(f"variant must be auto, lite or pro, not {variant!r}")
    file, config_json = find_vae_file(path, variant)
    source = _open(file)
    return vae_from_state_dict(source, config_json=config_json, device=device, dtype=dtype, variant=variant,
                               tiling=tiling, origin=str(file))


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
                        dtype: torch.dtype = torch.float32, variant: str = "auto", tiling: bool = False,
                        origin: str = "state dict") -> DiffusersVAE:
    """Recognise the VAE in a state dict (any accepted key layout) and build it."""
    from . import ltx, wan

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
                                      tiling=tiling)
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


# --- pairing with a model ---------------------------------------------------------------------------------------

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
