"""Unit tests of the ComfyUI nodes, called directly with ComfyUI-format data: IMAGE [B, H, W, 3] float 0..1, AUDIO
{"waveform": [B, C, T], "sample_rate"} at 44.1 kHz stereo and 24 kHz mono, LATENT dicts.

They use ComfyUI's real modules (folder_paths, comfy.model_management, ModelPatcher, ProgressBar, comfy_api), so they
need `comfy` importable: tests/test_comfy_host.py runs this file inside the host built from ../shared/comfy_host
(its venv, PYTHONPATH=<host>/ComfyUI). Anywhere else those tests skip; the plain-Python import test runs everywhere.
Tiny random-weight checkpoints are written with flashhead_core.tiny (the weights are noise: only shapes, counts,
files and errors are checked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_flashhead_under_test"
NODE_IDS = ["FlashHeadModelLoader", "FlashHeadVAELoader", "FlashHeadAudioEncoderLoader", "FlashHeadAudioEncode",
            "FlashHeadSampler", "FlashHeadVAEDecode", "FlashHeadTalkingVideo"]
RELEASE = "SoulX-FlashHead-1_3B"
SIZE = 64  # a multiple of 32 (Lite) and 16 (Pro); tiny models are fast at this size

try:
    from comfy.cli_args import args as _comfy_args

    _comfy_args.cpu = True  # before comfy.model_management is imported: no CUDA probing
    import comfy.model_management
    import comfy.utils
    import folder_paths

    COMFY = True
except ImportError:
    COMFY = False

needs_comfy = pytest.mark.skipif(not COMFY, reason="comfy is not importable here: these tests run inside ComfyUI's "
                                                   "Python (tests/test_comfy_host.py runs them in the real host)")


# --- the pack, loaded as ComfyUI loads it ----------------------------------------------------------------------------

def _load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def test_pack_imports_without_comfyui():
    """In plain Python (no comfy on the path) the pack still imports; its nodes say they need ComfyUI."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fh', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['fh'] = m; spec.loader.exec_module(m)\n"
        "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules\n"
        "print(sorted(m.NODE_CLASS_MAPPINGS))\n"
        "try:\n"
        "    m.NODE_CLASS_MAPPINGS['FlashHeadModelLoader']().load('flashhead/x', 'auto', 'auto', 'auto', False)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert result.returncode == 0, result.stderr
    assert str(sorted(NODE_IDS)) in result.stdout
    assert "HostUnavailable" in result.stdout and "inside ComfyUI" in result.stdout


UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_ui_workflow_matches_its_api_copy(ui_path):
    """Each UI-format workflow (drag-and-drop, template browser) and its API copy (workflows/api/) are one graph:
    same node ids and types, same links, and every literal input of the API copy among the UI widget values."""
    ui = json.loads(ui_path.read_text())
    api = json.loads((REPO / "workflows" / "api" / ui_path.name).read_text())
    assert ui.get("version") == 0.4 and not (ui.get("definitions") or {}).get("subgraphs")
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY}
    assert {k: n["type"] for k, n in nodes.items()} == {k: v["class_type"] for k, v in api.items()}
    assert any(n["type"] in FRONTEND_ONLY for n in ui["nodes"]), "each workflow explains itself in a Note"
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in nodes.items():
        linked = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                  for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = api[node_id]["inputs"]
        assert linked == {k: v for k, v in inputs.items() if isinstance(v, list)}, node_id
        widgets = node.get("widgets_values") or []
        assert all(v in widgets for v in inputs.values() if not isinstance(v, list)), (node_id, widgets)


