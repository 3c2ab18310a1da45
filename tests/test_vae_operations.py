"""The VAEs on an `operations` namespace (load_vae(..., operations=comfy.ops.manual_cast) in ComfyUI): diffusers builds
torch.nn layers, `use_operations` re-classes them in place onto the namespace's casting classes. Checked with a
namespace written here the way ComfyUI's comfy.ops is (disable_weight_init / manual_cast, cast_bias_weight)."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm
from torch import nn

from flashhead_core import layers
from flashhead_core.testing.random import random_ltx_vae, random_wan_vae
from flashhead_core.testing.vae import (TINY_LTX_CHANNELS, TINY_LTX_LAYERS, TINY_WAN_DIM, write_tiny_ltx_vae,
                                        write_tiny_wan_vae)
from flashhead_core.tools.parity import rel_error
from flashhead_core.vae import load_vae
from flashhead_core.vae.wan import OffloadableRMSNorm

CASTS = collections.Counter()  # the spy: cast_bias_weight calls, by (layer class name, whether a dtype changed)


def cast_bias_weight(layer, x):
    """As comfy.ops.cast_bias_weight: weight and bias in the input's dtype, on its device."""
    CASTS[type(layer).__name__, layer.weight.dtype != x.dtype] += 1
    bias = None if layer.bias is None else layer.bias.to(x.device, x.dtype)
    return layer.weight.to(x.device, x.dtype), bias


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function = []
    bias_function = []


def _op(base, compute):
    def forward_comfy_cast_weights(self, x):
        return compute(self, x, *cast_bias_weight(self, x))

    def forward(self, *args, **kwargs):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return self.forward_comfy_cast_weights(*args, **kwargs)
        return super(cls, self).forward(*args, **kwargs)

    cls = type(base.__name__, (base, CastWeightBiasOp), {"reset_parameters": lambda self: None, "forward": forward,
                                                          "forward_comfy_cast_weights": forward_comfy_cast_weights})
    return cls


class disable_weight_init:
    Linear = _op(nn.Linear, lambda s, x, w, b: F.linear(x, w, b))
    Conv2d = _op(nn.Conv2d, lambda s, x, w, b: s._conv_forward(x, w, b))
    Conv3d = _op(nn.Conv3d, lambda s, x, w, b: s._conv_forward(x, w, b))
    GroupNorm = _op(nn.GroupNorm, lambda s, x, w, b: F.group_norm(x, s.num_groups, w, b, s.eps))
    LayerNorm = _op(nn.LayerNorm, lambda s, x, w, b: F.layer_norm(x, s.normalized_shape, w, b, s.eps))


class manual_cast(disable_weight_init):
    Linear = type("Linear", (disable_weight_init.Linear,), {"comfy_cast_weights": True})
    Conv2d = type("Conv2d", (disable_weight_init.Conv2d,), {"comfy_cast_weights": True})
    Conv3d = type("Conv3d", (disable_weight_init.Conv3d,), {"comfy_cast_weights": True})
    GroupNorm = type("GroupNorm", (disable_weight_init.GroupNorm,), {"comfy_cast_weights": True})
    LayerNorm = type("LayerNorm", (disable_weight_init.LayerNorm,), {"comfy_cast_weights": True})


LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)
SHAPES = {"wan": ((1, 3, 5, 16, 24), (1, 16, 3, 4, 5)), "ltx": ((1, 3, 9, 32, 64), (1, 128, 2, 2, 3))}


def tiny(family, operations=None, dtype=torch.float32, seed=0):
    if family == "wan":
        return random_wan_vae(TINY_WAN_DIM, seed=seed, dtype=dtype, operations=operations)
    return random_ltx_vae(TINY_LTX_CHANNELS, TINY_LTX_LAYERS, seed=seed, dtype=dtype, operations=operations)


