"""LoRAs on the DiT: reading the common Wan-2.1 LoRA files and applying them, merged or on the fly.

    loras = [read_lora("style.safetensors", model, strength=0.8), read_lora("face.safetensors", model)]
    apply_loras(model, loras)            # float weights: merged; fp8-stored weights: on the fly (forward hooks)

Key formats (one file may mix them; every prefix below is optional):
- PEFT / diffusers: `<prefix><module>.lora_A[.default].weight` + `.lora_B[...]` (+ optional `.alpha`), prefixes
  `diffusion_model.`, `model.diffusion_model.`, `transformer.`, `base_model.model.`, `unet.`;
- kohya: `lora_unet_<module with _ for .>.lora_down.weight` + `.lora_up.weight` + `.alpha`; also `.lora.down/up`;
- full deltas: `<module>.diff` (weight) and `<module>.diff_b` (bias), as ComfyUI's LoRA extractor writes them;
- module names are the released Wan ones (`blocks.0.self_attn.q`, `blocks.0.ffn.0`, ...) or diffusers'
  WanTransformer3DModel ones (`blocks.0.attn1.to_q`, `attn2`, `to_out.0`, `ffn.net.0.proj`, `ffn.net.2`).

Scale: strength * alpha / rank (alpha missing: alpha = rank, i.e. 1). ΔW = scale * up @ down.

Policy on keys that match nothing: an error naming them, except the modules Wan-2.1 LoRAs routinely carry that the
FlashHead DiT does not have or never runs (the text encoder `lora_te*`, `text_embedding`, `img_emb`, the I2V
`k_img`/`v_img`/`norm_k_img`, `audio_emb`): those are skipped and listed in `LoRA.skipped` (the CLI and the nodes warn
with them). A LoRA with nothing left to apply, or with a tensor whose shape does not fit its module (another model:
Wan 14B is 5120 wide), is an error before anything runs.

Merge or on the fly: a float weight (fp32/bf16/fp16) is merged, W + ΔW computed in float32 and stored back in the
weight's dtype (no cost per step; what ComfyUI does for a fully loaded model). A weight stored in fp8 is not merged:
e4m3 keeps 3 mantissa bits, so a LoRA delta, typically 1e-3 of W, would mostly round away; its Linear gets a forward
hook adding scale * up(down(x)) in the compute dtype instead (a rank-r side path, exact, a few % more matmul work).
A scaled fp8 Linear (scale_weight) is handled on the fly too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FlashHeadError, check_range

log = logging.getLogger(__name__)


class LoRAError(FlashHeadError):
    """A LoRA file that cannot be applied to this DiT (unreadable, for another model, or nothing in it matches)."""


PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "model.")
KOHYA_PREFIX = "lora_unet_"
# Modules that Wan-2.1 LoRAs carry and the FlashHead DiT lacks or never runs: skipped (listed), not an error.
SKIPPABLE = re.compile(r"(^lora_te\d*_|^text_encoder|(^|\.)text_embedding|(^|\.)img_emb|(^|[._])k_img|(^|[._])v_img|"
                       r"norm_k_img|(^|\.)audio_emb)")
# diffusers WanTransformer3DModel module names -> the released Wan names.
DIFFUSERS_NAMES = [(re.compile(r"\.attn1\."), ".self_attn."), (re.compile(r"\.attn2\."), ".cross_attn."),
                   (re.compile(r"\.to_q$"), ".q"), (re.compile(r"\.to_k$"), ".k"), (re.compile(r"\.to_v$"), ".v"),
                   (re.compile(r"\.to_out\.0$"), ".o"), (re.compile(r"\.ffn\.net\.0\.proj$"), ".ffn.0"),
                   (re.compile(r"\.ffn\.net\.2$"), ".ffn.2")]
# suffix -> (role, where the module name ends)
SUFFIXES = [
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
]


@dataclass
class LoRAPatch:
    """One module's change: a low-rank pair (up [out, r], down [r, in], alpha) and/or full deltas."""
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None  # weight delta [out, in]
    diff_b: torch.Tensor | None = None  # bias delta [out]

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def lora_scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class LoRA:
    """A LoRA read against one DiT: module name (released layout, e.g. 'blocks.0.self_attn.q') -> patch; `keys`
    maps each module to the file's key stem it came from (ComfyUI's key map); skipped lists file keys left out."""
    name: str
    strength: float
    patches: dict[str, LoRAPatch]
    keys: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _module_name(stem: str, modules: dict[str, nn.Module], kohya: dict[str, str]) -> str | None:
    """A file's key stem -> the DiT module it names, or None."""
    if stem.startswith(KOHYA_PREFIX):
        return kohya.get(stem[len(KOHYA_PREFIX):])
    name = stem
    for prefix in PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name in modules:
        return name
    for pattern, replacement in DIFFUSERS_NAMES:
        name = pattern.sub(replacement, name)
    if name in modules:
        return name
    return kohya.get(name.replace(".", "_"))  # kohya names without the lora_unet_ prefix