# --- fixtures --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pack():
    if not COMFY:
        pytest.skip("comfy is not importable")
    return _load_pack()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, pack):
    """A released-layout root with both variants: Model_Lite, Model_Pro, VAE_LTX, VAE_Wan, wav2vec2-base-960h."""
    tiny = importlib.import_module(f"{PACK_NAME}.flashhead_core.testing")
    root = tmp_path_factory.mktemp("tiny") / RELEASE
    for variant in ("lite", "pro"):
        tiny.write_tiny_checkpoint(root, variant)
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_root):
    """A ComfyUI models/ tree: the released folder under flashhead/, single files in diffusion_models/, vae/ and
    audio_encoders/ (plus files that are not FlashHead's, which are listed but refused on load)."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_root, models / "flashhead" / RELEASE)
    (models / "diffusion_models").mkdir()
    shutil.copy(tiny_root / "Model_Pro" / "diffusion_pytorch_model.safetensors",
                models / "diffusion_models" / "flashhead_pro.safetensors")
    (models / "vae").mkdir()
    shutil.copy(tiny_root / "VAE_Wan" / "Wan2.1_VAE.pth", models / "vae" / "wan_2.1_vae.pth")
    (models / "audio_encoders").mkdir()
    shutil.copy(tiny_root / "wav2vec2-base-960h" / "model.safetensors",
                models / "audio_encoders" / "wav2vec2-base-960h.safetensors")
    shutil.copytree(tiny_root / "wav2vec2-base-960h", models / "audio_encoders" / "wav2vec2-base-960h")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(models / "diffusion_models" / "not_flashhead.safetensors"))
    return models


@pytest.fixture()
def comfy_folders(pack, models_dir, tmp_path, monkeypatch):
    """Point ComfyUI's folders at the temporary models tree and output folder."""
    paths = dict(folder_paths.folder_names_and_paths)
    for name in ("flashhead", "diffusion_models", "vae", "audio_encoders"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(models_dir / name)], paths[name][1]))
    folder_paths.filename_list_cache.clear()
    output = tmp_path / "output"
    output.mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    yield output
    folder_paths.filename_list_cache.clear()


def node(pack, node_id):
    return pack.NODE_CLASS_MAPPINGS[node_id]()


@pytest.fixture()
def lite(pack, comfy_folders):
    return _models(pack, "lite")


@pytest.fixture()
def pro(pack, comfy_folders):
    return _models(pack, "pro")


def _models(pack, variant):
    model = f"flashhead/{RELEASE}/{'Model_Lite' if variant == 'lite' else 'Model_Pro'}"
    vae = f"flashhead/{RELEASE}/{'VAE_LTX' if variant == 'lite' else 'VAE_Wan'}"
    return {
        "model": node(pack, "FlashHeadModelLoader").load(model, "auto", "fp32", "auto", False)[0],
        "vae": node(pack, "FlashHeadVAELoader").load(vae, False)[0],
        "audio_encoder": node(pack, "FlashHeadAudioEncoderLoader").load(
            f"flashhead/{RELEASE}/wav2vec2-base-960h")[0],
    }


def image(height=96, width=80, batch=1, seed=0):
    """ComfyUI IMAGE: [B, H, W, 3] float32 in 0..1."""
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def audio(seconds, rate, channels, seed=0):
    """ComfyUI AUDIO: {"waveform": [1, C, T] float32 in -1..1, "sample_rate": rate}."""
    t = torch.arange(int(seconds * rate)) / rate
    voice = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 4 * t))
    noise = 0.02 * torch.randn(channels, t.numel(), generator=torch.Generator().manual_seed(seed))
    return {"waveform": (voice + noise)[None].float(), "sample_rate": rate}


def snapshot(value):
    """A deep copy of a ComfyUI input, to check afterwards that a node did not change it."""
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    return value.clone() if isinstance(value, torch.Tensor) else value


def assert_unchanged(before, after):
    if isinstance(before, dict):
        for k in before:
            assert_unchanged(before[k], after[k])
    elif isinstance(before, torch.Tensor):
        assert torch.equal(before, after), "a node changed its (cached) input in place"


@pytest.fixture()
def progress_events():
    """Capture ComfyUI progress-bar updates (value, total, preview) as the server's hook would get them."""
    events = []

    def hook(value, total, preview, node_id=None):
        events.append((value, total, preview))
        comfy.model_management.throw_exception_if_processing_interrupted()  # what main.py's hook does too

    comfy.utils.set_progress_bar_global_hook(hook)
    yield events
    comfy.utils.set_progress_bar_global_hook(None)
    comfy.model_management.interrupt_current_processing(False)


def video_info(pack, path):
    return importlib.import_module(f"{PACK_NAME}.flashhead_core.video_io").read_video_info(path)


# --- registration and listings ---------------------------------------------------------------------------------------

