"""Node tests of FlashHead LoRA Loader and FlashHead Identity Timeline (+ Talking Video's timeline input), run inside
a ComfyUI host like tests/test_nodes.py:

    PYTHONPATH=/tmp/comfy_host/ComfyUI /tmp/comfy_host/venv/bin/python -m pytest -q tests/test_nodes_lora_timeline.py

Elsewhere they skip. Tiny random checkpoints at 64x64."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_flashhead_under_test"  # the same name as tests/test_nodes.py: one copy of the pack
RELEASE = "SoulX-FlashHead-1_3B"
SIZE = 64

try:
    from comfy.cli_args import args as _comfy_args

    _comfy_args.cpu = True
    import comfy.model_management
    import folder_paths

    COMFY = True
except ImportError:
    COMFY = False

pytestmark = pytest.mark.skipif(not COMFY, reason="comfy is not importable here: run inside ComfyUI's Python")


def _load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack():
    return _load_pack()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, pack):
    tiny = importlib.import_module(f"{PACK_NAME}.flashhead_core.testing")
    models = tmp_path_factory.mktemp("models")
    root = models / "flashhead" / RELEASE
    tiny.write_tiny_checkpoint(root, "lite")
    (models / "loras").mkdir()
    return models


@pytest.fixture()
def output(pack, models_dir, tmp_path, monkeypatch):
    paths = dict(folder_paths.folder_names_and_paths)
    for name in ("flashhead", "loras"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(models_dir / name)], paths[name][1]))
    folder_paths.filename_list_cache.clear()
    out = tmp_path / "output"
    out.mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(out))
    yield out
    folder_paths.filename_list_cache.clear()


def node(pack, node_id):
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}[node_id]


def run(pack, node_id, *args, **kwargs):
    return node(pack, node_id).execute(*args, **kwargs).args


def lite(pack, weight_dtype="default"):
    return {"model": run(pack, "FlashHeadModelLoader", f"flashhead/{RELEASE}/Model_Lite", "auto", "fp32", "auto",
                         False, weight_dtype)[0],
            "vae": run(pack, "FlashHeadVAELoader", f"flashhead/{RELEASE}/VAE_LTX", False)[0],
            "audio_encoder": run(pack, "FlashHeadAudioEncoderLoader", f"flashhead/{RELEASE}/wav2vec2-base-960h")[0]}


def kohya_lora(dim=128, ffn=256, rank=4, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, (out, inp) in {"blocks.0.self_attn.q": (dim, dim), "blocks.1.ffn.0": (ffn, dim),
                               "blocks.0.cross_attn.v": (dim, dim)}.items():
        stem = "lora_unet_" + module.replace(".", "_")
        sd |= {f"{stem}.lora_down.weight": scale * torch.randn(rank, inp, generator=g),
               f"{stem}.lora_up.weight": scale * torch.randn(out, rank, generator=g), f"{stem}.alpha": torch.tensor(2.0)}
    return sd


def comfy_lora(seed=1):
    return {k.replace("lora_unet_blocks_0_self_attn_q", "diffusion_model.blocks.0.self_attn.q")
            .replace("lora_unet_blocks_1_ffn_0", "diffusion_model.blocks.1.ffn.0")
            .replace("lora_unet_blocks_0_cross_attn_v", "diffusion_model.blocks.0.cross_attn.v")
            .replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): v
            for k, v in kohya_lora(seed=seed).items()}


def _inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, config.out_dim, 2, SIZE // config.vae_stride[1], SIZE // config.vae_stride[2])
    windows = torch.randn(1, 1 + config.t_stride, 5, 12, config.audio_channels, generator=g)
    return torch.randn(shape, generator=g), torch.tensor([937.5]), torch.randn(shape, generator=g), windows


def _flow(dit, inputs):
    z, t, ref, windows = inputs
    with torch.no_grad():
        return dit(z, t, ref, dit.audio_proj(windows)).float()


def _loaded_flow(pack, model, inputs):
    """The DiT's output with `model`'s patcher loaded as a run loads it (ComfyUI applies its patches)."""
    host = importlib.import_module(f"{PACK_NAME}.nodes._host")
    host.load_to_device(partial=[model.patcher])
    return _flow(model.dit, inputs)


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_chained_loras_equal_the_merged_model_and_leave_the_input_alone(pack, output, models_dir, weight_dtype):
    from safetensors.torch import save_file

    lora_core = importlib.import_module(f"{PACK_NAME}.flashhead_core.lora")
    checkpoint = importlib.import_module(f"{PACK_NAME}.flashhead_core.checkpoint")
    save_file(kohya_lora(), str(models_dir / "loras" / "k.safetensors"))
    save_file(comfy_lora(), str(models_dir / "loras" / "c.safetensors"))
    folder_paths.filename_list_cache.clear()
    cls = node(pack, "FlashHeadLoraLoader")
    options = cls.INPUT_TYPES()["required"]["lora_name"][1]["options"]
    assert {"k.safetensors", "c.safetensors"} <= set(options)
    base = lite(pack, weight_dtype)["model"]
    inputs = _inputs(base.config)
    before = _loaded_flow(pack, base, inputs)
    one = run(pack, "FlashHeadLoraLoader", base, "k.safetensors", 0.8)[0]
    two = run(pack, "FlashHeadLoraLoader", one, "c.safetensors", -0.5)[0]
    assert not base.patcher.object_patches and len(one.patcher.object_patches) == 3
    assert two.source.endswith("k.safetensors + c.safetensors")
    # the reference: the core's model with the merged weights (float32; fp8: the dequantised fp8 values + deltas)
    reference = checkpoint.load_dit(models_dir / "flashhead" / RELEASE / "Model_Lite")
    reference.load_state_dict({k: v.float() for k, v in base.dit.state_dict().items()})
    loras = [lora_core.read_lora(models_dir / "loras" / "k.safetensors", reference, 0.8),
             lora_core.read_lora(models_dir / "loras" / "c.safetensors", reference, -0.5)]
    lora_core.apply_loras(reference, loras)
    torch.testing.assert_close(_loaded_flow(pack, two, inputs), _flow(reference, inputs), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_loaded_flow(pack, two, inputs), before)
    # the plain model again: ComfyUI swapped the LoRA layers out
    torch.testing.assert_close(_loaded_flow(pack, base, inputs), before, rtol=0, atol=0)


def test_a_lora_for_another_model_is_refused(pack, output, models_dir):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 4)},
              str(models_dir / "loras" / "sd15.safetensors"))
    save_file(kohya_lora(dim=5120, ffn=13824), str(models_dir / "loras" / "wan14b.safetensors"))
    folder_paths.filename_list_cache.clear()
    base = lite(pack)["model"]
    errors = importlib.import_module(f"{PACK_NAME}.flashhead_core.errors")
    with pytest.raises(errors.FlashHeadError, match="match no layer.*down_blocks_0_attn1_to_q"):
        run(pack, "FlashHeadLoraLoader", base, "sd15.safetensors", 1.0)
    with pytest.raises(errors.FlashHeadError, match="another model"):
        run(pack, "FlashHeadLoraLoader", base, "wan14b.safetensors", 1.0)
    assert node(pack, "FlashHeadLoraLoader").validate_inputs("nope.safetensors") is not True


def _audio(seconds, rate=24000):
    t = torch.arange(int(seconds * rate)) / rate
    return {"waveform": (0.3 * torch.sin(2 * torch.pi * 180 * t))[None, None].float(), "sample_rate": rate}


def _portraits(n, seed=0):
    return torch.rand(n, 72, 64, 3, generator=torch.Generator().manual_seed(seed))


def test_timeline_node_and_talking_video(pack, output):
    models = lite(pack)
    timeline = run(pack, "FlashHeadIdentityTimeline", _portraits(2), "1.2, 2.2")[0]
    assert [round(s, 2) for s in timeline.starts] == [1.2, 2.2] and len(timeline.portraits) == 2
    errors = importlib.import_module(f"{PACK_NAME}.flashhead_core.errors")
    with pytest.raises(errors.FlashHeadError, match="2 start times for 3 portraits"):
        run(pack, "FlashHeadIdentityTimeline", _portraits(3), "1, 2")
    cls = node(pack, "FlashHeadTalkingVideo")
    ids = [i.id for i in cls.GET_SCHEMA().inputs]
    assert ids[-1] == "timeline" and cls.GET_SCHEMA().inputs[-1].optional
    args = (models["model"], models["vae"], models["audio_encoder"], _audio(3.0), _portraits(1, 5), SIZE, SIZE, 42,
            1.0, "stream", 8.0, "FlashHead/tl")
    video = cls.execute(*args, timeline=timeline).args[0]
    assert Path(video.get_stream_source()).is_file()
    # past the audio: an error before anything runs, nothing written
    late = run(pack, "FlashHeadIdentityTimeline", _portraits(1), "3.5")[0]
    with pytest.raises(errors.FlashHeadError, match="past the end of the audio"):
        cls.execute(*args[:-1], "FlashHead/late", timeline=late)
    assert not list((output / "FlashHead").glob("late*"))