def lora_targets(model: nn.Module) -> dict[str, nn.Module]:
    """The DiT's modules a LoRA may change: every module with a weight (Linear, Conv3d, LayerNorm), by name."""
    return {name: m for name, m in model.named_modules()
            if name and isinstance(getattr(m, "weight", None), torch.Tensor)}


def parse_lora(state_dict: dict[str, torch.Tensor], model: nn.Module, *, name: str = "LoRA",
               strength: float = 1.0) -> LoRA:
    """Match a LoRA state dict against `model` (a FlashHeadDiT); checks every shape. See the module docstring for
    the formats and the policy on unmatched keys."""
    check_range(strength, f"the strength of {name}", -100.0, 100.0, "1 is the LoRA as trained, 0 switches it off")
    modules = lora_targets(model)
    kohya = {m.replace(".", "_"): m for m in modules}
    patches: dict[str, LoRAPatch] = {}
    stems: dict[str, str] = {}
    unmatched, skipped = [], []
    for key, tensor in state_dict.items():
        split = _split_key(key)
        module = _module_name(split[0], modules, kohya) if split else None
        if module is None:
            (skipped if SKIPPABLE.search(key) else unmatched).append(key)
            continue
        stem, role = split
        patch = patches.setdefault(module, LoRAPatch())
        stems.setdefault(module, stem)
        if role == "alpha":
            patch.alpha = float(tensor.float().reshape(-1)[0])
        else:
            setattr(patch, role, tensor)
    if unmatched:
        shown = ", ".join(unmatched[:8]) + (f" and {len(unmatched) - 8} more" if len(unmatched) > 8 else "")
        raise LoRAError(f"{name}: {len(unmatched)} of its {len(state_dict)} keys match no layer of the FlashHead DiT "
                        f"({shown}). It is not a LoRA for a Wan-2.1 1.3B-layout DiT (or uses a key format not "
                        f"read here: PEFT lora_A/lora_B, kohya lora_down/lora_up + alpha, diff/diff_b): use a LoRA "
                        f"trained for FlashHead or Wan 2.1 1.3B")
    for module, patch in patches.items():
        _check_patch(name, module, patch, modules[module], stems[module])
    patches = {m: p for m, p in patches.items() if p.down is not None or p.diff is not None or p.diff_b is not None}
    if not patches:
        raise LoRAError(f"{name}: none of its {len(state_dict)} keys changes a layer of the FlashHead DiT (skipped: "
                        f"{', '.join(skipped[:8]) or 'none'}): use a LoRA trained for FlashHead or Wan 2.1 1.3B")
    return LoRA(name, float(strength), patches, {m: stems[m] for m in patches}, skipped)


def _check_patch(name: str, module: str, patch: LoRAPatch, layer: nn.Module, stem: str) -> None:
    weight = layer.weight
    if (patch.up is None) != (patch.down is None):
        raise LoRAError(f"{name}: {stem} has only one half of its low-rank pair (lora_A/lora_down and "
                        f"lora_B/lora_up both needed): the file is incomplete")
    if patch.down is not None:
        up, down = patch.up, patch.down
        if up.ndim > 2:  # a Conv3d LoRA stores [out, r, 1, 1, 1]
            up = up.flatten(1)
        if up.ndim != 2 or down.ndim < 2 or up.shape[1] != down.shape[0] or \
                (up.shape[0], math_prod(down.shape[1:])) != (weight.shape[0], math_prod(weight.shape[1:])):
            raise LoRAError(f"{name}: {stem} changes a {tuple(up.shape[:1]) + tuple(down.shape[1:])} weight, but "
                            f"the DiT's {module}.weight is {tuple(weight.shape)}: this LoRA is for another model "
                            f"(Wan 14B is 5120 wide, FlashHead and Wan 1.3B 1536)")
        patch.up = up
    if patch.diff is not None and patch.diff.shape != weight.shape:
        raise LoRAError(f"{name}: {stem}.diff is {tuple(patch.diff.shape)}, the DiT's {module}.weight "
                        f"{tuple(weight.shape)}: this LoRA is for another model")
    if patch.diff_b is not None:
        bias = getattr(layer, "bias", None)
        if bias is None or patch.diff_b.shape != bias.shape:
            raise LoRAError(f"{name}: {stem}.diff_b does not fit {module}'s bias "
                            f"({None if bias is None else tuple(bias.shape)}): this LoRA is for another model")


def math_prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def read_lora(path: str | Path, model: nn.Module, strength: float = 1.0) -> LoRA:
    """A LoRA .safetensors file, matched against `model` (see `parse_lora`)."""
    path = Path(path)
    if not path.is_file():
        raise LoRAError(f"LoRA file not found: {path}")
    try:
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise LoRAError(f"{path} is not a readable .safetensors LoRA ({e}): LoRAs load from .safetensors") from None
    return parse_lora(state_dict, model, name=path.name, strength=strength)


