"""The DiT, its attention backends and checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import dit_flow, dit_inputs

from flashhead_core.attention import attention, available_backends, resolve_backend
from flashhead_core.checkpoint import load_dit
from flashhead_core.config import LITE, PRO
from flashhead_core.errors import AttentionBackendError, CheckpointError
from flashhead_core.model import apply_rope, rope_table
from flashhead_core.testing.dit import write_tiny_dit
from flashhead_core.tools.cli import main as cli_main
from flashhead_core.tools.parity import verify_file

# --- reference parity ----------------------------------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("name", ["fixtures/dit_forward_wan.safetensors", "fixtures/dit_forward_ltx.safetensors",
                                  "manifests/dit_lite.json", "manifests/dit_pro.json"])
def test_reference_parity(reference_dir, name):
    result = verify_file(reference_dir / name)
    assert result["ok"], result
    if "rel" in result:
        assert all(r < 1e-5 for r in result["rel"].values())


def test_verify_rejects_unknown_case(tmp_path, capsys):
    save_file({"input.x": torch.zeros(2)}, str(tmp_path / "mystery.safetensors"))
    (tmp_path / "mystery.json").write_text(json.dumps({"case": "mystery"}))
    assert cli_main(["verify", str(tmp_path / "mystery.safetensors")]) == 1
    line = json.loads(capsys.readouterr().out.strip())
    assert line["ok"] is False and "unknown fixture case 'mystery'" in line["error"]


# --- presets -------------------------------------------------------------------------------------------------------

def test_presets():
    assert (LITE.in_dim, LITE.out_dim, LITE.patch_size, LITE.vae_stride) == (256, 128, (1, 1, 1), (8, 32, 32))
    assert (PRO.in_dim, PRO.out_dim, PRO.patch_size, PRO.vae_stride) == (32, 16, (1, 2, 2), (4, 8, 8))
    for c in (LITE, PRO):
        assert (c.dim, c.num_layers, c.num_heads, c.ffn_dim) == (1536, 30, 12, 8960)
    assert (PRO.motion_frames, PRO.new_frames, PRO.spatial_multiple) == (5, 28, 16)
    assert (LITE.motion_frames, LITE.new_frames, LITE.spatial_multiple) == (9, 24, 32)


# --- loading -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    write_tiny_dit(root, "lite", seed=1)
    write_tiny_dit(root, "pro", seed=2)
    return root


@pytest.mark.parametrize("variant", ["lite", "pro"])
def test_folder_and_root_load_and_forward(tiny_root, variant):
    model = load_dit(tiny_root / f"Model_{variant.capitalize()}")
    assert model.config.variant == variant
    assert not any(p.is_meta for p in model.parameters())
    saved = load_file(str(tiny_root / f"Model_{variant.capitalize()}" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(model.state_dict()["blocks.1.ffn.2.weight"], saved["blocks.1.ffn.2.weight"])
    inputs = dit_inputs(model)
    flow = dit_flow(model, inputs)
    assert flow.shape == inputs[0].shape and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    torch.testing.assert_close(flow, dit_flow(load_dit(tiny_root, variant=variant), inputs), rtol=1e-6, atol=1e-6)


def test_root_with_both_variants_needs_a_choice(tiny_root):
    with pytest.raises(CheckpointError, match="both Model_Lite and Model_Pro"):
        load_dit(tiny_root)


def test_wrong_variant_is_named(tiny_root):
    with pytest.raises(CheckpointError, match="is a FlashHead lite model, but pro was asked for"):
        load_dit(tiny_root / "Model_Lite", variant="pro")


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_stored_dtype_is_cast_to_compute_dtype(tmp_path, tiny_root, stored):
    folder = write_tiny_dit(tmp_path, "pro", seed=2, dtype=stored)
    model = load_dit(folder, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = load_dit(tiny_root / "Model_Pro")
    inputs = dit_inputs(model)
    rel = (dit_flow(model, inputs) - dit_flow(reference, inputs)).norm() / dit_flow(reference, inputs).norm()
    assert rel < (1e-2 if stored == torch.bfloat16 else 2e-3)


def test_sharded_folder(tmp_path, tiny_root):
    folder = write_tiny_dit(tmp_path, "lite", seed=1, shards=3)
    assert len(list(folder.glob("*.safetensors"))) == 3
    sharded, reference = load_dit(folder).state_dict(), load_dit(tiny_root / "Model_Lite").state_dict()
    assert sharded.keys() == reference.keys()
    assert all(torch.equal(sharded[k], reference[k]) for k in reference)


def test_single_file_infers_config(tmp_path, tiny_root):
    single = tmp_path / "flashhead_lite.safetensors"
    single.write_bytes((tiny_root / "Model_Lite" / "diffusion_pytorch_model.safetensors").read_bytes())
    model = load_dit(single)
    folder_model = load_dit(tiny_root / "Model_Lite")
    assert model.config == folder_model.config
    inputs = dit_inputs(model)
    torch.testing.assert_close(dit_flow(model, inputs), dit_flow(folder_model, inputs), rtol=1e-6, atol=1e-6)


def test_bf16_compute_is_close_to_float32(tiny_root):
    fp32 = load_dit(tiny_root / "Model_Pro")
    bf16 = load_dit(tiny_root / "Model_Pro", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    inputs = dit_inputs(fp32)
    a, b = dit_flow(fp32, inputs), dit_flow(bf16, inputs)
    assert b.dtype == torch.float32
    assert 0 < (a - b).norm() / a.norm() < 5e-2


def _copy_with(tmp_path, tiny_root, edit):
    folder = tmp_path / "Model_Pro"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_root / "Model_Pro" / "config.json").read_text())
    state = load_file(str(tiny_root / "Model_Pro" / "diffusion_pytorch_model.safetensors"))
    edit(state)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_missing_key_is_named(tmp_path, tiny_root):
    folder = _copy_with(tmp_path, tiny_root, lambda s: s.pop("blocks.1.cross_attn.norm_k.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.cross_attn\.norm_k\.weight"):
        load_dit(folder)


def test_unexpected_key_is_named(tmp_path, tiny_root):
    folder = _copy_with(tmp_path, tiny_root, lambda s: s.update({"img_emb.proj.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: img_emb\.proj\.weight"):
        load_dit(folder)


def test_unused_released_keys_are_accepted(tiny_root):
    keys = load_file(str(tiny_root / "Model_Pro" / "diffusion_pytorch_model.safetensors")).keys()
    assert any(k.startswith("text_embedding.") for k in keys) and any(k.startswith("audio_emb.") for k in keys)
    load_dit(tiny_root / "Model_Pro")  # does not raise


def test_config_json_disagreeing_with_weights(tmp_path, tiny_root):
    folder = _copy_with(tmp_path, tiny_root, lambda s: None)
    config = json.loads((folder / "config.json").read_text())
    config["ffn_dim"] = 999
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json says ffn_dim=999 but the weights have ffn_dim=256"):
        load_dit(folder)


def test_truncated_file(tmp_path, tiny_root):
    data = (tiny_root / "Model_Pro" / "diffusion_pytorch_model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dit(truncated)


def test_foreign_checkpoint(tmp_path):
    foreign = tmp_path / "sd_vae.safetensors"
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(4, 3, 3, 3),
               "decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a FlashHead DiT checkpoint: missing patch_embedding.weight"):
        load_dit(foreign)


def test_missing_path_and_wrong_suffix(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_dit(tmp_path / "nope")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a .safetensors file"):
        load_dit(tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="no FlashHead model in"):
        load_dit(tmp_path)


# --- attention and RoPE --------------------------------------------------------------------------------------------

def test_cpu_backends_and_errors():
    assert available_backends("cpu") == ["sdpa"]
    assert resolve_backend("auto", "cpu") == "sdpa"
    with pytest.raises(AttentionBackendError, match="not available on cpu; available: sdpa"):
        resolve_backend("flash_attn_2", "cpu")
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'xformers'.*available on cpu: sdpa"):
        resolve_backend("xformers", "cpu")


def test_sdpa_matches_softmax_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 16, generator=g) for _ in range(3))
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 4.0
    expected = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)
    torch.testing.assert_close(attention(q, k, v, "sdpa"), expected, rtol=1e-5, atol=1e-5)


def test_rope_table_layout():
    cos, sin = rope_table((2, 3, 4), 128, torch.device("cpu"))
    assert cos.shape == (24, 1, 64)
    assert torch.equal(cos[0], torch.ones(1, 64)) and torch.equal(sin[0], torch.zeros(1, 64))
    # token (t=1, h=0, w=0): only the 22 time pairs turn, pair j by 10000^(-j/22)
    angles = torch.atan2(sin[12, 0], cos[12, 0]).double()
    expected = torch.pow(10000.0, -torch.arange(22, dtype=torch.float64) / 22)
    torch.testing.assert_close(angles[:22], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(angles[22:], torch.zeros(42, dtype=torch.float64))
    x = torch.randn(1, 24, 2, 128)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