@needs_comfy
def test_every_node_is_registered_with_prefix_category_and_display_name(pack):
    assert sorted(pack.NODE_CLASS_MAPPINGS) == sorted(NODE_IDS)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("FlashHead") and cls.CATEGORY == "FlashHead"
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("FlashHead ")
        assert hasattr(cls, cls.FUNCTION) and len(cls.RETURN_TYPES) >= 1 and cls.DESCRIPTION
        assert "required" in cls.INPUT_TYPES()
    assert "flashhead" in folder_paths.folder_names_and_paths
    assert {".safetensors", ".json", ".pth"} <= folder_paths.folder_names_and_paths["flashhead"][1]


@needs_comfy
def test_loaders_list_released_folders_and_single_files(pack, comfy_folders):
    """The name comes first in every option (the part that differs stays visible at any node width)."""
    models = pack.NODE_CLASS_MAPPINGS["FlashHeadModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert models == [f"Model_Lite (flashhead/{RELEASE})", f"Model_Pro (flashhead/{RELEASE})",
                      "flashhead_pro.safetensors (diffusion_models)", "not_flashhead.safetensors (diffusion_models)"]
    vaes = pack.NODE_CLASS_MAPPINGS["FlashHeadVAELoader"].INPUT_TYPES()["required"]["vae"][0]
    assert vaes == [f"VAE_LTX (flashhead/{RELEASE})", f"VAE_Wan (flashhead/{RELEASE})", "wan_2.1_vae.pth (vae)"]
    encoders = pack.NODE_CLASS_MAPPINGS["FlashHeadAudioEncoderLoader"].INPUT_TYPES()["required"]["audio_encoder"][0]
    assert encoders == [f"wav2vec2-base-960h (flashhead/{RELEASE})", "wav2vec2-base-960h (audio_encoders)",
                        "wav2vec2-base-960h.safetensors (audio_encoders)"]


@needs_comfy
def test_loader_defaults_load_and_old_saved_values_still_resolve(pack, comfy_folders):
    """A Model Loader added from the menu runs with its defaults (first option, variant auto); values saved by older
    versions ('<folder>/<path>', the checkpoint root with variant lite) still validate and load."""
    loader = pack.NODE_CLASS_MAPPINGS["FlashHeadModelLoader"]
    spec = loader.INPUT_TYPES()["required"]
    first = spec["model"][0][0]
    assert loader.VALIDATE_INPUTS(first) is True
    model = loader().load(first, spec["variant"][1]["default"], "fp32", "auto", False)[0]
    assert model.config.variant == "lite"
    assert loader.VALIDATE_INPUTS(f"flashhead/{RELEASE}") is True
    assert loader().load(f"flashhead/{RELEASE}", "pro", "fp32", "auto", False)[0].config.variant == "pro"
    vae_loader = pack.NODE_CLASS_MAPPINGS["FlashHeadVAELoader"]
    assert vae_loader.VALIDATE_INPUTS(f"flashhead/{RELEASE}/VAE_LTX") is True
    assert vae_loader().load(f"VAE_Wan (flashhead/{RELEASE})", False)[0].vae.latent_channels == 16