def inputs(family):
    frames, latents = SHAPES[family]
    generator = torch.Generator().manual_seed(1)
    return torch.rand(frames, generator=generator) * 2 - 1, torch.randn(latents, generator=generator)


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_every_layer_is_reclassed_in_place(family):
    vae = tiny(family)
    before = {name: p for name, p in vae.model.named_parameters()}
    kinds = collections.Counter(type(m).__name__ for m in vae.model.modules() if isinstance(m, LAYERS))
    count = layers.use_operations(vae.model, manual_cast)
    reclassed = [m for m in vae.model.modules() if isinstance(m, LAYERS)]
    assert count == len(reclassed) == sum(kinds.values()) > 0
    namespace = tuple(getattr(manual_cast, n) for n in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"))
    assert all(isinstance(m, namespace) and m.comfy_cast_weights for m in reclassed)
    assert collections.Counter(type(m).__name__ for m in reclassed) == kinds  # names kept (WanCausalConv3d too)
    if family == "wan":
        assert kinds == {"WanCausalConv3d": 61, "Conv2d": 10}
        assert all(isinstance(m, WanCausalConv3d) for m in reclassed if type(m).__name__ == "WanCausalConv3d")
    else:
        assert kinds == {"Conv3d": 42, "LayerNorm": 4}
    assert all(p is before[name] for name, p in vae.model.named_parameters())  # no copies
    assert layers.use_operations(vae.model, manual_cast) == 0  # already there
    assert layers.use_operations(vae.model, disable_weight_init) == 0  # a subclass of that namespace's classes


def test_a_namespace_without_a_class_leaves_those_layers_alone():
    vae = tiny("wan")

    class only_conv3d:
        Conv3d = manual_cast.Conv3d
        Conv2d = int  # not a torch.nn.Conv2d subclass: ignored

    assert layers.use_operations(vae.model, only_conv3d) == 61
    assert sum(type(m) is nn.Conv2d for m in vae.model.modules()) == 10


def test_causal_convolution_keeps_its_padding_and_cache():
    torch.manual_seed(0)
    conv = WanCausalConv3d(3, 4, 3, padding=1).requires_grad_(False)
    x, cache = torch.randn(1, 3, 2, 6, 7), torch.randn(1, 3, 1, 6, 7)
    plain, cached = conv(x), conv(x, cache)
    CASTS.clear()
    assert layers.use_operations(conv, manual_cast) == 1
    assert type(conv).__mro__[1:4] == (WanCausalConv3d, manual_cast.Conv3d, disable_weight_init.Conv3d)
    assert torch.equal(conv(x), plain) and torch.equal(conv(x, cache), cached) and plain.shape[2:] == x.shape[2:]
    assert CASTS == {("WanCausalConv3d", False): 2}  # through the namespace's casting forward
    other = WanCausalConv3d(3, 4, 3, padding=1)
    layers.use_operations(other, manual_cast)
    assert type(other) is type(conv)  # one cached class per (diffusers class, namespace class)


@pytest.mark.parametrize("family", ["wan", "ltx"])
@pytest.mark.parametrize("operations", [manual_cast, layers], ids=["manual_cast", "flashhead_layers"])
def test_float32_encode_and_decode_are_bit_identical(family, operations):
    plain, cast = tiny(family), tiny(family, operations)
    frames, latents = inputs(family)
    CASTS.clear()
    assert torch.equal(cast.encode(frames), plain.encode(frames))
    assert torch.equal(cast.decode(latents), plain.decode(latents))
    if operations is manual_cast:
        assert sum(CASTS.values()) > 0 and not any(changed for _, changed in CASTS)


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_bf16_weights_with_float32_inputs_take_the_casting_path(family):
    """Weights stored in bf16, the network called with float32: every layer casts its weights to float32, so the
    result is the float32 network's with the bf16-rounded weights, bit for bit."""
    stored = tiny(family, manual_cast, dtype=torch.bfloat16)
    rounded = tiny(family)
    with torch.no_grad():
        for p, q in zip(rounded.model.parameters(), stored.model.parameters()):
            p.copy_(q.float())
        for p, q in zip(rounded.model.buffers(), stored.model.buffers()):
            p.copy_(q.float())
    frames, z = inputs(family)
    CASTS.clear()
    with torch.no_grad():
        decoded = stored.model.decode(z).sample
        assert decoded.dtype == torch.float32 and torch.equal(decoded, rounded.model.decode(z).sample)
        calls = sum(CASTS.values())
        assert calls > 0 and all(changed for _, changed in CASTS)
        encoded = stored.model.encode(frames).latent_dist.mean
        assert torch.equal(encoded, rounded.model.encode(frames).latent_dist.mean)
    assert sum(CASTS.values()) > calls
    expected = {"WanCausalConv3d", "Conv2d"} if family == "wan" else {"Conv3d", "LayerNorm"}
    assert {name for name, _ in CASTS} == expected


@pytest.mark.parametrize("family, latent, tile_pixels", [("wan", (1, 16, 3, 11, 14), 40),
                                                         ("ltx", (1, 128, 2, 5, 7), 64)])
def test_tiled_decode_with_operations_equals_untiled(family, latent, tile_pixels):
    plain, cast = tiny(family, seed=3), tiny(family, manual_cast, seed=3)
    z = torch.randn(latent, generator=torch.Generator().manual_seed(0))
    plain.tiling = cast.tiling = False
    full = plain.decode(z)
    assert torch.equal(cast.decode(z), full)
    plain.tiling = cast.tiling = True
    plain.tile_pixels = cast.tile_pixels = tile_pixels
    tiles = []
    cast_tiled = cast.decode(z, on_tile=lambda: tiles.append(1))
    assert len(tiles) > 1 and torch.equal(cast_tiled, plain.decode(z)) and rel_error(cast_tiled, full) < 1e-5
    with torch.no_grad():  # the two halves together: the untiled decode, bit for bit
        unnormalised = cast.unnormalise(z)
        both = cast._decode_high_resolution(cast._decode_low_resolution(unnormalised))
        assert torch.equal(both.clamp(-1, 1) if cast.clamp_output else both, cast._decode_unnormalised(unnormalised))


def test_loaders_pass_operations(tmp_path):
    write_tiny_wan_vae(tmp_path)
    write_tiny_ltx_vae(tmp_path)
    for variant, expected in (("pro", 71), ("lite", 46)):
        plain = load_vae(tmp_path, variant=variant)
        vae = load_vae(tmp_path, variant=variant, operations=manual_cast)
        assert sum(isinstance(m, CastWeightBiasOp) for m in vae.model.modules()) == expected
        assert not any(isinstance(m, CastWeightBiasOp) for m in plain.model.modules())  # default: untouched
        _, latents = inputs("wan" if variant == "pro" else "ltx")
        assert torch.equal(vae.decode(latents), plain.decode(latents))
    wan_norms = [type(m) for m in load_vae(tmp_path, variant="pro", operations=manual_cast).model.modules()
                 if isinstance(m, WanRMS_norm)]
    assert wan_norms and set(wan_norms) == {OffloadableRMSNorm}


def test_execution_device_is_where_inputs_go():
    vae = tiny("ltx")
    assert vae.device == torch.device("cpu") and vae.execution_device is None
    vae.execution_device = "meta"
    assert vae.device == torch.device("meta") and vae.statistics()[0].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: weights offloaded to the CPU, compute on it")
@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_partly_offloaded_network_computes_on_the_execution_device(family):
    """As ComfyUI's partial load leaves it: the castable layers and every other half of the modules (norms, the LTX
    root's statistics buffers) on the CPU, the rest on the GPU; the VAE computes on the GPU."""
    reference, vae = tiny(family).model.cuda(), tiny(family, manual_cast)
    modules = [m for m in vae.model.modules() if any(True for _ in m.parameters(recurse=False))]
    for m in modules[::2]:
        m.cuda()
    vae.execution_device = "cuda"
    frames, latents = inputs(family)
    plain = type(vae)(reference)
    with torch.no_grad():
        assert rel_error(vae.decode(latents), plain.decode(latents)) < 1e-5
        assert rel_error(vae.encode(frames), plain.encode(frames)) < 1e-5
