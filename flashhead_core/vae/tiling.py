"""The exact tiled decode: a spatially local network run tile by tile with a halo equal to its receptive radius,
so the result equals the untiled run (bounded memory for large frames)."""

from __future__ import annotations

from typing import Callable

import torch


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