@needs_comfy
def test_empty_folders_show_where_the_files_go(pack, comfy_folders, tmp_path, monkeypatch):
    for name in ("flashhead", "diffusion_models"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / "none")], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    (choice,) = pack.NODE_CLASS_MAPPINGS["FlashHeadModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert "models/flashhead/" in choice and "models/diffusion_models/" in choice
    message = pack.NODE_CLASS_MAPPINGS["FlashHeadModelLoader"].VALIDATE_INPUTS(choice)
    assert isinstance(message, str) and "models/flashhead/" in message


@needs_comfy
def test_missing_model_file_names_the_folder(pack, comfy_folders):
    loader = pack.NODE_CLASS_MAPPINGS["FlashHeadVAELoader"]
    message = loader.VALIDATE_INPUTS("vae/gone.safetensors")
    assert isinstance(message, str) and "not found" in message and "models/vae/" in message
    assert loader.VALIDATE_INPUTS(f"flashhead/{RELEASE}/VAE_Wan") is True
    with pytest.raises(FileNotFoundError, match="models/flashhead/"):
        loader().load("flashhead/nowhere/VAE_LTX", False)


# --- loading ---------------------------------------------------------------------------------------------------------

@needs_comfy
def test_loaders_hand_back_model_patchers(pack, lite):
    import comfy.model_patcher

    assert lite["model"].config.variant == "lite"
    for key in ("model", "vae", "audio_encoder"):
        assert isinstance(lite[key].patcher, comfy.model_patcher.ModelPatcher)
        assert lite[key].patcher.model_size() > 0
    assert lite["vae"].vae.latent_channels == 128


@needs_comfy
def test_single_files_load(pack, comfy_folders):
    model = node(pack, "FlashHeadModelLoader").load("diffusion_models/flashhead_pro.safetensors", "auto", "auto",
                                                    "sdpa", False)[0]
    assert model.config.variant == "pro"
    assert node(pack, "FlashHeadVAELoader").load("vae/wan_2.1_vae.pth", False)[0].vae.latent_channels == 16
    encoder = node(pack, "FlashHeadAudioEncoderLoader").load("audio_encoders/wav2vec2-base-960h.safetensors")[0]
    assert encoder.encoder.model.config.hidden_size == model.config.audio_channels


@needs_comfy
def test_loader_errors_are_clear(pack, comfy_folders):
    loader = node(pack, "FlashHeadModelLoader")
    with pytest.raises(ValueError, match="not a FlashHead DiT"):
        loader.load("diffusion_models/not_flashhead.safetensors", "auto", "auto", "auto", False)
    with pytest.raises(ValueError, match="pro model, but lite was asked for"):
        loader.load("diffusion_models/flashhead_pro.safetensors", "lite", "auto", "auto", False)
    with pytest.raises(ValueError, match="available"):  # no flash-attn on CPU: the error lists what is there
        loader.load(f"flashhead/{RELEASE}/Model_Lite", "auto", "auto", "flash_attn_2", False)


# --- generation ------------------------------------------------------------------------------------------------------

@needs_comfy
def test_talking_video_44k_stereo(pack, lite, comfy_folders, progress_events):
    picture, speech = image(), audio(1.3, 44100, 2)
    before = snapshot({"image": picture, "audio": speech})
    out = node(pack, "FlashHeadTalkingVideo").generate(**lite, audio=speech, image=picture, width=SIZE, height=SIZE,
                                                       seed=1, color_correction=1.0, mode="stream",
                                                       context_seconds=8.0, filename_prefix="FlashHead/test")
    assert_unchanged(before, {"image": picture, "audio": speech})
    (saved,) = out["ui"]["images"]
    path = comfy_folders / saved["subfolder"] / saved["filename"]
    assert saved["subfolder"] == "FlashHead" and saved["type"] == "output" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left beside it
    info = video_info(pack, path)
    assert (info.frames, info.width, info.height, info.fps) == (round(1.3 * 25), SIZE, SIZE, 25.0)
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)  # the original audio, not the 16 kHz copy
    (video,) = out["result"]
    assert video.get_dimensions() == (SIZE, SIZE)
    components = video.get_components()
    assert components.images.shape == (round(1.3 * 25), SIZE, SIZE, 3) and components.audio is not None
    # progress counted in denoising steps (2 chunks x 4 steps), each finished chunk previewing its last frame
    assert [e[:2] for e in progress_events] == [(v, 8) for v in (0, 1, 2, 3, 4, 4, 5, 6, 7, 8)]
    assert [e[2] is not None for e in progress_events] == [False] * 4 + [True] + [False] * 4 + [True]
    kind, preview, max_px = progress_events[-1][2]
    assert kind == "JPEG" and preview.size == (SIZE, SIZE) and max_px == 512


@needs_comfy
def test_talking_video_24k_mono_once_mode_pro(pack, pro, comfy_folders):
    speech = audio(1.0, 24000, 1)
    out = node(pack, "FlashHeadTalkingVideo").generate(**pro, audio=speech, image=image(), width=SIZE, height=SIZE,
                                                       seed=2, color_correction=0.5, mode="once",
                                                       context_seconds=8.0, filename_prefix="pro")
    (saved,) = out["ui"]["images"]
    info = video_info(pack, comfy_folders / saved["filename"])
    assert info.frames == 25 and (info.audio_sample_rate, info.audio_channels) == (24000, 1)


