"""The casting layers (flashhead_core.layers), the `operations` namespace and fp8 weight storage."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from flashhead_core import layers
from flashhead_core.checkpoint import fp8_weight_names, load_dit
from flashhead_core.errors import CheckpointError, InputError
from flashhead_core.model import FlashHeadDiT
from flashhead_core.release import WEIGHTS_NAME
from flashhead_core.testing.dit import tiny_config, write_tiny_dit

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


@pytest.fixture(scope="module")
def tiny_pro(tmp_path_factory):
    return write_tiny_dit(tmp_path_factory.mktemp("dit"), "pro")


def _inputs(config, seed=0):
    """latents, ref [1, 16, 2, 4, 4], timestep [1], audio tokens [1, 2, N, dim]."""
    g = torch.Generator().manual_seed(seed)
    latents, ref = (torch.randn(1, config.out_dim, 2, 4, 4, generator=g) for _ in range(2))
    tokens = torch.randn(1, 2, config.audio_context_tokens, config.dim, generator=g)
    return latents, torch.tensor([700.0]), ref, tokens


def _flow(model, inputs):
    latents, timestep, ref, tokens = inputs
    with torch.no_grad():
        return model(latents.to(model.dtype), timestep, ref.to(model.dtype), tokens)


def test_layers_cast_weight_to_the_input():
    linear = layers.Linear(8, 4).requires_grad_(False)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    linear.weight.data = linear.weight.to(torch.float8_e4m3fn)
    expected = F.linear(x, linear.weight.to(torch.bfloat16), linear.bias.to(torch.bfloat16))
    assert torch.equal(linear(x), expected)
    assert layers.cast_to(linear.bias, linear.bias) is linear.bias  # no copy when dtype and device match

    norm = layers.LayerNorm(8).requires_grad_(False)
    assert torch.equal(norm.to(torch.bfloat16)(x.float()), F.layer_norm(x.float(), (8,), norm.weight.float(),
                                                                        norm.bias.float()))
    conv = layers.Conv3d(2, 3, kernel_size=1).to(torch.bfloat16)
    assert conv(torch.randn(1, 2, 1, 2, 2)).dtype == torch.float32


def test_every_parametrised_layer_comes_from_operations():
    ops = SimpleNamespace(**{base.__name__: type(base.__name__, (base,), {})
                             for base in (nn.Linear, nn.Conv3d, nn.LayerNorm)})
    model = FlashHeadDiT(tiny_config("pro"), operations=ops)
    torch_layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv3d, nn.LayerNorm))]
    assert torch_layers and all(isinstance(m, (ops.Linear, ops.Conv3d, ops.LayerNorm)) for m in torch_layers)


def test_torch_nn_operations_give_the_same_float32_flow(tiny_pro):
    inputs = _inputs(tiny_config("pro"))
    assert torch.equal(_flow(load_dit(tiny_pro, operations=torch.nn), inputs), _flow(load_dit(tiny_pro), inputs))


@pytest.mark.parametrize("weight_dtype", FP8)
def test_fp8_weights_compute_as_their_dequantised_values(tiny_pro, weight_dtype):
    model = load_dit(tiny_pro, dtype=torch.bfloat16, weight_dtype=weight_dtype)
    state = model.state_dict()
    names = set(fp8_weight_names(model))
    assert names and all(state[k].dtype == weight_dtype for k in names)
    assert all(v.dtype == torch.bfloat16 for k, v in state.items() if k not in names)

    dequantised = load_dit(tiny_pro, dtype=torch.bfloat16)
    for name in names:
        dequantised.get_parameter(name).data = state[name].to(torch.bfloat16)
    inputs = _inputs(model.config)
    assert torch.equal(_flow(model, inputs), _flow(dequantised, inputs))


def _write_scaled_fp8(folder, path):
    """ComfyUI-style scaled fp8 single file: the blocks' Linear weights as fp8 (weight / scale), a float32
    `<layer>.scale_weight` each, and the `scaled_fp8` marker."""
    state = load_file(str(folder / WEIGHTS_NAME))
    for name in fp8_weight_names(FlashHeadDiT(tiny_config("pro"))):
        scale = state[name].abs().max() / 448
        state[name] = (state[name] / scale).to(torch.float8_e4m3fn)
        state[name.removesuffix("weight") + "scale_weight"] = scale.float()
    state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(state, str(path))
    return state


def test_scaled_fp8_file_is_loaded_as_stored(tmp_path, tiny_pro):
    stored = _write_scaled_fp8(tiny_pro, tmp_path / "scaled.safetensors")
    model = load_dit(tmp_path / "scaled.safetensors", dtype=torch.bfloat16)
    names = fp8_weight_names(model)
    for name in names:
        layer = model.get_submodule(name.removesuffix(".weight"))
        assert layer.weight.dtype == torch.float8_e4m3fn and torch.equal(layer.weight, stored[name])
        assert layer.scale_weight.dtype == torch.float32

    dequantised = load_dit(tiny_pro, dtype=torch.bfloat16)
    for name in names:
        scale = stored[name.removesuffix("weight") + "scale_weight"]
        dequantised.get_parameter(name).data = stored[name].to(torch.bfloat16) * scale.to(torch.bfloat16)
    inputs = _inputs(model.config)
    assert torch.equal(_flow(model, inputs), _flow(dequantised, inputs))


def test_scaled_fp8_needs_layers_that_apply_the_scale(tmp_path, tiny_pro):
    _write_scaled_fp8(tiny_pro, tmp_path / "scaled.safetensors")
    with pytest.raises(CheckpointError, match="scale_weight"):
        load_dit(tmp_path / "scaled.safetensors", operations=torch.nn)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, "fp8"])
def test_unknown_weight_dtype(tiny_pro, weight_dtype):
    with pytest.raises(InputError, match="float8_e4m3fn.*float8_e5m2"):
        load_dit(tiny_pro, weight_dtype=weight_dtype)


def test_the_fp8_report_runs_its_two_chunks_on_a_tiny_model():
    """`python -m flashhead_core.tools.fp8_report` drives the sampler itself: the tool must follow its signature."""
    from flashhead_core.testing.dit import tiny_config
    from flashhead_core.testing.random import random_dit
    from flashhead_core.tools.fp8_report import two_chunks

    model = random_dit(tiny_config("pro"), torch.device("cpu"), torch.float32, "sdpa")
    first, second = two_chunks(model, 32, 32, steps=2)
    assert first.shape == second.shape == (1, model.config.out_dim, 9, 4, 4)
    assert torch.isfinite(first).all() and not torch.equal(first, second)
