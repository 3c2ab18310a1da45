"""The VAEs: reference parity, every accepted file layout, clear errors, model pairing, tiling, LTX encode modes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashhead_core.checkpoint import WEIGHTS_NAME, CheckpointError
from flashhead_core.config import LITE, PRO
from flashhead_core.tiny import write_tiny_dit
from flashhead_core.tiny_vae import write_tiny_ltx_vae, write_tiny_wan_vae
from flashhead_core.vae import TILE_PIXELS, check_vae_matches_model, load_vae, tiled_decode
from flashhead_core.vae import ltx, wan
from flashhead_core.verify import rel_error, verify_file

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
    assert vae.dtype == torch.bfloat16 and vae.inv_std.dtype == torch.bfloat16
    assert torch.equal(vae.inv_std.flatten(), 1.0 / torch.tensor(wan.LATENT_STD, dtype=torch.bfloat16))
    assert vae.encode(_frames(5)).dtype == torch.float32


# --- errors --------------------------------------------------------------------------------------------------------

def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


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

def test_tiled_decode_blends_a_local_decoder_exactly():
    def decode(z):  # a purely local "decoder": each latent pixel becomes an 8x8 block
        return z[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2)

    z = torch.randn(1, 4, 2, 150, 170)
    assert torch.allclose(tiled_decode(decode, z, 8), decode(z), atol=1e-6)


# Tiling is approximate (tiles see zero padding, Wan's mid-block attention sees one tile). With these random tiny
# weights the error is ~0.03 (Wan) and ~0.13 (LTX); a misplaced or mis-weighted tile gives ~1.
@pytest.mark.parametrize("variant, limit", [("pro", 0.05), ("lite", 0.3)])
def test_tiled_decode_is_bounded_and_close_to_untiled(tiny_root, variant, limit):
    vae = load_vae(tiny_root, variant=variant)
    s = vae.stride[1]
    z = torch.randn(1, vae.latent_channels, 1, 640 // s, 576 // s, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    tile_sizes = []
    decode = vae._decode_unnormalised
    vae._decode_unnormalised = lambda part: tile_sizes.append(part.shape[-2:]) or decode(part)
    vae.tiling = True
    tiled = vae.decode(z)
    assert len(tile_sizes) == 4 and max(max(size) for size in tile_sizes) * s <= TILE_PIXELS
    assert tiled.shape == full.shape and rel_error(tiled, full) < limit
    tile_sizes.clear()
    vae.decode(z[..., : 512 // s, : 512 // s])
    assert tile_sizes == [(512 // s, 512 // s)]  # 512x512 is decoded whole, exactly as untiled
