"""fp8 compute (layers.use_fp8_compute): the emulated e4m3fn products on the CPU, on and off, and the DiT's latents
with fp8 block Linears against bf16 (the full-size figures: `flashhead bench gpu`, docs/performance.md)."""

from __future__ import annotations

import pytest
import torch

from flashhead_core import layers
from flashhead_core.checkpoint import fp8_weight_names
from flashhead_core.generation.sampler import SamplerConfig, motion_inputs, sample_chunk, shifted_timesteps
from flashhead_core.testing.dit import tiny_config
from flashhead_core.testing.random import random_dit
from flashhead_core.tools.fp8_report import psnr


def test_quantize_fp8_round_trip():
    x = torch.randn(64, 256) * torch.logspace(-4, 2, 64)[:, None]  # rows of very different magnitude
    for rowwise in (True, False):
        x8, scale = layers.quantize_fp8(x, rowwise)
        assert x8.dtype == torch.float8_e4m3fn and scale.shape == ((64, 1) if rowwise else ())
        assert x8.float().abs().max() <= layers.FP8_MAX
    row, tensor = ((lambda q: q[0].float() * q[1])(layers.quantize_fp8(x, rowwise)) for rowwise in (True, False))
    assert psnr(row, x) > 30 and psnr(tensor, x) > 30
    assert psnr(row[0], x[0]) > 30 > psnr(tensor[0], x[0])  # per-row scales keep the smallest row


@pytest.mark.parametrize("granularity", ["row", "tensor"])
@torch.no_grad()
def test_linear_fp8_compute_on_and_off(granularity):
    torch.manual_seed(0)
    linear = layers.Linear(256, 128)
    x = torch.randn(3, 10, 256)
    exact = linear(x)
    assert layers.use_fp8_compute(linear, granularity) == 1
    assert linear.fp8_weight.dtype == torch.float8_e4m3fn
    approx = linear(x)
    assert approx.shape == exact.shape and approx.dtype == exact.dtype
    assert psnr(approx, exact) > 25
    # the same numbers as the float32 product of the dequantised operands
    x8, sx = layers.quantize_fp8(x.reshape(-1, 256), granularity == "row")
    w = linear.fp8_weight.float() * (linear.fp8_scale[:, None] if granularity == "row" else linear.fp8_scale)
    torch.testing.assert_close(approx.reshape(-1, 128), (x8.float() * sx) @ w.t() + linear.bias)
    layers.use_fp8_compute(linear, None)
    assert linear.fp8_weight is None
    torch.testing.assert_close(linear(x), exact, rtol=0, atol=0)


def test_granularity_is_checked():
    with pytest.raises(ValueError, match="granularity must be one of row, tensor or None, got 'channel'"):
        layers.use_fp8_compute(layers.Linear(16, 16), "channel")


@torch.no_grad()
def test_dit_blocks_fp8_compute_close_to_bf16():
    model = random_dit(tiny_config("pro"), torch.device("cpu"), torch.bfloat16, attention="sdpa")
    names = fp8_weight_names(model)
    g = torch.Generator().manual_seed(0)
    shape = (1, 16, 3, 4, 4)
    ref = torch.randn(shape, generator=g).bfloat16()
    motion, mask = motion_inputs([ref[:, :, :1]], 3)
    tokens = torch.randn(1, 3, model.config.audio_context_tokens, model.config.dim, generator=g)
    noise = torch.randn((5, *shape), generator=g).bfloat16()
    timesteps = shifted_timesteps(SamplerConfig(), torch.bfloat16)
    bf16 = sample_chunk(model, tokens, ref, motion, mask, noise, timesteps)
    assert layers.use_fp8_compute(model, "row", names) == len(names) == 10 * model.config.num_layers  # q, k, v, o twice; the FFN
    fp8 = sample_chunk(model, tokens, ref, motion, mask, noise, timesteps)
    assert 20 < psnr(fp8, bf16) < 80  # close, and not the bf16 path again
    layers.use_fp8_compute(model, None, names)
    torch.testing.assert_close(sample_chunk(model, tokens, ref, motion, mask, noise, timesteps), bf16, rtol=0, atol=0)
