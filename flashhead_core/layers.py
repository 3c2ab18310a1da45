"""The DiT's default `operations` namespace: torch.nn layers whose forward casts weight and bias to the input's dtype
and device (a no-op when they already match), so weights may be stored in another dtype (fp8) or on another device
than the computation.

    FlashHeadDiT(config, operations=flashhead_core.layers)   # the default
    FlashHeadDiT(config, operations=comfy.ops.manual_cast)   # ComfyUI: same interface, its own offloading

The VAEs (diffusers' networks, built with torch.nn) are moved onto a namespace after loading by `use_operations`
(in place: each layer re-classed onto the namespace's class of the same torch.nn base); Conv2d and GroupNorm are here
for them.

A Linear with a `scale_weight` buffer (a scaled fp8 checkpoint's per-layer scale, None unless loaded) computes with
weight.to(input dtype) * scale_weight.to(input dtype), as ComfyUI's scaled fp8 layers do.

fp8 compute (opt-in, `use_fp8_compute(model, "row" | "tensor" | None)`): a Linear given an `fp8_weight` (e4m3fn
[out, in]) and its `fp8_scale` (float32: [out] per row, or [] per tensor) multiplies in fp8: each call quantises its
input to e4m3fn with a scale per token ("row") or one for the whole input ("tensor"), absmax / 448, and computes
(x8 * sx) @ (w8 * sw)^T + bias. On CUDA that is one `torch._scaled_mm` (fp8 matrix units, sm89 and newer; bf16
out); elsewhere the same numbers are emulated in float32 (`fp8_linear`), so the CPU measures its error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cast_to(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`tensor` in `like`'s dtype and on its device; the tensor itself when it already is (or None)."""
    if tensor is None or (tensor.dtype == like.dtype and tensor.device == like.device):
        return tensor
    return tensor.to(device=like.device, dtype=like.dtype)


FP8_MAX = 448.0  # the largest finite float8_e4m3fn
FP8_GRANULARITIES = ("row", "tensor")