def parse_lora_option(text: str) -> tuple[str, float]:
    """'FILE' or 'FILE:STRENGTH' (the CLI's --lora) -> (file, strength). A Windows drive letter stays in the file."""
    file, sep, strength = text.rpartition(":")
    if sep and file and not (len(file) == 1 and file.isalpha()):
        try:
            return file, float(strength)
        except ValueError:
            pass
    return text, 1.0


def weight_delta(patch: LoRAPatch, strength: float) -> torch.Tensor | None:
    """strength * ΔW in float32 (None: no weight change)."""
    delta = None
    if patch.down is not None:
        up, down = patch.up.float(), patch.down.float().flatten(1)
        delta = (strength * patch.lora_scale()) * (up @ down)
    if patch.diff is not None:
        diff = strength * patch.diff.float()
        delta = diff if delta is None else delta + diff.reshape(delta.shape)
    return delta


def _is_fp8(tensor: torch.Tensor) -> bool:
    return tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


class _OnTheFly:
    """The forward hook of one fp8-stored Linear: output + Σ strength * scale * up(down(x))."""

    def __init__(self):
        self.terms: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def __call__(self, module, inputs, output):
        x = inputs[0]
        for up, down, scale in self.terms:
            output = output + scale * F.linear(F.linear(x, down.to(x.device, x.dtype)), up.to(x.device, x.dtype))
        return output


def apply_loras(model: nn.Module, loras: list[LoRA]) -> dict[str, str]:
    """Apply the LoRAs to `model` in place (a model loaded for this run: the CLI, library users). Returns module ->
    'merged' or 'on the fly'. Float weights are merged; fp8-stored (or scaled fp8) Linear weights get a forward
    hook (see the module docstring). A bias delta (diff_b) is always merged (biases are never fp8)."""
    modules = lora_targets(model)
    how: dict[str, str] = {}
    hooks: dict[str, _OnTheFly] = {}
    with torch.no_grad():
        for lora in loras:
            for module, patch in lora.patches.items():
                layer = modules[module]
                if patch.diff_b is not None:
                    layer.bias.add_((lora.strength * patch.diff_b.float()).to(layer.bias.dtype))
                if patch.down is None and patch.diff is None:
                    continue
                weight = layer.weight
                scaled = getattr(layer, "scale_weight", None) is not None
                if _is_fp8(weight) or scaled:
                    if patch.diff is not None:
                        raise LoRAError(f"{lora.name}: {module} is stored in fp8 and the LoRA holds a full "
                                        f"weight delta (.diff) for it: load the model with weight_dtype default "
                                        f"to apply it")
                    if module not in hooks:
                        hooks[module] = _OnTheFly()
                        layer.register_forward_hook(hooks[module])
                    hooks[module].terms.append((patch.up, patch.down.flatten(1),
                                                lora.strength * patch.lora_scale()))
                    how[module] = "on the fly"
                else:
                    delta = weight_delta(patch, lora.strength).reshape(weight.shape)
                    weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
                    how.setdefault(module, "merged")
            if lora.skipped:
                log.warning("%s: skipped %d keys for modules the FlashHead DiT does not have: %s", lora.name,
                            len(lora.skipped), ", ".join(lora.skipped[:8]))
    return how


def merged_state_dict(model: nn.Module, loras: list[LoRA]) -> dict[str, torch.Tensor]:
    """The model's state dict with the LoRAs merged in float32 (the reference the tests compare with)."""
    state = {k: v.float().clone() for k, v in model.state_dict().items()}
    for lora in loras:
        for module, patch in lora.patches.items():
            delta = weight_delta(patch, lora.strength)
            if delta is not None:
                state[f"{module}.weight"] += delta.reshape(state[f"{module}.weight"].shape)
            if patch.diff_b is not None:
                state[f"{module}.bias"] += lora.strength * patch.diff_b.float()
    return state


class LoRALinear(nn.Module):
    """`base` (a Linear, left as it is) plus low-rank terms computed on the fly: base(x) + Σ scale * up(down(x)).
    What the ComfyUI LoRA node puts in place of a Linear (a ModelPatcher object patch, swapped in on load and back
    on unload). The terms are plain tensors, copied to the input's device and dtype once per (device, dtype)."""

    def __init__(self, base: nn.Module, terms: list[tuple[torch.Tensor, torch.Tensor, float]]):
        super().__init__()
        self.base = base
        self.terms = list(terms)
        self._cast: dict[tuple, list] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        key = (x.device, x.dtype)
        if key not in self._cast:
            self._cast = {key: [(up.to(x.device, x.dtype), down.to(x.device, x.dtype), scale)
                                for up, down, scale in self.terms]}
        for up, down, scale in self._cast[key]:
            out = out + scale * F.linear(F.linear(x, down), up)
        return out


def low_rank_terms(lora: LoRA, module: str) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """The (up, down, strength * alpha / rank) term of one module, [] when the LoRA has no low-rank pair for it."""
    patch = lora.patches.get(module)
    if patch is None or patch.down is None:
        return []
    return [(patch.up.float(), patch.down.float().flatten(1), lora.strength * patch.lora_scale())]