@needs_comfy
def test_sampler_image_latent_and_vae_decode_agree(pack, lite, comfy_folders):
    speech, picture = audio(1.7, 24000, 1), image(batch=1)
    before = snapshot({"audio": speech, "image": picture})
    (embeds,) = node(pack, "FlashHeadAudioEncode").encode(lite["audio_encoder"], speech, lite["model"], "stream", 8.0)
    assert embeds.total_frames == round(1.7 * 25) and embeds.variant == "lite"
    assert all(w.shape == (1, 33, 5, 12, lite["model"].config.audio_channels) for w in embeds.windows)
    sampler = node(pack, "FlashHeadSampler")
    images, fps, latent = sampler.sample(lite["model"], lite["vae"], embeds, picture, SIZE, SIZE, 3, 1.0)
    assert_unchanged(before, {"audio": speech, "image": picture})
    assert images.shape == (round(1.7 * 25), SIZE, SIZE, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and fps == 25.0
    chunks = len(embeds.windows)
    assert latent["samples"].shape == (chunks, 128, 5, SIZE // 32, SIZE // 32)
    (decoded,) = node(pack, "FlashHeadVAEDecode").decode(lite["vae"], latent)
    assert decoded.shape == images.shape
    torch.testing.assert_close(decoded, images, atol=2e-4, rtol=0)
    # Same inputs, same seed: same frames (nothing of the first run leaked into the cached objects).
    again, _, _ = sampler.sample(lite["model"], lite["vae"], embeds, picture, SIZE, SIZE, 3, 1.0)
    assert torch.equal(again, images)
    # A LATENT without FlashHead's layout (e.g. saved and loaded again) decodes every chunk whole.
    (whole,) = node(pack, "FlashHeadVAEDecode").decode(lite["vae"], {"samples": latent["samples"]})
    assert whole.shape == (chunks * 33, SIZE, SIZE, 3)


@needs_comfy
def test_lite_model_with_wan_vae_is_refused(pack, lite, pro, comfy_folders):
    with pytest.raises(ValueError, match="VAE mismatch.*lite"):
        node(pack, "FlashHeadTalkingVideo").generate(lite["model"], pro["vae"], lite["audio_encoder"],
                                                     audio(0.5, 44100, 2), image(), SIZE, SIZE, 0, 1.0, "stream", 8.0,
                                                     "x")
    assert not any(comfy_folders.rglob("*"))


@needs_comfy
def test_off_grid_size_names_the_nearest_sizes(pack, lite, comfy_folders):
    (embeds,) = node(pack, "FlashHeadAudioEncode").encode(lite["audio_encoder"], audio(0.5, 44100, 2), lite["model"],
                                                          "stream", 8.0)
    with pytest.raises(ValueError, match="width 80 is not a multiple of 32: use 64 or 96"):
        node(pack, "FlashHeadSampler").sample(lite["model"], lite["vae"], embeds, image(), 80, 64, 0, 1.0)


@needs_comfy
def test_embeddings_for_another_variant_are_refused(pack, lite, pro, comfy_folders):
    (embeds,) = node(pack, "FlashHeadAudioEncode").encode(lite["audio_encoder"], audio(0.5, 24000, 1), lite["model"],
                                                          "once", 8.0)
    with pytest.raises(ValueError, match="made for a FlashHead lite model"):
        node(pack, "FlashHeadSampler").sample(pro["model"], pro["vae"], embeds, image(), SIZE, SIZE, 0, 1.0)


@needs_comfy
def test_bad_audio_and_image_inputs(pack, lite, comfy_folders):
    encode = node(pack, "FlashHeadAudioEncode").encode
    two_tracks = {"waveform": torch.zeros(2, 1, 24000), "sample_rate": 24000}
    with pytest.raises(ValueError, match="batch of 2 tracks"):
        encode(lite["audio_encoder"], two_tracks, lite["model"], "stream", 8.0)
    with pytest.raises(ValueError, match="empty"):
        encode(lite["audio_encoder"], {"waveform": torch.zeros(1, 1, 0), "sample_rate": 24000}, lite["model"],
               "stream", 8.0)
    with pytest.raises(ValueError, match="batch of 3 images"):
        node(pack, "FlashHeadTalkingVideo").generate(**lite, audio=audio(0.5, 24000, 1), image=image(batch=3),
                                                     width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                                                     mode="stream", context_seconds=8.0, filename_prefix="x")
    assert not any(comfy_folders.rglob("*.mp4"))


@needs_comfy
def test_interrupt_mid_video_leaves_no_file_and_the_next_run_works(pack, lite, comfy_folders, progress_events):
    """Cancel in ComfyUI after the first chunk: the node raises ComfyUI's interrupt and removes its partial MP4."""
    original_update = comfy.utils.ProgressBar.update_absolute

    def update_then_cancel(self, value, total, preview=None):
        original_update(self, value, total, preview)
        if preview is not None:
            comfy.model_management.interrupt_current_processing(True)  # the user presses Cancel after this chunk

    comfy.utils.ProgressBar.update_absolute = update_then_cancel
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            node(pack, "FlashHeadTalkingVideo").generate(**lite, audio=audio(3.0, 44100, 2), image=image(),
                                                         width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                                                         mode="stream", context_seconds=8.0, filename_prefix="cut")
    finally:
        comfy.utils.ProgressBar.update_absolute = original_update
    assert len(progress_events) == 5  # 4 steps and the chunk's preview; stopped at the next check
    assert not comfy.model_management.processing_interrupted()  # the flag was consumed, as ComfyUI expects
    assert [p for p in comfy_folders.rglob("*") if p.is_file()] == []
    # the next prompt in the same process runs normally
    out = node(pack, "FlashHeadTalkingVideo").generate(**lite, audio=audio(0.5, 44100, 2), image=image(), width=SIZE,
                                                       height=SIZE, seed=0, color_correction=1.0, mode="stream",
                                                       context_seconds=8.0, filename_prefix="after")
    (saved,) = out["ui"]["images"]
    assert video_info(pack, comfy_folders / saved["filename"]).frames == round(0.5 * 25)


@needs_comfy
def test_models_follow_comfyui_memory_management(pack, lite, comfy_folders):
    """ComfyUI may unload every model between runs (e.g. another workflow needs the memory): the next run loads
    them back through ModelPatcher and works."""
    run = node(pack, "FlashHeadTalkingVideo").generate
    kwargs = dict(audio=audio(0.6, 44100, 2), image=image(), width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                  mode="stream", context_seconds=8.0, filename_prefix="mem")
    run(**lite, **kwargs)
    loaded = {id(m.model) for m in comfy.model_management.current_loaded_models}
    assert {id(lite[k].patcher) for k in ("model", "vae", "audio_encoder")} <= loaded
    comfy.model_management.unload_all_models()
    run(**lite, **kwargs)
    assert len(list(comfy_folders.rglob("*.mp4"))) == 2


@needs_comfy
@pytest.mark.parametrize("name, value", [("context_seconds", float("nan")), ("context_seconds", float("inf")),
                                         ("color_correction", 1.5), ("width", 4096), ("seed", -1)])
def test_numeric_inputs_are_validated(pack, lite, comfy_folders, name, value):
    """NaN, infinity or an out-of-range number (e.g. sent through the API) is an error naming the input."""
    kwargs = dict(audio=audio(0.5, 24000, 1), image=image(), width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                  mode="stream", context_seconds=8.0, filename_prefix="x")
    with pytest.raises(ValueError, match=name):
        node(pack, "FlashHeadTalkingVideo").generate(**lite, **{**kwargs, name: value})
    assert not any(comfy_folders.rglob("*.mp4"))


@needs_comfy
def test_a_size_that_does_not_fit_in_memory_is_refused_before_running(pack, lite, comfy_folders, monkeypatch):
    host = importlib.import_module(f"{PACK_NAME}.nodes._host")
    monkeypatch.setattr(host, "free_memory", lambda device: 2**20)
    with pytest.raises(ValueError, match="GiB of working memory.*free"):
        node(pack, "FlashHeadTalkingVideo").generate(**lite, audio=audio(0.5, 24000, 1), image=image(), width=SIZE,
                                                     height=SIZE, seed=0, color_correction=1.0, mode="stream",
                                                     context_seconds=8.0, filename_prefix="x")
    assert not any(comfy_folders.rglob("*.mp4"))


@needs_comfy
def test_pack_ships_the_frontend_extension(pack):
    assert pack.WEB_DIRECTORY == "./web"
    script = (REPO / "web" / "flashhead.js").read_text()
    assert "FlashHeadTalkingVideo" in script and "nodePreviewImages" in script
