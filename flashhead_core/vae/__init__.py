"""Video VAEs: one small interface used by the sampler, with Wan2.1 (Pro) and LTX-Video 0.9.0 (Lite) behind it.

Every VAE works in *normalised* latent space (spec §5): encode() returns latents already normalised with the
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from ..checkpoint import WEIGHTS_NAME, CheckpointError, DictSource, SafetensorsSource

VAE_WAN_FILE = Path("VAE_Wan") / "Wan2.1_VAE.pth"
VAE_LTX_DIR = Path("VAE_LTX")
NEEDED_VAE = {"pro": f"the Wan2.1 VAE ({VAE_WAN_FILE})", "lite": f"the LTX-Video 0.9.0 VAE ({VAE_LTX_DIR}/)"}
# Tiled decode: frames with a side above 512 px are decoded in tiles of at most 512x512 output pixels (plus halo).
TILE_PIXELS = 512


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
    """What Wan and LTX share: input checks, dtype/device handling, decode (tiled above `tile_pixels`). Subclasses
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
        self.tiling = tiling  # decode frames with a side above tile_pixels tile by tile (bounded memory, exact)
        self.tile_pixels = TILE_PIXELS  # the largest tile core, in output pixels (the halo comes on top)

    # Read from the network each time, so the wrapper follows it when a host (ComfyUI) moves it between devices.
    @property
    def device(self) -> torch.device:
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
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, t, h, w] -> frames [B, 3, 1 + (t-1)*stride_t, h*s, w*s], float32."""
        _check_shape("latents", latents, self.latent_channels, (1, 1, 1))
        z = self.unnormalise(latents.to(self.device, self.dtype))
        if self.tiling and max(z.shape[-2:]) * self.stride[1] > self.tile_pixels:
            features = self._decode_low_resolution(z)
            tile = max(1, self.tile_pixels // self.tiled_scale)
            frames = halo_tiled(self._decode_high_resolution, features, tile, self.halo())
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


def halo_tiled(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, halo: int) -> torch.Tensor:
    """run(x) for a spatially local `run`, computed tile by tile: x [B, C, T, h, w] -> [B, C', T', h*k, w*k] float32
    (k: run's upsampling factor).

    x is cut into a grid of cores of at most `tile` x `tile` pixels. Each core is run together with up to `halo`
    pixels of its neighbours on every side, and only the core's part of the result is kept: when `halo` is at least
    run's receptive radius, every kept pixel sees exactly the inputs it sees in run(x), so the result equals run(x)
    up to float summation order. Peak memory: run on (tile + 2*halo)^2 pixels, plus the output."""
    h, w = x.shape[-2:]
    out = None
    for top, bottom in _cores(h, tile):
        for left, right in _cores(w, tile):
            y0, y1 = max(top - halo, 0), min(bottom + halo, h)
            x0, x1 = max(left - halo, 0), min(right + halo, w)
            part = run(x[..., y0:y1, x0:x1])
            k = part.shape[-1] // (x1 - x0)
            if out is None:
                out = part.new_empty(*part.shape[:-2], h * k, w * k, dtype=torch.float32)
            out[..., top * k:bottom * k, left * k:right * k] = part[..., (top - y0) * k:(bottom - y0) * k,
                                                                    (left - x0) * k:(right - x0) * k]
    return out


def _cores(size: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) of the fewest equal-as-possible pieces of at most `tile` that cover [0, size)."""
    n = -(-size // tile)
    return [(size * i // n, size * (i + 1) // n) for i in range(n)]


def receptive_radius(convs_per_level: list[int]) -> int:
    """Receptive radius, in pixels of the first level, of a chain of 3x3 convolutions (padding 1) with a 2x spatial
    upsampling (nearest or depth-to-space) from each level to the next: convs_per_level[i] convolutions run at
    level i. Radius r at level i+1 needs ceil(r/2) pixels around the parent pixel at level i."""
    radius = 0
    for convs in reversed(convs_per_level):
        radius = (radius + 1) // 2 + convs
    return radius


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
             variant: str = "auto", tiling: bool = True) -> DiffusersVAE:
    """Load the Wan2.1 or LTX-Video VAE from any accepted layout (module docstring). variant: "auto", "pro" (Wan)
    or "lite" (LTX); a file of the other kind is an error. tiling: the exact tiled decode above 512x512 (False:
    always decode whole frames)."""
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
                        dtype: torch.dtype = torch.float32, variant: str = "auto", tiling: bool = True,
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