class Linear(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("scale_weight", None)
        self.register_buffer("fp8_weight", None)
        self.register_buffer("fp8_scale", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_weight is not None:
            return fp8_linear(x, self.fp8_weight, self.fp8_scale, cast_to(self.bias, x))
        weight = cast_to(self.weight, x)
        if self.scale_weight is not None:
            weight = weight * cast_to(self.scale_weight, x)
        return F.linear(x, weight, cast_to(self.bias, x))


def quantize_fp8(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x8 [M, K] float8_e4m3fn, scale float32: [M, 1] per row or [] per tensor), x ~ x8 * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True) if rowwise else x.abs().amax()
    scale = amax.float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] (quantised per token when weight_scale is per row [N], else per tensor) times the e4m3fn weight
    [N, K] with weight_scale -> [..., N] in x's dtype. CUDA: torch._scaled_mm (bf16 out); elsewhere float32
    emulation of the same products."""
    rowwise = weight_scale.dim() == 1
    x8, x_scale = quantize_fp8(x.reshape(-1, x.shape[-1]), rowwise)
    w_scale = weight_scale.view(1, -1) if rowwise else weight_scale
    if x.is_cuda:
        out = torch._scaled_mm(x8, weight.t(), scale_a=x_scale, scale_b=w_scale,
                               bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
    else:
        out = (x8.float() * x_scale) @ (weight.float().t() * w_scale)
        if bias is not None:
            out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], -1)


def use_fp8_compute(module: nn.Module, granularity: str | None, names: list[str] | None = None) -> int:
    """Turn fp8 compute on ("row": a scale per output row and per token; "tensor": one each) or off (None) for this
    module's `Linear`s (`names`: only those, e.g. checkpoint.fp8_weight_names(model) for the DiT blocks' Linears).
    The fp8 copy is made from the layer's current weight (times scale_weight); the weight itself stays for when fp8
    compute is off again. Returns how many layers changed."""
    if granularity is not None and granularity not in FP8_GRANULARITIES:
        raise ValueError(f"fp8 compute granularity must be one of {', '.join(FP8_GRANULARITIES)} or None, got "
                         f"{granularity!r}")
    chosen = None if names is None else {name.removesuffix(".weight") for name in names}
    count = 0
    for name, layer in module.named_modules():
        if not isinstance(layer, Linear) or (chosen is not None and name not in chosen):
            continue
        if granularity is None:
            layer.fp8_weight = layer.fp8_scale = None
        else:
            weight = layer.weight.float()
            if layer.scale_weight is not None:
                weight = weight * layer.scale_weight.float()
            layer.fp8_weight, scale = quantize_fp8(weight, granularity == "row")
            layer.fp8_scale = scale.reshape(-1) if granularity == "row" else scale
        count += 1
    return count


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_to(self.weight, x), cast_to(self.bias, x))


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, cast_to(self.weight, x), cast_to(self.bias, x), self.eps)


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_to(self.weight, x), cast_to(self.bias, x))


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, cast_to(self.weight, x), cast_to(self.bias, x), self.eps)


# --- re-classing a network built with torch.nn (diffusers' VAEs) onto an operations namespace ----------------------

# The torch.nn layer classes an operations namespace may provide (ComfyUI's comfy.ops.manual_cast / disable_weight_init
# have all of these; this module has Linear, Conv2d, Conv3d, GroupNorm and LayerNorm).
OPERATION_NAMES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
                   "GroupNorm", "LayerNorm", "RMSNorm")
_MIXED: dict[tuple[type, type], type] = {}


def use_operations(module: nn.Module, operations) -> int:
    """Re-class, in place, every layer of `module` (itself included) whose class is one of torch.nn's
    `OPERATION_NAMES` or a subclass of one, onto the namespace's class of the same name, so a host (ComfyUI) can keep
    its weights elsewhere and cast them per layer. Returns how many layers were re-classed.

    - type exactly torch.nn.X -> operations.X;
    - a subclass S of torch.nn.X (diffusers' WanCausalConv3d) -> a cached `type(S.__name__, (S, operations.X), {})`:
      S's own forward still runs, and its `super().forward(...)` lands in operations.X's (casting) forward. S must
      reach the weights only through that call (WanCausalConv3d pads, then calls it);
    - left alone: layers already of the namespace's class, and those whose name the namespace lacks (or has under a
      class that is not a torch.nn.X subclass).

    Only `__class__` changes: no copies, parameters and buffers keep their identity, dtype and device. Namespace
    classes must not need their own __init__ state (torch.nn's and ComfyUI's do not)."""
    bases = [(name, getattr(nn, name)) for name in OPERATION_NAMES if hasattr(nn, name)]
    count = 0
    for layer in module.modules():
        cls = type(layer)
        for name, base in _most_specific_first(bases, cls):
            target = getattr(operations, name, None)
            if not (isinstance(target, type) and issubclass(target, base)) or issubclass(cls, target):
                break
            layer.__class__ = target if cls is base else _mixed(cls, target)
            count += 1
            break
    return count


def _most_specific_first(bases: list[tuple[str, type]], cls: type) -> list[tuple[str, type]]:
    """The (name, torch.nn class) pairs `cls` derives from, in its MRO order (the nearest base first)."""
    mro = cls.__mro__
    return sorted(((name, base) for name, base in bases if base in mro), key=lambda pair: mro.index(pair[1]))


def _mixed(cls: type, target: type) -> type:
    """`cls` with `target` (the namespace's class of the same torch base) spliced in just after it in the MRO."""
    key = (cls, target)
    if key not in _MIXED:
        mixed = type(cls.__name__, (cls, target), {"__module__": cls.__module__})
        mixed.__qualname__ = f"{cls.__qualname__}[{target.__module__}.{target.__qualname__}]"
        _MIXED[key] = mixed
    return _MIXED[key]
