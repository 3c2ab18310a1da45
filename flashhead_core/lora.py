"""LoRAs on the DiT: reading the common Wan-2.1 LoRA files and applying them, merged or on the fly.

    loras = [read_lora("style.safetensors", model, strength=0.8), read_lora("face.safetensors", model)]
    apply_loras(model, loras)            # float weights: merged; fp8-stored weights: on the fly (forward hooks)

Key formats (one file may mix them; every prefix below is optional):
- PEFT / diffusers: `<prefix><module>.lora_A[.default].weight` + `.lora_B[...]` (+ optional `.alpha`), prefixes
  `diffusion_model.`, `model.diffusion_model.`, `transformer.`, `base_model.model.`, `unet.`;
- kohya: `lora_unet_<module with _ for .>.lora_down.weight` + `.lora_up.weight` + `.alpha`; also `.lora.down/up`;
- full deltas: `<module>.diff` (weight) and `<module>.diff_b` (bias), as ComfyUI's LoRA extractor writes them;
- module names are the released Wan ones (`blocks.0.self_attn.q`, `blocks.0.ffn.0`, `head.head`, ...) or diffusers'
  WanTransformer3DModel ones (`blocks.0.attn1.to_q`, `attn2`, `to_out.0`, `norm2` (Wan's norm3), `ffn.net.0.proj`,
  `ffn.net.2`, `proj_out`, `condition_embedder.time_embedder.linear_1`, `condition_embedder.time_proj`), in kohya
  form too (`lora_unet_blocks_0_attn1_to_q`).

Scale: strength * alpha / rank (alpha missing: alpha = rank, i.e. 1). ΔW = scale * up @ down.

Policy on keys that match nothing: an error naming them, except the modules Wan-2.1 LoRAs routinely carry that the
FlashHead DiT does not have or never runs, in any of the namings above: the text encoder (`lora_te*`,
`text_encoder*`), the text and image embedders (`text_embedding`, `img_emb`; diffusers'
`condition_embedder.text_embedder`, `condition_embedder.image_embedder`), the I2V image keys of cross-attention
(`k_img`, `v_img`, `norm_k_img`; diffusers' `add_k_proj`, `add_v_proj`, `norm_added_k`) and `audio_emb`: those are
skipped and listed in `LoRA.skipped` (the CLI and the nodes warn with them). A LoRA with nothing left to apply, or
with a tensor whose shape does not fit its module (another model: Wan 14B is 5120 wide), is an error before anything
runs; `apply_loras` checks every LoRA before it changes the model, so a refused LoRA leaves the model as it was.

Merge or on the fly: a float weight (fp32/bf16/fp16) is merged, W + ΔW computed in float32 and stored back in the
weight's dtype (no cost per step; what ComfyUI does for a fully loaded model). A weight stored in fp8 is not merged:
e4m3 keeps 3 mantissa bits, so a LoRA delta, typically 1e-3 of W, would mostly round away; its Linear gets a forward
hook adding scale * up(down(x)) in the compute dtype instead (a rank-r side path, exact, a few % more matmul work).
A scaled fp8 Linear (scale_weight) is handled on the fly too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FlashHeadError, check_range


class LoRAError(FlashHeadError):
    """A LoRA file that cannot be applied to this DiT (unreadable, for another model, or nothing in it matches)."""


PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "model.")
KOHYA_PREFIX = "lora_unet_"
TEXT_ENCODER = re.compile(r"^(lora_te\d*_|text_encoder)")
# Modules that Wan-2.1 LoRAs carry and the FlashHead DiT lacks or never runs, in Wan and diffusers names with "_" for
# "." (every naming is compared in that form): skipped (listed), not an error.
SKIPPABLE = re.compile(r"^(text_embedding|img_emb|audio_emb|condition_embedder_(text|image)_embedder)(_|$)|"
                       r"_(k_img|v_img|norm_k_img|add_k_proj|add_v_proj|norm_added_k)$")
# diffusers WanTransformer3DModel names -> the released Wan names ("_" for "."), as diffusers' convert_wan_to_diffusers
# renames them: whole names outside the blocks, and names inside `blocks_<i>_` (diffusers' norm2 is Wan's norm3).
DIFFUSERS_TOP = {"condition_embedder_time_embedder_linear_1": "time_embedding_0",
                 "condition_embedder_time_embedder_linear_2": "time_embedding_2",
                 "condition_embedder_time_proj": "time_projection_1", "proj_out": "head_head"}
DIFFUSERS_BLOCK = {f"{attn}_{theirs}": f"{ours_attn}_{ours}"
                   for attn, ours_attn in (("attn1", "self_attn"), ("attn2", "cross_attn"))
                   for theirs, ours in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out_0", "o"),
                                        ("norm_q", "norm_q"), ("norm_k", "norm_k"))}
DIFFUSERS_BLOCK |= {"norm2": "norm3", "ffn_net_0_proj": "ffn_0", "ffn_net_2": "ffn_2"}
BLOCK = re.compile(r"(blocks_\d+_)(.+)")
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


def _flat_name(stem: str) -> str:
    """A file's key stem -> its module name with "_" for "." and without the prefix, in Wan names where diffusers
    named it: 'transformer.blocks.0.attn1.to_q' and 'lora_unet_blocks_0_self_attn_q' -> 'blocks_0_self_attn_q'."""
    name = stem[len(KOHYA_PREFIX):] if stem.startswith(KOHYA_PREFIX) else \
        next((stem[len(p):] for p in PREFIXES if stem.startswith(p)), stem)
    flat = name.replace(".", "_")
    block = BLOCK.fullmatch(flat)
    if block and block[2] in DIFFUSERS_BLOCK:
        return block[1] + DIFFUSERS_BLOCK[block[2]]
    return DIFFUSERS_TOP.get(flat, flat)


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
    by_flat_name = {m.replace(".", "_"): m for m in modules}
    patches: dict[str, LoRAPatch] = {}
    stems: dict[str, str] = {}
    unmatched, skipped = [], []
    for key, tensor in state_dict.items():
        split = _split_key(key)
        flat = _flat_name(split[0] if split else key)
        module = by_flat_name.get(flat) if split else None
        if module is None:
            (skipped if TEXT_ENCODER.match(key) or SKIPPABLE.search(flat) else unmatched).append(key)
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
                        f"({shown}), in the Wan, diffusers or kohya names of its modules. Either it is a LoRA for "
                        f"another kind of model (SD, SDXL, Flux, ...), or it stores its tensors under suffixes not "
                        f"read here (read: PEFT lora_A/lora_B, kohya lora_down/lora_up + alpha, diff/diff_b): use a "
                        f"LoRA trained for FlashHead or Wan 2.1 1.3B")
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


def _stored_in_fp8(layer: nn.Module) -> bool:
    """Whether a layer's weight is kept in fp8 (fp8 storage, or a scaled fp8 Linear): LoRAs run on the fly there."""
    return _is_fp8(layer.weight) or getattr(layer, "scale_weight", None) is not None


