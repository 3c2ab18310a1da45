"""LoRAs on the DiT (flashhead_core.lora): the published key layouts (PEFT/diffusers lora_A/lora_B, kohya
lora_down/lora_up + alpha, ComfyUI's diffusion_model. prefix, diffusers' Wan module names, diff/diff_b), written by
hand here (peft is not a dependency), applied to the tiny DiT: its output equals the model whose weights were merged
by the formula W + strength * alpha / rank * up @ down. fp8-stored weights take the on-the-fly path."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from support import dit_flow, dit_inputs

from flashhead_core.checkpoint import load_dit
from flashhead_core.errors import FlashHeadError
from flashhead_core.lora import LoRAError, apply_loras, merged_state_dict, parse_lora, parse_lora_option, read_lora
from flashhead_core.testing.dit import write_tiny_dit

RANK = 4


@pytest.fixture(scope="module")
def tiny_pro(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_ckpt")
    write_tiny_dit(root, "pro", seed=3)
    return root / "Model_Pro"


# Released module names -> (out, in) of the tiny DiT (dim 128, ffn 256).
MODULES = {"blocks.0.self_attn.q": (128, 128), "blocks.1.cross_attn.o": (128, 128), "blocks.0.ffn.0": (256, 128),
           "blocks.1.ffn.2": (128, 256)}
DIFFUSERS = {"blocks.0.self_attn.q": "blocks.0.attn1.to_q", "blocks.1.cross_attn.o": "blocks.1.attn2.to_out.0",
             "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj", "blocks.1.ffn.2": "blocks.1.ffn.net.2"}


def _pairs(seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {m: (scale * torch.randn(o, RANK, generator=g), scale * torch.randn(RANK, i, generator=g))
            for m, (o, i) in MODULES.items()}


def lora_state_dict(fmt: str, pairs: dict, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A LoRA in one published layout."""
    sd = {}
    for module, (up, down) in pairs.items():
        if fmt == "kohya":
            stem = "lora_unet_" + module.replace(".", "_")
            sd |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
        else:
            stem = {"peft": f"base_model.model.{module}", "comfy": f"diffusion_model.{module}",
                    "diffusers": f"transformer.{DIFFUSERS[module]}", "plain": module}[fmt]
            sd |= {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up}
        if alpha is not None:
            sd[f"{stem}.alpha"] = torch.tensor(alpha)
    return sd


def _reference(path, loras, dtype=torch.float32):
    """The model with the merged weights (by the formula), loaded fresh."""
    model = load_dit(path, dtype=dtype)
    merged = merged_state_dict(model, loras)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in merged.items()})
    return model


@pytest.mark.parametrize("fmt", ["peft", "comfy", "diffusers", "kohya", "plain"])
def test_each_key_format_gives_the_merged_model(tiny_pro, fmt):
    pairs = _pairs()
    alpha = 2.0 if fmt in ("kohya", "comfy") else None
    model = load_dit(tiny_pro)
    lora = parse_lora(lora_state_dict(fmt, pairs, alpha), model, name=fmt, strength=0.7)
    assert set(lora.patches) == set(MODULES) and not lora.skipped
    inputs = dit_inputs(model)
    before = dit_flow(model, inputs)
    assert set(apply_loras(model, [lora]).values()) == {"merged"}
    # by hand: W + strength * alpha / rank * up @ down
    expected_q = load_dit(tiny_pro).blocks[0].self_attn.q.weight + \
        0.7 * (alpha / RANK if alpha else 1.0) * pairs["blocks.0.self_attn.q"][0] @ pairs["blocks.0.self_attn.q"][1]
    torch.testing.assert_close(model.blocks[0].self_attn.q.weight, expected_q)
    after = dit_flow(model, inputs)
    torch.testing.assert_close(after, dit_flow(_reference(tiny_pro, [lora]), inputs))
    assert not torch.allclose(after, before)


def test_formats_agree_and_loras_chain_with_their_strengths(tiny_pro, tmp_path):
    model = load_dit(tiny_pro)
    kohya = parse_lora(lora_state_dict("kohya", _pairs(), alpha=RANK), model, strength=1.0)
    peft = parse_lora(lora_state_dict("peft", _pairs()), model, strength=1.0)
    for module in MODULES:
        torch.testing.assert_close(kohya.patches[module].up, peft.patches[module].up)
        assert kohya.patches[module].lora_scale() == peft.patches[module].lora_scale() == 1.0
    save_file(lora_state_dict("comfy", _pairs(seed=1), alpha=8.0), str(tmp_path / "a.safetensors"))
    save_file(lora_state_dict("kohya", _pairs(seed=2)), str(tmp_path / "b.safetensors"))
    loras = [read_lora(tmp_path / "a.safetensors", model, 0.5), read_lora(tmp_path / "b.safetensors", model, -1.0)]
    inputs = dit_inputs(model)
    reference = dit_flow(_reference(tiny_pro, loras), inputs)
    apply_loras(model, loras)
    torch.testing.assert_close(dit_flow(model, inputs), reference)


