"""The FLASHHEAD_STATE wire on FlashHead Talking Video and FlashHead Batch Sampler, called as ComfyUI calls them
(inside a host: run with the host's Python and PYTHONPATH=<host>/ComfyUI, as tests/test_nodes.py)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import shutil
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
    import comfy.model_management  # noqa: F401
    import folder_paths

    COMFY = True
except ImportError:
    COMFY = False

pytestmark = pytest.mark.skipif(not COMFY, reason="comfy is not importable: run inside a ComfyUI host")


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
    for variant in ("lite", "pro"):
        tiny.write_tiny_checkpoint(root, variant)
    for name in ("diffusion_models", "vae", "audio_encoders"):
        (models / name).mkdir()
    return models


@pytest.fixture()
def comfy_folders(pack, models_dir, tmp_path, monkeypatch):
    paths = dict(folder_paths.folder_names_and_paths)
    for name in ("flashhead", "diffusion_models", "vae", "audio_encoders"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(models_dir / name)], paths[name][1]))
    folder_paths.filename_list_cache.clear()
    output = tmp_path / "output"
    output.mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    yield output
    folder_paths.filename_list_cache.clear()


def nodes(pack) -> dict:
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def models(pack, variant):
    classes = nodes(pack)
    folder = "Model_Lite" if variant == "lite" else "Model_Pro"
    return {"model": classes["FlashHeadModelLoader"].execute(f"flashhead/{RELEASE}/{folder}", "auto", "fp32", "auto",
                                                             False).args[0],
            "vae": classes["FlashHeadVAELoader"].execute(
                f"flashhead/{RELEASE}/{'VAE_LTX' if variant == 'lite' else 'VAE_Wan'}", False).args[0],
            "audio_encoder": classes["FlashHeadAudioEncoderLoader"].execute(
                f"flashhead/{RELEASE}/wav2vec2-base-960h").args[0]}


def image(batch=1, seed=0):
    return torch.rand(batch, 96, 80, 3, generator=torch.Generator().manual_seed(seed))


def speech(samples, rate=16000, batch=1, seed=0):
    t = torch.arange(samples) / rate
    voice = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 4 * t))
    noise = 0.02 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed))
    return {"waveform": (voice + noise).float(), "sample_rate": rate}


def frames_of(pack, video) -> torch.Tensor:
    return video.get_components().images


def test_schemas_append_the_state_last_and_register_the_batch_sampler(pack, comfy_folders):
    classes = nodes(pack)
    video = classes["FlashHeadTalkingVideo"]
    inputs = video.GET_SCHEMA().inputs
    ids = [i.id for i in inputs]
    assert ids.index("state") > ids.index("filename_prefix") and inputs[ids.index("state")].optional
    assert video.RETURN_TYPES == ["VIDEO", "FLASHHEAD_STATE"]
    assert list(classes)[-1] == "FlashHeadBatchSampler"
    assert classes["FlashHeadBatchSampler"].RETURN_TYPES == ["IMAGE", "FLOAT", "INT"]


def test_talking_video_continues_from_its_state(pack, comfy_folders):
    """Two Talking Video runs chained by the state write the frames of one run over both audios (the MP4s are
    H.264, so the decoded frames are compared with a lossy tolerance and the frame counts exactly)."""
    lite = models(pack, "lite")
    video = nodes(pack)["FlashHeadTalkingVideo"]
    step = lite["model"].config.new_frames * 640
    whole = speech(2 * step)
    first = {"waveform": whole["waveform"][..., :step], "sample_rate": 16000}
    second = {"waveform": whole["waveform"][..., step:], "sample_rate": 16000}
    portrait = image()
    common = dict(image=portrait, width=SIZE, height=SIZE, color_correction=1.0, mode="stream", context_seconds=2.0)
    long_video, _ = video.execute(**lite, audio=whole, seed=7, filename_prefix="long", **common).args
    a, state = video.execute(**lite, audio=first, seed=7, filename_prefix="a", **common).args
    b, end = video.execute(**lite, audio=second, seed=123, filename_prefix="b", state=state, **common).args
    assert state.frames_emitted == 24 and end.frames_emitted == 48
    joined = torch.cat([frames_of(pack, a), frames_of(pack, b)])
    expected = frames_of(pack, long_video)
    assert joined.shape == expected.shape
    assert (joined - expected).abs().mean() < 0.02  # MP4 re-encoding only (the core test is bit-exact)
    # once mode: the state refuses to continue, before any file is written
    _, once_state = video.execute(**lite, audio=first, seed=7, filename_prefix="once",
                                  **{**common, "mode": "once"}).args
    with pytest.raises(ValueError, match="once mode"):
        video.execute(**lite, audio=second, seed=7, filename_prefix="refused", state=once_state, **common)
    pro = models(pack, "pro")
    with pytest.raises(ValueError, match="variant lite but this run has variant pro"):
        video.execute(**pro, audio=second, seed=7, filename_prefix="refused", state=state, **common)
    assert not list(comfy_folders.rglob("refused*"))


def test_batch_sampler_streams_equal_their_single_runs(pack, comfy_folders):
    lite = models(pack, "lite")
    classes = nodes(pack)
    portraits, tracks = image(batch=2), speech(30 * 640, batch=2)
    images, fps, per_stream = classes["FlashHeadBatchSampler"].execute(
        **lite, audio=tracks, image=portraits, width=SIZE, height=SIZE, seed=4, color_correction=1.0,
        mode="stream", context_seconds=8.0).args
    assert images.shape == (2 * 30, SIZE, SIZE, 3) and fps == 25.0 and per_stream == 30
    for i in range(2):
        one = {"waveform": tracks["waveform"][i:i + 1], "sample_rate": 16000}
        (embeds,) = classes["FlashHeadAudioEncode"].execute(lite["audio_encoder"], one, lite["model"], "stream",
                                                            8.0).args
        alone = classes["FlashHeadSampler"].execute(lite["model"], lite["vae"], embeds, portraits[i:i + 1], SIZE,
                                                    SIZE, 4 + i, 1.0).args[0]
        torch.testing.assert_close(images[i * 30:(i + 1) * 30], alone, atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="2 portrait.*3 audio track"):
        classes["FlashHeadBatchSampler"].execute(**lite, audio=speech(640 * 10, batch=3), image=portraits, width=SIZE,
                                                 height=SIZE, seed=0, color_correction=1.0, mode="stream",
                                                 context_seconds=8.0)
