"""Loading the DiT (flashhead_core.checkpoint) as hosts need it: single files saved by ComfyUI (key prefixes), the
attention backend chosen for the device the model will compute on, and the scaled fp8 check a host asks before it
picks its layers. The layouts of the released folders are tested in test_dit.py, fp8 storage in test_layers.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import dit_flow, dit_inputs

from flashhead_core import attention as attention_module
from flashhead_core.checkpoint import is_scaled_fp8, load_dit
from flashhead_core.errors import AttentionBackendError, CheckpointError
from flashhead_core.release import WEIGHTS_NAME
from flashhead_core.testing.dit import write_tiny_dit


@pytest.fixture(scope="module")
def tiny_lite(tmp_path_factory):
    return write_tiny_dit(tmp_path_factory.mktemp("checkpoint"), "lite", seed=11)


def _prefixed_file(folder, path, prefix: str, extra: dict[str, torch.Tensor] | None = None):
    """The folder's weights as one file with every key under `prefix`, plus `extra` keys as they are."""
    state = {prefix + k: v for k, v in load_file(str(folder / WEIGHTS_NAME)).items()} | (extra or {})
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model."])
def test_a_single_file_saved_by_comfyui_loads_with_its_prefix(tiny_lite, tmp_path, prefix):
    """ComfyUI writes a DiT's keys under model.diffusion_model. (a saved checkpoint, with its VAE's keys beside
    them) or diffusion_model.: the same model as the released folder."""
    vae_key = {"first_stage_model.decoder.conv_in.weight": torch.ones(4, 4)}
    single = _prefixed_file(tiny_lite, tmp_path / "saved.safetensors", prefix, vae_key)
    model, released = load_dit(single), load_dit(tiny_lite)
    assert model.config == released.config
    inputs = dit_inputs(model)
    assert torch.equal(dit_flow(model, inputs), dit_flow(released, inputs))
    assert not is_scaled_fp8(single)


def test_a_file_of_another_model_is_still_refused(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)},
              str(tmp_path / "sd15.safetensors"))
    with pytest.raises(CheckpointError, match="not a FlashHead DiT checkpoint: missing patch_embedding.weight"):
        load_dit(tmp_path / "sd15.safetensors")


def test_scaled_fp8_is_told_by_a_public_check(tiny_lite, tmp_path):
    """is_scaled_fp8 answers for a file (prefixed or not), a state dict and a released folder, from the headers."""
    state = load_file(str(tiny_lite / WEIGHTS_NAME))
    q = state["blocks.1.self_attn.q.weight"]
    scale = q.abs().max() / 448
    scaled = state | {"blocks.1.self_attn.q.weight": (q / scale).to(torch.float8_e4m3fn),
                      "blocks.1.self_attn.q.scale_weight": scale.float(),
                      "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    save_file({f"model.diffusion_model.{k}": v for k, v in scaled.items()}, str(tmp_path / "scaled.safetensors"))
    assert is_scaled_fp8(tmp_path / "scaled.safetensors")
    assert is_scaled_fp8(scaled) and not is_scaled_fp8(state)
    assert not is_scaled_fp8(tiny_lite) and not is_scaled_fp8(tiny_lite.parent, variant="lite")
    model = load_dit(tmp_path / "scaled.safetensors")  # loads as stored, under its prefix too
    assert model.blocks[1].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(model.blocks[1].self_attn.q.scale_weight, scale.float())
    with pytest.raises(CheckpointError, match="not found"):
        is_scaled_fp8(tmp_path / "missing.safetensors")


@pytest.fixture
def gpu_kernels(monkeypatch):
    """Pretend flash-attn 2 is installed for CUDA devices (this machine need not have one)."""
    monkeypatch.setattr(attention_module, "available_backends",
                        lambda device: ["sdpa", "flash_attn_2"] if torch.device(device).type == "cuda" else ["sdpa"])


def test_attention_is_chosen_for_the_device_the_model_computes_on(tiny_lite, gpu_kernels):
    """A host loads the weights on its offload device (CPU) and runs them on the GPU: load_dit takes the backend
    and that device, and the model comes back with the backend set (nothing to patch afterwards)."""
    model = load_dit(tiny_lite, device="cpu", execution_device="cuda", attention="flash_attn_2")
    assert model.attention_backend == "flash_attn_2" and model.blocks[0].self_attn.q.weight.device.type == "cpu"
    assert load_dit(tiny_lite, device="cpu", execution_device="cuda:0").attention_backend == "flash_attn_2"  # auto
    assert load_dit(tiny_lite, device="cpu").attention_backend == "sdpa"
    with pytest.raises(AttentionBackendError, match="'flash_attn_2' is not available on cpu"):
        load_dit(tiny_lite, device="cpu", attention="flash_attn_2")