def _check_applicable(model_modules: dict[str, nn.Module], loras: list[LoRA]) -> None:
    """What `apply_loras` would refuse, found before it changes anything."""
    for lora in loras:
        for module, patch in lora.patches.items():
            layer = model_modules.get(module)
            if layer is None:
                raise LoRAError(f"{lora.name}: {module} is not a layer of this model: the LoRA was read against "
                                f"another DiT; read it again with this one")
            _check_patch(lora.name, module, patch, layer, lora.keys.get(module, module))
            if patch.diff is not None and _stored_in_fp8(layer):
                raise LoRAError(f"{lora.name}: {module} is stored in fp8 and the LoRA holds a full weight delta "
                                f"(.diff) for it: load the model with weight_dtype default to apply it")


def apply_loras(model: nn.Module, loras: list[LoRA]) -> dict[str, str]:
    """Apply the LoRAs to `model` in place (a model loaded for this run: the CLI, library users). Returns module ->
    'merged' or 'on the fly'. Float weights are merged; fp8-stored (or scaled fp8) Linear weights get a forward
    hook (see the module docstring). A bias delta (diff_b) is always merged (biases are never fp8). Every LoRA is
    checked first: a LoRAError leaves the model as it was. The keys a LoRA skipped are the caller's to report."""
    modules = lora_targets(model)
    _check_applicable(modules, loras)
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
                if _stored_in_fp8(layer):
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
