"""The VAEs: reference parity, every accepted file layout, clear errors, model pairing, tiling, LTX encode modes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashhead_core.config import LITE, PRO
from flashhead_core.errors import CheckpointError
from flashhead_core.release import WEIGHTS_NAME
from flashhead_core.testing.dit import write_tiny_dit
from flashhead_core.testing.random import random_ltx_vae
from flashhead_core.testing.vae import TINY_LTX_CHANNELS, write_tiny_ltx_vae, write_tiny_wan_vae
from flashhead_core.tools.parity import rel_error, verify_file
from flashhead_core.vae import ltx, wan
from flashhead_core.vae.base import TILE_PIXELS
from flashhead_core.vae.loading import check_vae_matches_model, load_vae
from flashhead_core.vae.tiling import halo_tiled, receptive_radius

# --- reference parity ----------------------------------------------------------------------------------------------

REFERENCE_FILES = ["fixtures/vae_wan21.safetensors", "fixtures/vae_ltx.safetensors", "manifests/vae_wan21.json",
                   "manifests/vae_ltx.json"]


@pytest.mark.reference
@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_reference_parity(reference_dir, name):
    result = verify_file(reference_dir / name)
    assert result["ok"], result
    assert all(r < 1e-5 for r in result.get("rel", {}).values())


@pytest.mark.reference
@pytest.mark.parametrize("case", ["vae_wan21", "vae_ltx"])
def test_fixture_runner_fails_on_a_wrong_output(reference_dir, tmp_path, case):
    tensors = load_file(str(reference_dir / "fixtures" / f"{case}.safetensors"))
    name = next(k for k in tensors if k.startswith("output.decode"))
    tensors[name] = tensors[name] * (1 + 1e-4)
    save_file(tensors, str(tmp_path / f"{case}.safetensors"))
    shutil.copy(reference_dir / "fixtures" / f"{case}.json", tmp_path / f"{case}.json")
    result = verify_file(tmp_path / f"{case}.safetensors")
    assert not result["ok"] and result["rel"][name.removeprefix("output.")] > 1e-5


@pytest.mark.reference
@pytest.mark.parametrize("case, table, key", [
    ("vae_wan21", "params", "decoder.head.2.bias"),
    ("vae_ltx", "disk_params_diffusers_layout", "decoder.conv_out.conv.bias")])
def test_manifest_checker_fails_on_a_wrong_shape(reference_dir, tmp_path, case, table, key):
    manifest = json.loads((reference_dir / "manifests" / f"{case}.json").read_text())
    manifest[table][key][0] += 1
    (tmp_path / f"{case}.json").write_text(json.dumps(manifest))
    result = verify_file(tmp_path / f"{case}.json")
    assert not result["ok"] and key in " ".join(result["problems"])


# --- loading every layout ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    write_tiny_wan_vae(root, seed=1)
    write_tiny_ltx_vae(root, seed=2)
    return root


def _frames(t: int, height: int = 64, width: int = 96, seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, t, height, width, generator=g) * 2 - 1


def test_wan_layouts_load_the_same_weights(tiny_root, tmp_path):
    pth = tiny_root / "VAE_Wan" / "Wan2.1_VAE.pth"
    original = torch.load(pth, weights_only=True)
    assert "decoder.head.2.weight" in original and "encoder.downsamples.0.residual.2.weight" in original
    save_file(original, str(tmp_path / "wan_2.1_vae.safetensors"))  # ComfyUI: original names
    save_file({wan.KEYS.to_diffusers(k): v for k, v in original.items()}, str(tmp_path / "wan_diffusers.safetensors"))
    frames = _frames(5)
    expected = load_vae(pth).encode(frames)
    for path in (tiny_root, tiny_root / "VAE_Wan", tmp_path / "wan_2.1_vae.safetensors",
                 tmp_path / "wan_diffusers.safetensors"):
        vae = load_vae(path, variant="pro")
        assert isinstance(vae, wan.WanVAE) and not any(p.is_meta for p in vae.model.parameters())
        assert torch.equal(vae.encode(frames), expected), path


def test_ltx_layouts_load_the_same_weights(tiny_root, tmp_path):
    folder = tiny_root / "VAE_LTX"
    diffusers_state = load_file(str(folder / WEIGHTS_NAME))
    assert "latents_mean" in diffusers_state and "encoder.down_blocks.0.resnets.0.conv1.conv.weight" in diffusers_state
    shutil.copy(folder / WEIGHTS_NAME, tmp_path / "ltx_vae.safetensors")
    original = {ltx.KEYS.to_original(k): v for k, v in diffusers_state.items()}
    assert "decoder.up_blocks.4.norm3.norm.weight" in original and "mean_of_means" in original
    save_file(original, str(tmp_path / "ltx_original.safetensors"))
    # the original all-in-one LTX-Video file: `vae.` prefix, per_channel_statistics rows, other models' tensors
    renamed = {"mean_of_means": "per_channel_statistics.mean-of-means",
               "std_of_means": "per_channel_statistics.std-of-means"}
    all_in_one = {"vae." + renamed.get(k, k): v for k, v in original.items()}
    all_in_one.update({"vae.per_channel_statistics.channel": torch.arange(128.0),
                       "vae.per_channel_statistics.mean-of-stds": torch.ones(128),
                       "model.diffusion_model.proj_in.weight": torch.zeros(4, 4)})
    save_file(all_in_one, str(tmp_path / "ltx_all_in_one.safetensors"))
    frames = _frames(9)
    expected = load_vae(folder).decode(load_vae(folder).encode(frames))
    for path in (tiny_root, tmp_path / "ltx_vae.safetensors", tmp_path / "ltx_original.safetensors",
                 tmp_path / "ltx_all_in_one.safetensors"):
        vae = load_vae(path, variant="lite")
        assert isinstance(vae, ltx.LtxVAE) and not any(p.is_meta for p in vae.model.parameters())
        assert torch.equal(vae.decode(vae.encode(frames)), expected), path


def test_key_maps_are_one_to_one(tiny_root):
    original = list(torch.load(tiny_root / "VAE_Wan" / "Wan2.1_VAE.pth", weights_only=True))
    diffusers_keys = list(load_file(str(tiny_root / "VAE_LTX" / WEIGHTS_NAME)))
    for keys, to_other, back in ((original, wan.KEYS.to_diffusers, wan.KEYS.to_original),
                                 (diffusers_keys, ltx.KEYS.to_original, ltx.KEYS.to_diffusers)):
        other = [to_other(k) for k in keys]
        assert len(set(other)) == len(keys) and set(other) != set(keys)
        assert [back(k) for k in other] == keys


def test_bfloat16_loading_rounds_the_statistics_in_bfloat16(tiny_root):
    vae = load_vae(tiny_root, variant="pro", dtype=torch.bfloat16)
    mean, inv_std = vae.statistics()
    assert vae.dtype == torch.bfloat16 and inv_std.dtype == torch.bfloat16 and mean.dtype == torch.bfloat16
    assert torch.equal(inv_std.flatten(), 1.0 / torch.tensor(wan.LATENT_STD, dtype=torch.bfloat16))
    assert vae.encode(_frames(5)).dtype == torch.float32


# --- errors --------------------------------------------------------------------------------------------------------

def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("variant", ["lite", "pro"])
def test_the_wrapper_follows_its_network_when_a_host_moves_it(tiny_root, variant):
    """ComfyUI's ModelPatcher moves the network (.to) behind the wrapper's back: dtype, device and the latent
    statistics must follow, and encode/decode keep working."""
    vae = load_vae(tiny_root, variant=variant)
    frames = _frames(1 + vae.stride[0])
    before = vae.encode(frames)
    vae.model.to(torch.bfloat16)
    mean, spread = vae.statistics()
    assert vae.dtype == torch.bfloat16 and mean.dtype == spread.dtype == torch.bfloat16
    after = vae.encode(frames)
    assert after.dtype == torch.float32 and torch.allclose(after, before, atol=0.1, rtol=0.05)
    assert vae.decode(after).shape[2] == frames.shape[2]


def test_missing_and_truncated_files(tiny_root, tmp_path):
    with pytest.raises(CheckpointError, match="VAE not found.*Wan2.1_VAE.pth.*VAE_LTX"):
        load_vae(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(_truncate(tiny_root / "VAE_Wan" / "Wan2.1_VAE.pth", tmp_path / "Wan2.1_VAE.pth"))
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(_truncate(tiny_root / "VAE_LTX" / WEIGHTS_NAME, tmp_path / "ltx.safetensors"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors"):
        load_vae(tmp_path / "half")


def test_foreign_checkpoints(tmp_path):
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
               "encoder.down.0.block.0.conv1.weight": torch.zeros(8, 8, 3, 3),
               "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}, str(tmp_path / "sd_vae.safetensors"))
    with pytest.raises(CheckpointError, match="image VAE.*needs the Wan2.1 VAE"):
        load_vae(tmp_path / "sd_vae.safetensors")
    dit = write_tiny_dit(tmp_path, "pro") / WEIGHTS_NAME
    with pytest.raises(CheckpointError, match="diffusion model"):
        load_vae(dit)


def test_missing_unexpected_and_misshapen_keys_are_named(tiny_root, tmp_path):
    state = torch.load(tiny_root / "VAE_Wan" / "Wan2.1_VAE.pth", weights_only=True)
    broken = dict(state)
    del broken["decoder.head.2.bias"]
    broken["decoder.extra.weight"] = torch.zeros(1)
    broken["encoder.middle.1.proj.bias"] = torch.zeros(3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        load_vae(tmp_path / "broken.pth")
    message = str(info.value)
    assert "Wan2.1 VAE" in message and "missing keys: decoder.head.2.bias" in message
    assert "unexpected keys: decoder.extra.weight" in message and "encoder.middle.1.proj.bias: file [3]" in message


def test_wrong_variant_version_and_config(tiny_root, tmp_path):
    with pytest.raises(CheckpointError, match="holds both VAE_Wan and VAE_LTX"):
        load_vae(tiny_root)
    with pytest.raises(CheckpointError, match="is the LTX-Video 0.9.0 VAE.*pro variant needs the Wan2.1 VAE"):
        load_vae(tiny_root / "VAE_LTX", variant="pro")
    state = load_file(str(tiny_root / "VAE_LTX" / WEIGHTS_NAME))
    save_file({**state, "decoder.time_embedder.linear_1.weight": torch.zeros(2, 2)},
              str(tmp_path / "ltx_091.safetensors"))
    with pytest.raises(CheckpointError, match="0.9.1 or later"):
        load_vae(tmp_path / "ltx_091.safetensors")
    folder = shutil.copytree(tiny_root / "VAE_LTX", tmp_path / "VAE_LTX")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "decoder_causal": True}))
    with pytest.raises(CheckpointError, match="config.json says decoder_causal=True"):
        load_vae(folder)


def test_vae_must_match_the_model(tiny_root):
    wan_vae, ltx_vae = load_vae(tiny_root, variant="pro"), load_vae(tiny_root, variant="lite")
    check_vae_matches_model(wan_vae, PRO)
    check_vae_matches_model(ltx_vae, LITE)
    with pytest.raises(CheckpointError, match="lite model needs the LTX-Video 0.9.0 VAE.*loaded VAE is the Wan2.1"):
        check_vae_matches_model(wan_vae, LITE)
    with pytest.raises(CheckpointError, match="pro model needs the Wan2.1 VAE.*loaded VAE is the LTX"):
        check_vae_matches_model(ltx_vae, PRO)


# --- encode / decode -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, frames, latent", [("pro", 9, (2, 16, 3, 8, 12)), ("lite", 17, (2, 128, 3, 2, 3))])
def test_encode_decode_shapes(tiny_root, variant, frames, latent):
    vae = load_vae(tiny_root, variant=variant)
    clip = _frames(frames, batch=2)
    z = vae.encode(clip)
    assert z.shape == latent and z.dtype == torch.float32
    assert torch.allclose(z[1:], vae.encode(clip[1:]), atol=1e-5)  # batch items are independent
    out = vae.decode(z)
    assert out.shape == clip.shape and out.dtype == torch.float32
    if variant == "pro":
        assert out.abs().max() <= 1  # Wan clamps; LTX does not
    with pytest.raises(ValueError, match="frames must be 1 \\+ k"):
        vae.encode(clip[:, :, :frames - 1])
    with pytest.raises(ValueError, match=f"latents must be \\[B, {latent[1]}"):
        vae.decode(z[:, :4])


def test_ltx_deterministic_and_stochastic_encode(tiny_root):
    vae = load_vae(tiny_root, variant="lite")
    clip = _frames(9)
    mean = vae.encode(clip)
    assert torch.equal(mean, vae.encode(clip, generator=torch.Generator().manual_seed(1)))  # default: the mean
    vae.sample_posterior = True
    a = vae.encode(clip, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, vae.encode(clip, generator=torch.Generator().manual_seed(1)))
    assert rel_error(a, vae.encode(clip, generator=torch.Generator().manual_seed(2))) > 1e-2
    assert rel_error(a, mean) > 1e-2
    posterior = vae.posterior(clip)
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(1))
    official = vae.normalise(posterior.mean + torch.exp(0.5 * posterior.logvar.clamp(-30, 20)) * eps)
    assert torch.allclose(a, official, atol=1e-6)
    assert torch.allclose(vae.encode(clip, eps=eps), official, atol=1e-6)  # replay
    torch.manual_seed(3)
    b = vae.encode(clip)  # no generator: the global RNG, as the official code
    torch.manual_seed(3)
    assert torch.equal(b, vae.encode(clip))


# --- tiled decode --------------------------------------------------------------------------------------------------

def _local_chain(levels: list[int], seed: int = 0):
    """A spatially local network on [B, 4, T, h, w]: levels[i] random 3x3 convolutions at level i, a 2x nearest
    upsampling between levels."""
    g = torch.Generator().manual_seed(seed)
    weights = [[torch.randn(4, 4, 3, 3, generator=g) / 6 for _ in range(n)] for n in levels]

    def run(x):
        b, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        for i, level in enumerate(weights):
            if i:
                x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            for weight in level:
                x = torch.tanh(torch.nn.functional.conv2d(x, weight, padding=1))
        return x.reshape(b, t, c, *x.shape[-2:]).transpose(1, 2)

    return run


def _measured_radius(run, x: torch.Tensor, scale: int) -> int:
    """How far (in x's pixels) run's output changes when one pixel in the middle of x [B, C, T, h, w] changes."""
    h, w = x.shape[-2:]
    poked = x.clone()
    poked[..., h // 2, w // 2] += 1
    changed = (run(poked) - run(x)).abs().amax(dim=(0, 1, 2)) > 0
    rows, cols = (torch.nonzero(changed.any(dim=axis)).flatten() // scale for axis in (1, 0))
    return max(h // 2 - rows.min(), rows.max() - h // 2, w // 2 - cols.min(), cols.max() - w // 2).item()


@pytest.mark.parametrize("levels", [[1], [2, 1], [1, 2, 3], [0, 0, 3], [6, 7, 8], [3, 9]])
def test_halo_tiling_of_a_local_network_is_exact(levels):
    run = _local_chain(levels)
    radius = receptive_radius(levels)
    x = torch.randn(1, 4, 2, 2 * radius + 9, 2 * radius + 14, generator=torch.Generator().manual_seed(1))
    assert _measured_radius(run, x, 2 ** (len(levels) - 1)) == radius  # the formula is the true radius, not a bound
    full = run(x)
    for tile in (radius // 2 + 2, radius + 3):
        assert rel_error(halo_tiled(run, x, tile, radius), full) < 1e-6


@pytest.fixture(scope="module")
def released_depth_vaes(tiny_root):
    """Tiny channels, released block structure: the tiny Wan checkpoint (only its width is reduced) and an LTX VAE
    with the released resnets per block (4, 3, 3, 3, 4) (the tiny LTX checkpoint has one per block)."""
    return {"pro": load_vae(tiny_root, variant="pro"), "lite": random_ltx_vae(TINY_LTX_CHANNELS, seed=3)}


@pytest.mark.parametrize("variant, latent, halo", [("pro", (1, 16, 1, 14, 13), 12), ("lite", (1, 128, 2, 5, 5), 8)])
def test_the_halo_is_the_receptive_radius_of_the_tiled_half(released_depth_vaes, variant, latent, halo):
    """Measured on the network: one changed feature pixel moves the output exactly `halo` pixels away, and no further.
    The two halves together are diffusers' decode, bit for bit."""
    vae = released_depth_vaes[variant]
    z = torch.randn(latent, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = vae._decode_low_resolution(z)
        assert features.shape[-1] * vae.tiled_scale == z.shape[-1] * vae.stride[2]
        assert vae.halo() == halo and _measured_radius(vae._decode_high_resolution, features, vae.tiled_scale) == halo
        both = vae._decode_high_resolution(features)
        assert torch.equal(both.clamp(-1, 1) if vae.clamp_output else both, vae._decode_unnormalised(z))


# Several tiles in each direction, sizes no multiple of the tile, non-square; each side has tiles that do not reach
# across the frame, so the halo is really cut. Wan: 3 latent frames (feature chunks of 1, 2, 2 frames).
@pytest.mark.parametrize("variant, latent, tile_pixels, grid", [("pro", (1, 16, 3, 11, 14), 40, (3, 3)),
                                                                 ("lite", (1, 128, 2, 5, 7), 64, (3, 4))])
def test_tiled_decode_equals_untiled_and_is_bounded(released_depth_vaes, variant, latent, tile_pixels, grid):
    vae = released_depth_vaes[variant]
    z = torch.randn(latent, generator=torch.Generator().manual_seed(0))
    vae.tiling = False
    full = vae.decode(z)
    tiles = []
    high = vae._decode_high_resolution
    vae._decode_high_resolution = lambda features: tiles.append(tuple(features.shape[-2:])) or high(features)
    try:
        vae.tiling, vae.tile_pixels = True, tile_pixels
        tiled = vae.decode(z)
        assert tiled.shape == full.shape and tiled.dtype == torch.float32 and rel_error(tiled, full) < 1e-5
        # bounded: the high-resolution half never sees more than a tile core + the halo on both sides
        side = tile_pixels // vae.tiled_scale + 2 * vae.halo()
        height, width = (n * vae.stride[1] // vae.tiled_scale for n in latent[-2:])
        assert len(tiles) == grid[0] * grid[1] and all(h <= side and w <= side for h, w in tiles)
        assert min(h for h, _ in tiles) < height and min(w for _, w in tiles) < width
        tiles.clear()
        vae.tile_pixels = max(latent[-2:]) * vae.stride[1]
        assert torch.equal(vae.decode(z), full) and not tiles  # up to tile_pixels: decoded whole, as untiled
    finally:
        del vae._decode_high_resolution
        vae.tiling, vae.tile_pixels = True, TILE_PIXELS


def test_tiling_is_on_by_default(tiny_root):
    assert load_vae(tiny_root, variant="pro").tiling and load_vae(tiny_root, variant="lite").tiling
    assert not load_vae(tiny_root, variant="pro", tiling=False).tiling
