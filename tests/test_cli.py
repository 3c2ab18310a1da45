"""The `flashhead` command line (flashhead_core.tools.cli): what a user types reaches the core as meant. fp8 weight
storage with a LoRA (applied on the fly), the skipped-keys warning said once, and a face box with a negative corner
typed with a space. The subcommands' own behaviour is tested with their modules (test_lora, test_face, test_serve)."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech, write_wav
from flashhead_core.tools import cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    return {"root": write_tiny_checkpoint(folder / "ckpt", "lite", seed=2),
            "image": synthetic_portrait(folder / "portrait.png", 80),
            "audio": write_wav(folder / "speech.wav", synthetic_speech(0.4, seed=5))}


def _generate(inputs, out, *extra) -> list[str]:
    return ["generate", "--checkpoint", str(inputs["root"]), "--image", str(inputs["image"]), "--audio",
            str(inputs["audio"]), "--size", "64x64", "--device", "cpu", "--out", str(out), *extra]


def test_fp8_weights_with_a_lora_and_one_warning_for_its_skipped_keys(inputs, tmp_path, monkeypatch, capsys, caplog):
    """--weight-dtype fp8_e5m2 stores the blocks' Linear weights in fp8 and the LoRA runs beside them (not merged:
    the stored weights stay as loaded); the keys for modules FlashHead lacks are reported once, on stderr."""
    g = torch.Generator().manual_seed(8)
    save_file({"diffusion_model.blocks.0.self_attn.o.lora_down.weight": 0.1 * torch.randn(2, 128, generator=g),
               "diffusion_model.blocks.0.self_attn.o.lora_up.weight": 0.1 * torch.randn(128, 2, generator=g),
               "diffusion_model.text_embedding.2.lora_down.weight": torch.zeros(2, 128),
               "diffusion_model.text_embedding.2.lora_up.weight": torch.zeros(128, 2)}, str(tmp_path / "l.safetensors"))
    loaded = []
    real_load = cli.load_pipeline
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    with caplog.at_level(logging.WARNING):
        assert cli.main(_generate(inputs, tmp_path / "fp8.mp4", "--weight-dtype", "fp8_e5m2",
                                  "--lora", f"{tmp_path / 'l.safetensors'}:0.6")) == 0
    assert (tmp_path / "fp8.mp4").is_file()
    layer = loaded[0].model.blocks[0].self_attn.o
    assert layer.weight.dtype == torch.float8_e5m2 and layer._forward_hooks  # the LoRA on the fly
    assert loaded[0].model.blocks[0].norm3.weight.dtype == torch.float32  # only the blocks' Linears are fp8
    said = capsys.readouterr().err + "".join(record.getMessage() for record in caplog.records)
    assert said.count("skipped 2 keys") == 1, said


def test_a_face_box_with_a_negative_corner_needs_no_equals_sign(inputs, tmp_path, capsys):
    """'--face-box -40,...' is the box's value, not an unknown option (argparse alone exits 2 with its usage)."""
    # the box reaches the face crop, which says what is wrong with it (before any model loads), not argparse's usage
    argv = _generate(inputs, tmp_path / "a.mp4", "--face-box", "-40,10,50,50")
    argv[argv.index("--checkpoint") + 1] = str(tmp_path / "missing")
    assert cli.main(argv) == cli.EXIT_ERROR
    assert "the face box (x=-40, y=10, width=50, height=50) lies outside the 80x80 portrait" in capsys.readouterr().err
    args = cli.parse_args(_generate(inputs, tmp_path / "a.mp4", "--face-box", "-4,-2.5,60,60"))
    assert args.face_box == "-4,-2.5,60,60"
    assert cli.parse_args(_generate(inputs, tmp_path / "a.mp4", "--face-box=-4,0,60,60")).face_box == "-4,0,60,60"
    with pytest.raises(SystemExit):  # a missing value is still argparse's to report
        cli.parse_args(_generate(inputs, tmp_path / "a.mp4", "--face-box"))
