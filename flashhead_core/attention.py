"""Attention backends behind one function.

`attention(q, k, v, backend)` takes and returns [B, L, H, D]. Backends:
- "sdpa": torch.nn.functional.scaled_dot_product_attention. Always available, any device and dtype.
- "flash_attn_3": flash-attn 3 (`flash_attn_interface`), Hopper GPUs (SM90).
- "flash_attn_2": flash-attn 2 (`flash_attn`), Ampere or newer.
- "sage": SageAttention (`sageattention`), int8 QK: approximate, so never chosen by "auto".
The optional kernels are imported lazily, the first time availability is asked for: a missing or broken install
only removes that backend. Flash/Sage kernels take fp16/bf16; float32 inputs are run in bf16 and cast back.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import AttentionBackendError

BACKENDS = ("sdpa", "flash_attn_3", "flash_attn_2", "sage")
AUTO_PREFERENCE = ("flash_attn_3", "flash_attn_2", "sdpa")  # exact kernels only, fastest first
INSTALL_HINT = {
    "flash_attn_3": "build flash-attn 3 from the hopper/ folder of the flash-attention repository (SM90 only)",
    "flash_attn_2": "pip install flash-attn (CUDA, SM80+)",
    "sage": "pip install sageattention (CUDA)",
}


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@functools.lru_cache(maxsize=None)
def _kernel(backend: str) -> Callable | None:
    """The [B, L, H, D] kernel of an optional backend, or None when its package is missing or fails to import."""
    try:
        if backend == "flash_attn_3":
            func = importlib.import_module("flash_attn_interface").flash_attn_func

            def run(q, k, v):
                out = func(q, k, v)
                return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the LSE
            return run
        if backend == "flash_attn_2":
            return importlib.import_module("flash_attn").flash_attn_func
        if backend == "sage":
            sageattn = importlib.import_module("sageattention").sageattn
            return lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")
    except Exception:  # ImportError, or a binary built for another torch/CUDA: the backend is simply absent
        return None
    raise AttentionBackendError(f"unknown attention backend {backend!r}")


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on `device`, "sdpa" first."""
    device = torch.device(device)
    found = ["sdpa"]
    if device.type != "cuda" or not torch.cuda.is_available():
        return found
    major, _ = torch.cuda.get_device_capability(device)
    if major == 9 and _kernel("flash_attn_3") is not None:
        found.append("flash_attn_3")
    if major >= 8 and _kernel("flash_attn_2") is not None:
        found.append("flash_attn_2")
    if _kernel("sage") is not None:
        found.append("sage")
    return found


def resolve_backend(name: str, device: torch.device | str) -> str:
    """'auto' -> the fastest exact backend available on `device`; any other name is checked and returned."""
    available = available_backends(device)
    if name == "auto":
        return next(b for b in AUTO_PREFERENCE if b in available)
    if name not in BACKENDS:
        raise AttentionBackendError(
            f"unknown attention backend {name!r}: choose 'auto' or one of {', '.join(BACKENDS)} "
            f"(available on {device}: {', '.join(available)})")
    if name not in available:
        raise AttentionBackendError(
            f"attention backend {name!r} is not available on {device}; available: {', '.join(available)}. "
            f"To use it: {INSTALL_HINT.get(name, 'use a CUDA device')}, or pass 'auto'.")
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Softmax attention, scale 1/sqrt(D). q [B, Lq, H, D], k and v [B, Lk, H, D] -> [B, Lq, H, D]."""
    if backend == "sdpa":
        return _sdpa(q, k, v)
    kernel = _kernel(backend)
    if kernel is None:
        raise AttentionBackendError(f"attention backend {backend!r} is not installed; use resolve_backend() first")
    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    return kernel(q, k, v).to(dtype)
