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


class Linear(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("scale_weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = cast_to(self.weight, x)
        if self.scale_weight is not None:
            weight = weight * cast_to(self.scale_weight, x)
        return F.linear(x, weight, cast_to(self.bias, x))


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