def test_strength_zero_changes_nothing(tiny_pro):
    model = load_dit(tiny_pro)
    inputs = dit_inputs(model)
    before = dit_flow(model, inputs)
    apply_loras(model, [parse_lora(lora_state_dict("peft", _pairs()), model, strength=0.0)])
    torch.testing.assert_close(dit_flow(model, inputs), before, rtol=0, atol=0)


def test_full_deltas_diff_and_diff_b(tiny_pro):
    model = load_dit(tiny_pro)
    g = torch.Generator().manual_seed(5)
    sd = {"diffusion_model.blocks.0.norm3.diff": 0.1 * torch.randn(128, generator=g),
          "diffusion_model.blocks.0.self_attn.k.diff": 0.01 * torch.randn(128, 128, generator=g),
          "diffusion_model.blocks.0.self_attn.k.diff_b": 0.01 * torch.randn(128, generator=g)}
    lora = parse_lora(sd, model, strength=0.5)
    inputs = dit_inputs(model)
    reference = dit_flow(_reference(tiny_pro, [lora]), inputs)
    apply_loras(model, [lora])
    torch.testing.assert_close(dit_flow(model, inputs), reference)


@pytest.mark.parametrize("weight_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_weights_take_the_lora_on_the_fly(tiny_pro, weight_dtype):
    """fp8-stored Linear weights are not merged (the delta would round away in 3 mantissa bits): a forward hook adds
    the low-rank path. The output equals the model whose weights are the dequantised fp8 values plus the delta,
    in float32."""
    pairs = _pairs(scale=0.02)
    model = load_dit(tiny_pro, dtype=torch.float32, weight_dtype=weight_dtype)
    stored = model.blocks[0].self_attn.q.weight.clone()
    lora = parse_lora(lora_state_dict("comfy", pairs, alpha=2.0), model, strength=0.8)
    assert set(apply_loras(model, [lora]).values()) == {"on the fly"}
    assert torch.equal(model.blocks[0].self_attn.q.weight.view(torch.uint8), stored.view(torch.uint8))
    reference = load_dit(tiny_pro, dtype=torch.float32)
    dequantised = {k: v.float() for k, v in model.state_dict().items()}
    reference.load_state_dict(dequantised)
    reference.load_state_dict({k: v for k, v in merged_state_dict(reference, [lora]).items()})
    inputs = dit_inputs(model)
    torch.testing.assert_close(dit_flow(model, inputs), dit_flow(reference, inputs), rtol=1e-4, atol=1e-5)


def test_skippable_wan_modules_are_listed_not_applied(tiny_pro):
    model = load_dit(tiny_pro)
    sd = lora_state_dict("comfy", _pairs()) | {
        "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": torch.zeros(RANK, 128),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_B.weight": torch.zeros(128, RANK),
        "diffusion_model.text_embedding.0.lora_A.weight": torch.zeros(RANK, 4096),
        "diffusion_model.img_emb.proj.1.lora_A.weight": torch.zeros(RANK, 1280),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(RANK, 8)}
    lora = parse_lora(sd, model)
    assert set(lora.patches) == set(MODULES) and len(lora.skipped) == 5


def test_a_lora_for_another_model_is_refused_with_the_keys_named(tiny_pro, tmp_path):
    model = load_dit(tiny_pro)
    with pytest.raises(LoRAError, match="match no layer.*down_blocks_0_attn"):  # an SD LoRA
        parse_lora({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
                    "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4)}, model)
    wide = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, 5120),
            "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(5120, RANK)}
    with pytest.raises(LoRAError, match="another model.*5120"):  # Wan 14B
        parse_lora(wide, model)
    with pytest.raises(LoRAError, match="none of its"):
        parse_lora({"diffusion_model.img_emb.proj.1.lora_A.weight": torch.zeros(RANK, 1280)}, model)
    with pytest.raises(LoRAError, match="one half"):
        parse_lora({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, 128)}, model)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoRAError, match="not a readable"):
        read_lora(tmp_path / "bad.safetensors", model)
    with pytest.raises(LoRAError, match="not found"):
        read_lora(tmp_path / "missing.safetensors", model)
    with pytest.raises(FlashHeadError, match="strength"):
        parse_lora(lora_state_dict("peft", _pairs()), model, strength=float("nan"))


