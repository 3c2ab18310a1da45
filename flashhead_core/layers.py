"""The DiT's default `operations` namespace: torch.nn layers whose forward casts weight and bias to the input's dtype
and device (a no-op when they already match), so weights may be stored in another dtype (fp8) or on another device
than the computation.

    FlashHeadDiT(config, operations=flashhead_core.layers)   # the default
    FlashHeadDiT(config, operations=comfy.ops.manual_cast)   # ComfyUI: same interface, its own offloading

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