def test_cli_option_parsing():
    assert parse_lora_option("style.safetensors:0.8") == ("style.safetensors", 0.8)
    assert parse_lora_option("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_option("C:\\loras\\a.safetensors") == ("C:\\loras\\a.safetensors", 1.0)
    assert parse_lora_option("C:\\loras\\a.safetensors:-0.5") == ("C:\\loras\\a.safetensors", -0.5)


def test_cli_lora(tmp_path, capsys, caplog):
    from flashhead_core.testing import write_tiny_checkpoint
    from flashhead_core.testing.media import synthetic_portrait, synthetic_speech, write_wav
    from flashhead_core.tools.cli import main

    root = write_tiny_checkpoint(tmp_path / "ckpt", "pro")
    image = synthetic_portrait(tmp_path / "face.png", 96)
    wav = write_wav(tmp_path / "s.wav", synthetic_speech(0.5))
    save_file(lora_state_dict("kohya", _pairs(), alpha=2.0), str(tmp_path / "k.safetensors"))
    save_file(lora_state_dict("comfy", _pairs(seed=1)) | {
        "diffusion_model.img_emb.proj.1.lora_A.weight": torch.zeros(RANK, 8)}, str(tmp_path / "c.safetensors"))
    base = ["generate", "--checkpoint", str(root), "--image", str(image), "--audio", str(wav), "--size", "64x64",
            "--device", "cpu"]
    with caplog.at_level(logging.WARNING):
        assert main(base + ["--out", str(tmp_path / "a.mp4"), "--lora", f"{tmp_path / 'k.safetensors'}:0.5",
                            "--lora", str(tmp_path / "c.safetensors")]) == 0
    # said once: on stderr, not again as a log record (which a plain process prints to stderr too)
    said = capsys.readouterr().err + "".join(record.getMessage() for record in caplog.records)
    assert (tmp_path / "a.mp4").is_file() and said.count("skipped 1 keys") == 1, said
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, str(tmp_path / "sd.safetensors"))
    assert main(base + ["--out", str(tmp_path / "b.mp4"), "--lora", str(tmp_path / "sd.safetensors")]) == 1
    assert "match no layer" in capsys.readouterr().err and not (tmp_path / "b.mp4").exists()


# --- every naming of the non-block modules; modules FlashHead lacks; a refused LoRA changes nothing ---------------

def _low_rank(model, module: str, seed: int, rank: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in]) for one of the model's Linear layers."""
    out_features, in_features = dict(model.named_modules())[module].weight.shape
    g = torch.Generator().manual_seed(seed)
    return 0.03 * torch.randn(out_features, rank, generator=g), 0.03 * torch.randn(rank, in_features, generator=g)


# Wan name -> its diffusers WanTransformer3DModel name, outside the blocks and inside (norm2 there is Wan's norm3).
NON_BLOCK = {"time_embedding.0": "condition_embedder.time_embedder.linear_1",
             "time_embedding.2": "condition_embedder.time_embedder.linear_2",
             "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out"}


def _kohya(key: str) -> str:
    """'blocks.0.attn1.to_q.lora_down.weight' -> 'lora_unet_blocks_0_attn1_to_q.lora_down.weight'."""
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha", ".diff_b", ".diff"):
        if key.endswith(suffix):
            return "lora_unet_" + key[: -len(suffix)].replace(".", "_") + suffix
    raise AssertionError(key)


@pytest.mark.parametrize("naming", ["diffusers", "kohya of diffusers"])
def test_diffusers_names_outside_the_blocks_reach_the_same_layers(tiny_pro, naming):
    """proj_out, the time embedder and time_proj in diffusers names (dotted, or kohya's lora_unet_ + '_') give the
    model the same LoRA gives in Wan names; the cross-attention norm is norm2 in diffusers and norm3 in Wan."""
    model = load_dit(tiny_pro)
    pairs = {wan: _low_rank(model, wan, seed) for seed, wan in enumerate(NON_BLOCK)}
    norm_delta = 0.2 * torch.randn(128, generator=torch.Generator().manual_seed(9))
    wan_sd = {"diffusion_model.blocks.1.norm3.diff": norm_delta}
    theirs = {"blocks.1.norm2.diff": norm_delta}
    for wan, (up, down) in pairs.items():
        wan_sd |= {f"diffusion_model.{wan}.lora_down.weight": down, f"diffusion_model.{wan}.lora_up.weight": up,
                   f"diffusion_model.{wan}.alpha": torch.tensor(6.0)}
        theirs |= {f"{NON_BLOCK[wan]}.lora_down.weight": down, f"{NON_BLOCK[wan]}.lora_up.weight": up,
                   f"{NON_BLOCK[wan]}.alpha": torch.tensor(6.0)}
    prefix = "transformer." if naming == "diffusers" else ""
    theirs = {_kohya(k) if naming.startswith("kohya") else prefix + k: v for k, v in theirs.items()}
    reference = parse_lora(wan_sd, model, name="wan", strength=0.9)
    lora = parse_lora(theirs, model, name=naming, strength=0.9)
    assert set(lora.patches) == set(reference.patches) == set(NON_BLOCK) | {"blocks.1.norm3"}
    assert not lora.skipped
    inputs = dit_inputs(model)
    expected = dit_flow(_reference(tiny_pro, [reference]), inputs)
    apply_loras(model, [lora])
    torch.testing.assert_close(dit_flow(model, inputs), expected)


def test_modules_flashhead_lacks_are_skipped_in_every_naming(tiny_pro):
    """The text and image embedders and the I2V image keys of cross-attention, in diffusers and kohya names as well
    as Wan's, are skipped and listed; the rest of the LoRA applies."""
    model = load_dit(tiny_pro)
    up, down = _low_rank(model, "blocks.1.self_attn.v", seed=4)
    wanted = {"transformer.blocks.1.attn1.to_v.lora_A.weight": down, "transformer.blocks.1.attn1.to_v.lora_B.weight": up}
    z = torch.zeros
    lacked = {
        # diffusers
        "transformer.condition_embedder.text_embedder.linear_1.lora_A.weight": z(3, 4096),
        "transformer.condition_embedder.text_embedder.linear_2.lora_B.weight": z(128, 3),
        "transformer.condition_embedder.image_embedder.ff.net.0.proj.lora_A.weight": z(3, 1280),
        "transformer.condition_embedder.image_embedder.norm2.diff": z(128),
        "transformer.blocks.0.attn2.add_k_proj.lora_A.weight": z(3, 128),
        "transformer.blocks.0.attn2.add_v_proj.lora_B.weight": z(128, 3),
        "transformer.blocks.1.attn2.norm_added_k.diff": z(128),
        # kohya, in Wan and in diffusers names
        "lora_unet_text_embedding_0.lora_down.weight": z(3, 4096),
        "lora_unet_text_embedding_0.alpha": torch.tensor(3.0),
        "lora_unet_img_emb_proj_1.lora_up.weight": z(128, 3),
        "lora_unet_blocks_1_cross_attn_k_img.lora_down.weight": z(3, 128),
        "lora_unet_blocks_0_cross_attn_norm_k_img.diff": z(128),
        "lora_unet_blocks_0_attn2_add_v_proj.lora_down.weight": z(3, 128),
        "lora_unet_condition_embedder_image_embedder_ff_net_2.lora_up.weight": z(128, 3),
        # the text encoder
        "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": z(3, 8),
    }
    lora = parse_lora(wanted | lacked, model, name="i2v")
    assert set(lora.patches) == {"blocks.1.self_attn.v"}
    assert sorted(lora.skipped) == sorted(lacked)


def test_a_lora_names_its_foreign_keys_without_calling_itself_not_wan(tiny_pro):
    model = load_dit(tiny_pro)
    with pytest.raises(LoRAError, match=r"1 of its 3 keys.*lora_unet_input_blocks_1_proj_in") as refused:
        parse_lora(lora_state_dict("kohya", {"blocks.0.ffn.0": _low_rank(model, "blocks.0.ffn.0", 1)}) |
                   {"lora_unet_input_blocks_1_proj_in.lora_down.weight": torch.zeros(3, 8)}, model, name="mixed")
    assert "not a LoRA for a Wan" not in str(refused.value)


def test_a_refused_lora_leaves_the_model_as_it_was(tiny_pro):
    """fp8-stored blocks: the first LoRA would hook two Linears and merge a bias delta, the second holds a full delta
    (.diff) for an fp8 weight, which cannot be applied. apply_loras refuses before it changes anything: the same
    tensors, no forward hook, the same output."""
    model = load_dit(tiny_pro, weight_dtype=torch.float8_e5m2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = dit_inputs(model)
    before = dit_flow(model, inputs)
    first_sd = {"blocks.0.cross_attn.q.diff_b": torch.full((128,), 0.25)}
    for module in ("blocks.0.self_attn.q", "blocks.1.ffn.2"):
        up, down = _low_rank(model, module, seed=len(module))
        first_sd |= {f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up}
    first = parse_lora(first_sd, model, name="first")
    second = parse_lora({"diffusion_model.blocks.1.self_attn.k.diff": torch.full((128, 128), 1e-3)}, model,
                        name="second")
    with pytest.raises(LoRAError, match="second: blocks.1.self_attn.k is stored in fp8.*weight_dtype default"):
        apply_loras(model, [first, second])
    after = model.state_dict()
    assert all(torch.equal(after[k].view(torch.uint8), v.view(torch.uint8)) if v.dtype.itemsize == 1 else
               torch.equal(after[k], v) for k, v in state.items())
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(dit_flow(model, inputs), before)
    assert set(apply_loras(model, [first]).values()) == {"on the fly"}  # the first alone applies
    assert not torch.equal(dit_flow(model, inputs), before)
