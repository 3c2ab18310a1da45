"""Unit tests of the ComfyUI nodes, called directly with ComfyUI-format data: IMAGE [B, H, W, 3] float 0..1, AUDIO
{"waveform": [B, C, T], "sample_rate"} at 44.1 kHz stereo and 24 kHz mono, LATENT dicts.

The nodes are V3 (comfy_api.v0_0_2 ComfyNode classes, registered through `comfy_entrypoint()`); the tests call their
`execute` classmethods and read their schemas. They use ComfyUI's real modules (folder_paths, comfy.model_management,
ModelPatcher, ProgressBar, comfy_api), so they need `comfy` importable: tests/test_comfy_host.py runs this file inside the host built from ../shared/comfy_host
(its venv, PYTHONPATH=<host>/ComfyUI). Anywhere else those tests skip; the plain-Python import test runs everywhere.
Tiny random-weight checkpoints are written with flashhead_core.tiny (the weights are noise: only shapes, counts,
files and errors are checked).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
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
            "FlashHeadSampler", "FlashHeadVAEDecode", "FlashHeadTalkingVideo", "FlashHeadLoraLoader",
            "FlashHeadIdentityTimeline", "FlashHeadBatchSampler", "FlashHeadAudioBatch", "FlashHeadFaceCrop",
            "FlashHeadPasteBack"]
# Each node's inputs in the order of the V1 nodes (INPUT_TYPES, required then optional), written out so that a reorder
# fails here: saved UI workflows store widget values by position. Inputs added since go after these (NEW_INPUTS).
V1_INPUT_ORDER = {
    "FlashHeadModelLoader": ["model", "variant", "dtype", "attention", "compile"],
    "FlashHeadVAELoader": ["vae", "tiled_decode"],
    "FlashHeadAudioEncoderLoader": ["audio_encoder"],
    "FlashHeadAudioEncode": ["audio_encoder", "audio", "model", "mode", "context_seconds"],
    "FlashHeadSampler": ["model", "vae", "audio_embeds", "image", "width", "height", "seed", "color_correction"],
    "FlashHeadVAEDecode": ["vae", "latent"],
    "FlashHeadTalkingVideo": ["model", "vae", "audio_encoder", "audio", "image", "width", "height", "seed",
                              "color_correction", "mode", "context_seconds", "filename_prefix"],
    # new since V1: nodes/lora.py, nodes/timeline.py, nodes/batch.py
    "FlashHeadLoraLoader": ["model", "lora_name", "strength"],
    "FlashHeadIdentityTimeline": ["images", "start_times"],
    "FlashHeadBatchSampler": ["model", "vae", "audio_encoder", "audio", "image", "width", "height", "seed",
                              "color_correction", "mode", "context_seconds"],
    "FlashHeadAudioBatch": ["audio_1", "audio_2"],
    "FlashHeadFaceCrop": ["image", "feather", "bbox_format"],
    "FlashHeadPasteBack": ["images", "face_crop"],
}
NEW_INPUTS = {"FlashHeadModelLoader": ["weight_dtype"], "FlashHeadTalkingVideo": ["state", "timeline", "face_crop"],
              "FlashHeadAudioBatch": ["audio_3", "audio_4"], "FlashHeadFaceCrop": ["mask", "bbox"]}  # optional, with defaults: old workflows lack them
# Folded under "advanced inputs" where the host supports it (ComfyUI 0.33; 0.3.64 has no such option).
ADVANCED = {
    "FlashHeadModelLoader": {"variant", "dtype", "attention", "compile", "weight_dtype"},
    "FlashHeadVAELoader": {"tiled_decode"},
    "FlashHeadAudioEncode": {"mode", "context_seconds"},
    "FlashHeadSampler": {"color_correction"},
    "FlashHeadTalkingVideo": {"color_correction", "mode", "context_seconds"},
    "FlashHeadBatchSampler": {"color_correction", "mode", "context_seconds"},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
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
    """In plain Python (no comfy on the path) the pack still imports, quietly; its entry point says it needs ComfyUI.
    It exposes no NODE_CLASS_MAPPINGS (ComfyUI would take the V1 path)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fh', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['fh'] = m; spec.loader.exec_module(m)\n"
        "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules and 'comfy_api' not in sys.modules\n"
        "assert not hasattr(m, 'NODE_CLASS_MAPPINGS') and m.WEB_DIRECTORY == './web'\n"
        "try:\n"
        "    m.comfy_entrypoint()\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
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
    audio_encoders/ (plus files that are not FlashHead's, which are listed but refused on load), and an empty loras/
    (the LoRA tests write their files there)."""
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
    (models / "loras").mkdir()
    return models


@pytest.fixture()
def comfy_folders(pack, models_dir, tmp_path, monkeypatch):
    """Point ComfyUI's folders at the temporary models tree and output folder."""
    paths = dict(folder_paths.folder_names_and_paths)
    for name in ("flashhead", "diffusion_models", "vae", "audio_encoders", "loras"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(models_dir / name)], paths[name][1]))
    folder_paths.filename_list_cache.clear()
    output = tmp_path / "output"
    output.mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    yield output
    folder_paths.filename_list_cache.clear()


def node_classes(pack) -> dict:
    """node_id -> class, as ComfyUI registers them: comfy_entrypoint() -> ComfyExtension.get_node_list()."""
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def node(pack, node_id):
    return node_classes(pack)[node_id]


def run(pack, node_id, *args, **kwargs):
    """Execute a node as ComfyUI does (the V3 classmethod) -> its outputs (a tuple)."""
    return node(pack, node_id).execute(*args, **kwargs).args


def v1_inputs(cls) -> dict:
    """The node's inputs as ComfyUI serves them to the frontend (/object_info): name -> (type, options), required
    then optional, in order."""
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


@pytest.fixture()
def lite(pack, comfy_folders):
    return _models(pack, "lite")


@pytest.fixture()
def pro(pack, comfy_folders):
    return _models(pack, "pro")


def _models(pack, variant, weight_dtype="default"):
    model = f"flashhead/{RELEASE}/{'Model_Lite' if variant == 'lite' else 'Model_Pro'}"
    vae = f"flashhead/{RELEASE}/{'VAE_LTX' if variant == 'lite' else 'VAE_Wan'}"
    return {
        "model": run(pack, "FlashHeadModelLoader", model, "auto", "fp32", "auto", False, weight_dtype)[0],
        "vae": run(pack, "FlashHeadVAELoader", vae, False)[0],
        "audio_encoder": run(pack, "FlashHeadAudioEncoderLoader", 
            f"flashhead/{RELEASE}/wav2vec2-base-960h")[0],
    }


def image(height=96, width=80, batch=1, seed=0):
    """ComfyUI IMAGE: [B, H, W, 3] float32 in 0..1."""
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def audio(seconds, rate, channels, seed=0, batch=1):
    """ComfyUI AUDIO: {"waveform": [B, C, T] float32 in -1..1, "sample_rate": rate} (B tracks: the Batch Sampler)."""
    t = torch.arange(int(seconds * rate)) / rate
    voice = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 4 * t))
    noise = 0.02 * torch.randn(batch, channels, t.numel(), generator=torch.Generator().manual_seed(seed))
    return {"waveform": (voice + noise).float(), "sample_rate": rate}


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
def progress_events(monkeypatch):
    """Capture the progress-bar updates the nodes make (value, total, preview). Recorded as the nodes call
    ProgressBar.update_absolute: ComfyUI 0.33 throttles what reaches the server's hook, 0.3.64 passes each one on."""
    events = []
    original_update = comfy.utils.ProgressBar.update_absolute

    def record(self, value, total=None, preview=None):
        events.append((value, total, preview))
        return original_update(self, value, total, preview)

    def hook(value, total, preview, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()  # what main.py's hook does too

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", record)
    comfy.utils.set_progress_bar_global_hook(hook)
    yield events
    comfy.utils.set_progress_bar_global_hook(None)
    comfy.model_management.interrupt_current_processing(False)


def video_info(pack, path):
    return importlib.import_module(f"{PACK_NAME}.flashhead_core.media.video_io").read_video_info(path)


# --- registration and listings ---------------------------------------------------------------------------------------

@needs_comfy
def test_every_node_is_registered_through_the_v3_entry_point(pack):
    classes = node_classes(pack)
    assert list(classes) == NODE_IDS and not hasattr(pack, "NODE_CLASS_MAPPINGS")
    from comfy_api.v0_0_2 import io

    for node_id, cls in classes.items():
        schema = cls.GET_SCHEMA()
        assert issubclass(cls, io.ComfyNode) and node_id.startswith("FlashHead") and schema.category == "FlashHead"
        assert schema.display_name.startswith("FlashHead ") and schema.description and schema.outputs
        assert cls.CATEGORY == "FlashHead" and len(cls.RETURN_TYPES) >= 1
    assert "flashhead" in folder_paths.folder_names_and_paths
    assert {".safetensors", ".json", ".pth"} <= folder_paths.folder_names_and_paths["flashhead"][1]


@needs_comfy
def test_schemas_keep_the_v1_inputs_in_order_with_a_tooltip_on_every_input(pack, comfy_folders):
    """Node ids, input names and their order are those of the V1 nodes (V1_INPUT_ORDER, written out above): saved
    workflows store widget values by position. New inputs come last and are optional."""
    for node_id, cls in node_classes(pack).items():
        schema = cls.GET_SCHEMA()
        ids = [i.id for i in schema.inputs]
        assert ids == V1_INPUT_ORDER[node_id] + NEW_INPUTS.get(node_id, []), node_id
        assert list(v1_inputs(cls)) == ids, node_id  # what /object_info serves, required then optional
        for i in schema.inputs:
            assert i.tooltip and len(i.tooltip) > 10, (node_id, i.id)
            assert i.optional == (i.id in NEW_INPUTS.get(node_id, [])), (node_id, i.id)
        for o in schema.outputs:
            assert o.tooltip, (node_id, o.display_name)
        # the outputs keep the V1 names and types (links in saved workflows are by slot and type)
    assert node(pack, "FlashHeadSampler").RETURN_NAMES == ["images", "frame_rate", "latent"]
    assert node(pack, "FlashHeadSampler").RETURN_TYPES == ["IMAGE", "FLOAT", "LATENT"]
    assert [node(pack, n).RETURN_TYPES[0] for n in NODE_IDS[:4]] == [
        "FLASHHEAD_MODEL", "FLASHHEAD_VAE", "FLASHHEAD_AUDIO_ENCODER", "FLASHHEAD_AUDIO_EMBEDS"]
    assert node(pack, "FlashHeadTalkingVideo").RETURN_TYPES == ["VIDEO", "FLASHHEAD_STATE"] and node(pack, "FlashHeadTalkingVideo").OUTPUT_NODE


@needs_comfy
def test_rarely_changed_inputs_are_advanced_where_the_host_supports_it(pack, comfy_folders):
    from comfy_api.v0_0_2 import io

    supported = "advanced" in inspect.signature(io.Combo.Input.__init__).parameters
    for node_id, cls in node_classes(pack).items():
        folded = {i.id for i in cls.GET_SCHEMA().inputs if getattr(i, "advanced", None)}
        assert folded == (ADVANCED.get(node_id, set()) if supported else set()), node_id
        served = {name for name, (_, options) in v1_inputs(cls).items() if options.get("advanced")}
        assert served == folded, node_id


def _widget_names(cls) -> list[str]:
    """The names of the node's widgets in the order the frontend creates them (and stores their values): each
    widget input in input order, a seed followed by its control_after_generate widget."""
    names = []
    for name, (kind, options) in v1_inputs(cls).items():
        if (kind in WIDGET_TYPES or isinstance(kind, list)) and not options.get("forceInput"):
            names.append(name)
            if name in ("seed", "noise_seed") or options.get("control_after_generate"):
                names.append(f"{name}:control_after_generate")
    return names


# The shipped workflows as they were saved with the V1 nodes (commit 1e6c6fc, the last V1 commit), kept as test data
# so the check needs no git history.
V1_WORKFLOWS = Path(__file__).resolve().parent / "data" / "v1_workflows"
V1_UI_WORKFLOWS = sorted(V1_WORKFLOWS.glob("*.json"))
V1_API_WORKFLOWS = sorted((V1_WORKFLOWS / "api").glob("*.json"))


def _v1_widget_names(node_id: str) -> list[str]:
    """The widget names of the V1 node (from V1_INPUT_ORDER): what the saved values were stored for."""
    non_widgets = {"model", "vae", "audio_encoder", "audio", "image", "images", "audio_embeds", "latent"}
    loaders = {"FlashHeadModelLoader": "model", "FlashHeadVAELoader": "vae",
               "FlashHeadAudioEncoderLoader": "audio_encoder"}
    names = []
    for name in V1_INPUT_ORDER[node_id]:
        if name not in non_widgets or loaders.get(node_id) == name:
            names.append(name)
            if name == "seed":
                names.append("seed:control_after_generate")
    return names


@needs_comfy
@pytest.mark.parametrize("ui_path", V1_UI_WORKFLOWS, ids=[p.stem for p in V1_UI_WORKFLOWS])
def test_saved_v1_ui_workflows_map_widget_values_to_the_same_inputs(pack, comfy_folders, ui_path):
    """The UI workflows as saved with the V1 nodes: each FlashHead node's widget values, read by position against the
    V3 node's widgets, land on the inputs they were saved for, and each value is valid there."""
    workflow = json.loads(ui_path.read_text())
    classes = node_classes(pack)
    checked = 0
    for saved in workflow["nodes"]:
        if saved["type"] not in classes:
            continue
        cls, values = classes[saved["type"]], saved.get("widgets_values") or []
        names = _widget_names(cls)
        old = _v1_widget_names(saved["type"])
        assert len(values) == len(old), (saved["type"], values)
        assert names[:len(old)] == old, saved["type"]  # the same names at the same positions
        assert all(n in NEW_INPUTS.get(saved["type"], []) for n in names[len(old):])  # only new inputs after them
        inputs = v1_inputs(cls)
        for name, value in zip(names, values):
            if name.endswith(":control_after_generate"):
                assert value in ("fixed", "increment", "decrement", "randomize")
                continue
            kind, options = inputs[name]
            if kind == "COMBO" and name not in ("model", "vae", "audio_encoder"):
                assert value in options["options"], (saved["type"], name, value)
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= value <= options["max"], (saved["type"], name, value)
        # the saved links name the same inputs
        assert {i["name"] for i in saved.get("inputs", [])} <= set(inputs), saved["type"]
        checked += 1
    assert checked >= 4


@needs_comfy
@pytest.mark.parametrize("api_path", V1_API_WORKFLOWS, ids=[p.stem for p in V1_API_WORKFLOWS])
def test_saved_v1_api_workflows_still_validate(pack, comfy_folders, api_path):
    """The API workflows as saved with the V1 nodes (git HEAD): every FlashHead node has every required input, no
    unknown one, and its loader values validate (old '<folder>/<path>' values included)."""
    workflow = json.loads(api_path.read_text())
    classes = node_classes(pack)
    for node_id, saved in workflow.items():
        if saved["class_type"] not in classes:
            continue
        cls = classes[saved["class_type"]]
        spec = cls.INPUT_TYPES()
        assert set(spec["required"]) <= set(saved["inputs"]) <= set(spec["required"]) | set(spec.get("optional", {}))
        wanted = inspect.signature(cls.validate_inputs).parameters if "validate_inputs" in vars(cls) else {}
        if wanted:
            values = {k: v for k, v in saved["inputs"].items() if k in wanted}
            assert cls.validate_inputs(**values) is True, (node_id, values)


@needs_comfy
def test_loaders_list_released_folders_and_single_files(pack, comfy_folders):
    """The name comes first in every option (the part that differs stays visible at any node width)."""
    models = node(pack, "FlashHeadModelLoader").INPUT_TYPES()["required"]["model"][1]["options"]
    assert models == [f"Model_Lite (flashhead/{RELEASE})", f"Model_Pro (flashhead/{RELEASE})",
                      "flashhead_pro.safetensors (diffusion_models)", "not_flashhead.safetensors (diffusion_models)"]
    vaes = node(pack, "FlashHeadVAELoader").INPUT_TYPES()["required"]["vae"][1]["options"]
    assert vaes == [f"VAE_LTX (flashhead/{RELEASE})", f"VAE_Wan (flashhead/{RELEASE})", "wan_2.1_vae.pth (vae)"]
    encoders = node(pack, "FlashHeadAudioEncoderLoader").INPUT_TYPES()["required"]["audio_encoder"][1]["options"]
    assert encoders == [f"wav2vec2-base-960h (flashhead/{RELEASE})", "wav2vec2-base-960h (audio_encoders)",
                        "wav2vec2-base-960h.safetensors (audio_encoders)"]


@needs_comfy
def test_loader_defaults_load_and_old_saved_values_still_resolve(pack, comfy_folders):
    """A Model Loader added from the menu runs with its defaults (first option, variant auto); values saved by older
    versions ('<folder>/<path>', the checkpoint root with variant lite) still validate and load."""
    loader = node(pack, "FlashHeadModelLoader")
    spec = loader.INPUT_TYPES()["required"]
    first = spec["model"][1]["options"][0]
    assert loader.validate_inputs(first) is True
    model = loader.execute(first, spec["variant"][1]["default"], "fp32", "auto", False).args[0]
    assert model.config.variant == "lite"
    assert loader.validate_inputs(f"flashhead/{RELEASE}") is True
    assert loader.execute(f"flashhead/{RELEASE}", "pro", "fp32", "auto", False).args[0].config.variant == "pro"
    vae_loader = node(pack, "FlashHeadVAELoader")
    assert vae_loader.validate_inputs(f"flashhead/{RELEASE}/VAE_LTX") is True
    assert vae_loader.execute(f"VAE_Wan (flashhead/{RELEASE})", False).args[0].vae.latent_channels == 16


@needs_comfy
def test_empty_folders_show_where_the_files_go(pack, comfy_folders, tmp_path, monkeypatch):
    for name in ("flashhead", "diffusion_models"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / "none")], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    (choice,) = node(pack, "FlashHeadModelLoader").INPUT_TYPES()["required"]["model"][1]["options"]
    assert "models/flashhead/" in choice and "models/diffusion_models/" in choice
    message = node(pack, "FlashHeadModelLoader").validate_inputs(choice)
    assert isinstance(message, str) and "models/flashhead/" in message


@needs_comfy
def test_missing_model_file_names_the_folder(pack, comfy_folders):
    loader = node(pack, "FlashHeadVAELoader")
    message = loader.validate_inputs("vae/gone.safetensors")
    assert isinstance(message, str) and "not found" in message and "models/vae/" in message
    assert loader.validate_inputs(f"flashhead/{RELEASE}/VAE_Wan") is True
    with pytest.raises(FileNotFoundError, match="models/flashhead/"):
        loader.execute("flashhead/nowhere/VAE_LTX", False)


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
    model = run(pack, "FlashHeadModelLoader", "diffusion_models/flashhead_pro.safetensors", "auto", "auto",
                                                    "sdpa", False)[0]
    assert model.config.variant == "pro"
    assert run(pack, "FlashHeadVAELoader", "vae/wan_2.1_vae.pth", False)[0].vae.latent_channels == 16
    encoder = run(pack, "FlashHeadAudioEncoderLoader", "audio_encoders/wav2vec2-base-960h.safetensors")[0]
    assert encoder.encoder.model.config.hidden_size == model.config.audio_channels


@needs_comfy
def test_loader_errors_are_clear(pack, comfy_folders):
    loader = node(pack, "FlashHeadModelLoader")
    with pytest.raises(ValueError, match="not a FlashHead DiT"):
        loader.execute("diffusion_models/not_flashhead.safetensors", "auto", "auto", "auto", False)
    with pytest.raises(ValueError, match="pro model, but lite was asked for"):
        loader.execute("diffusion_models/flashhead_pro.safetensors", "lite", "auto", "auto", False)
    with pytest.raises(ValueError, match="available"):  # no flash-attn on CPU: the error lists what is there
        loader.execute(f"flashhead/{RELEASE}/Model_Lite", "auto", "auto", "flash_attn_2", False)


# --- generation ------------------------------------------------------------------------------------------------------

@needs_comfy
def test_talking_video_44k_stereo(pack, lite, comfy_folders, progress_events):
    picture, speech = image(), audio(1.3, 44100, 2)
    before = snapshot({"image": picture, "audio": speech})
    out = node(pack, "FlashHeadTalkingVideo").execute(**lite, audio=speech, image=picture, width=SIZE, height=SIZE,
                                                       seed=1, color_correction=1.0, mode="stream",
                                                       context_seconds=8.0, filename_prefix="FlashHead/test")
    assert_unchanged(before, {"image": picture, "audio": speech})
    (saved,) = out.ui.as_dict()["images"]
    path = comfy_folders / saved["subfolder"] / saved["filename"]
    assert saved["subfolder"] == "FlashHead" and saved["type"] == "output" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left beside it
    info = video_info(pack, path)
    assert (info.frames, info.width, info.height, info.fps) == (round(1.3 * 25), SIZE, SIZE, 25.0)
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)  # the original audio, not the 16 kHz copy
    video, state = out.args  # the FLASHHEAD_STATE output (nodes/continuation.py)
    assert state.frames_emitted == round(1.3 * 25)
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
    out = node(pack, "FlashHeadTalkingVideo").execute(**pro, audio=speech, image=image(), width=SIZE, height=SIZE,
                                                       seed=2, color_correction=0.5, mode="once",
                                                       context_seconds=8.0, filename_prefix="pro")
    (saved,) = out.ui.as_dict()["images"]
    info = video_info(pack, comfy_folders / saved["filename"])
    assert info.frames == 25 and (info.audio_sample_rate, info.audio_channels) == (24000, 1)


@needs_comfy
def test_sampler_image_latent_and_vae_decode_agree(pack, lite, comfy_folders):
    speech, picture = audio(1.7, 24000, 1), image(batch=1)
    before = snapshot({"audio": speech, "image": picture})
    (embeds,) = run(pack, "FlashHeadAudioEncode", lite["audio_encoder"], speech, lite["model"], "stream", 8.0)
    assert embeds.total_frames == round(1.7 * 25) and embeds.variant == "lite"
    assert all(w.shape == (1, 33, 5, 12, lite["model"].config.audio_channels) for w in embeds.windows)
    sampler = node(pack, "FlashHeadSampler")
    images, fps, latent = sampler.execute(lite["model"], lite["vae"], embeds, picture, SIZE, SIZE, 3, 1.0).args
    assert_unchanged(before, {"audio": speech, "image": picture})
    assert images.shape == (round(1.7 * 25), SIZE, SIZE, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and fps == 25.0
    chunks = len(embeds.windows)
    assert latent["samples"].shape == (chunks, 128, 5, SIZE // 32, SIZE // 32)
    (decoded,) = run(pack, "FlashHeadVAEDecode", lite["vae"], latent)
    assert decoded.shape == images.shape
    torch.testing.assert_close(decoded, images, atol=2e-4, rtol=0)
    # Same inputs, same seed: same frames (nothing of the first run leaked into the cached objects).
    again, _, _ = sampler.execute(lite["model"], lite["vae"], embeds, picture, SIZE, SIZE, 3, 1.0).args
    assert torch.equal(again, images)
    # A LATENT without FlashHead's layout (e.g. saved and loaded again) decodes every chunk whole.
    (whole,) = run(pack, "FlashHeadVAEDecode", lite["vae"], {"samples": latent["samples"]})
    assert whole.shape == (chunks * 33, SIZE, SIZE, 3)


@needs_comfy
def test_lite_model_with_wan_vae_is_refused(pack, lite, pro, comfy_folders):
    with pytest.raises(ValueError, match="VAE mismatch.*lite"):
        node(pack, "FlashHeadTalkingVideo").execute(lite["model"], pro["vae"], lite["audio_encoder"],
                                                     audio(0.5, 44100, 2), image(), SIZE, SIZE, 0, 1.0, "stream", 8.0,
                                                     "x")
    assert not any(comfy_folders.rglob("*"))


@needs_comfy
def test_off_grid_size_names_the_nearest_sizes(pack, lite, comfy_folders):
    (embeds,) = run(pack, "FlashHeadAudioEncode", lite["audio_encoder"], audio(0.5, 44100, 2), lite["model"],
                                                          "stream", 8.0)
    with pytest.raises(ValueError, match="width 80 is not a multiple of 32: use 64 or 96"):
        run(pack, "FlashHeadSampler", lite["model"], lite["vae"], embeds, image(), 80, 64, 0, 1.0)


@needs_comfy
def test_embeddings_for_another_variant_are_refused(pack, lite, pro, comfy_folders):
    (embeds,) = run(pack, "FlashHeadAudioEncode", lite["audio_encoder"], audio(0.5, 24000, 1), lite["model"],
                                                          "once", 8.0)
    with pytest.raises(ValueError, match="made for a FlashHead lite model"):
        run(pack, "FlashHeadSampler", pro["model"], pro["vae"], embeds, image(), SIZE, SIZE, 0, 1.0)


@needs_comfy
def test_bad_audio_and_image_inputs(pack, lite, comfy_folders):
    encode = node(pack, "FlashHeadAudioEncode").execute
    two_tracks = {"waveform": torch.zeros(2, 1, 24000), "sample_rate": 24000}
    with pytest.raises(ValueError, match="batch of 2 tracks"):
        encode(lite["audio_encoder"], two_tracks, lite["model"], "stream", 8.0)
    with pytest.raises(ValueError, match="empty"):
        encode(lite["audio_encoder"], {"waveform": torch.zeros(1, 1, 0), "sample_rate": 24000}, lite["model"],
               "stream", 8.0)
    with pytest.raises(ValueError, match="batch of 3 images"):
        node(pack, "FlashHeadTalkingVideo").execute(**lite, audio=audio(0.5, 24000, 1), image=image(batch=3),
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
            node(pack, "FlashHeadTalkingVideo").execute(**lite, audio=audio(3.0, 44100, 2), image=image(),
                                                         width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                                                         mode="stream", context_seconds=8.0, filename_prefix="cut")
    finally:
        comfy.utils.ProgressBar.update_absolute = original_update
    assert len(progress_events) == 5  # 4 steps and the chunk's preview; stopped at the next check
    assert not comfy.model_management.processing_interrupted()  # the flag was consumed, as ComfyUI expects
    assert [p for p in comfy_folders.rglob("*") if p.is_file()] == []
    # the next prompt in the same process runs normally
    out = node(pack, "FlashHeadTalkingVideo").execute(**lite, audio=audio(0.5, 44100, 2), image=image(), width=SIZE,
                                                       height=SIZE, seed=0, color_correction=1.0, mode="stream",
                                                       context_seconds=8.0, filename_prefix="after")
    (saved,) = out.ui.as_dict()["images"]
    assert video_info(pack, comfy_folders / saved["filename"]).frames == round(0.5 * 25)


@needs_comfy
def test_models_follow_comfyui_memory_management(pack, lite, comfy_folders):
    """ComfyUI may unload every model between runs (e.g. another workflow needs the memory): the next run loads
    them back through ModelPatcher and works."""
    run = node(pack, "FlashHeadTalkingVideo").execute
    kwargs = dict(audio=audio(0.6, 44100, 2), image=image(), width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                  mode="stream", context_seconds=8.0, filename_prefix="mem")
    run(**lite, **kwargs)
    loaded = {id(m.model) for m in comfy.model_management.current_loaded_models}
    assert {id(lite[k].patcher) for k in ("model", "vae", "audio_encoder")} <= loaded
    comfy.model_management.unload_all_models()
    run(**lite, **kwargs)
    assert len(list(comfy_folders.rglob("*.mp4"))) == 2


@needs_comfy
@pytest.mark.parametrize("variant", ["lite", "pro"])
def test_partly_loaded_models_give_the_same_frames(pack, comfy_folders, variant):
    """ComfyUI's low-VRAM load (what --lowvram / --novram or a small GPU do: ModelPatcher loads a model only up to a
    budget, here a third of it, and the layers beyond it cast their weights per call) gives the same frames as whole
    models, for the DiT and the VAE. On this CPU host ComfyUI refuses --lowvram/--novram beside --cpu (one argument
    group), so the partial load is asked for directly, through ComfyUI's own ModelPatcher."""
    models = _models(pack, variant)
    core = importlib.import_module(f"{PACK_NAME}.flashhead_core")
    pipeline = core.Pipeline(models["model"].dit, models["vae"].vae, models["audio_encoder"].encoder)
    speech, portrait = audio(0.6, 16000, 1)["waveform"][0, 0].numpy(), image()

    def frames():
        session = core.StreamingSession(pipeline.model, pipeline.vae, height=SIZE, width=SIZE, seed=3)
        session.add_identity("face", portrait)
        return torch.cat(list(core.stream_talking_head(session, pipeline.audio_encoder, speech)))

    whole = frames()
    patchers = [models["model"].patcher, models["vae"].patcher]
    for patcher in patchers:
        patcher.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=patcher.model_size() // 3)
    try:
        for patcher in patchers:
            casting = [m for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False)]
            assert patcher.model.model_lowvram and casting, type(patcher.model.inner).__name__
        assert torch.equal(frames(), whole)
    finally:
        for patcher in patchers:
            patcher.unpatch_model(device_to=torch.device("cpu"))


@needs_comfy
@pytest.mark.parametrize("name, value", [("context_seconds", float("nan")), ("context_seconds", float("inf")),
                                         ("color_correction", 1.5), ("width", 4096), ("seed", -1),
                                         ("mode", "streaming")])
def test_numeric_inputs_are_validated(pack, lite, comfy_folders, name, value):
    """NaN, infinity or an out-of-range number (e.g. sent through the API) is an error naming the input."""
    kwargs = dict(audio=audio(0.5, 24000, 1), image=image(), width=SIZE, height=SIZE, seed=0, color_correction=1.0,
                  mode="stream", context_seconds=8.0, filename_prefix="x")
    with pytest.raises(ValueError, match=name):
        node(pack, "FlashHeadTalkingVideo").execute(**lite, **{**kwargs, name: value})
    assert not any(comfy_folders.rglob("*.mp4"))


@needs_comfy
def test_a_size_that_does_not_fit_in_memory_is_refused_before_running(pack, lite, comfy_folders, monkeypatch):
    host = importlib.import_module(f"{PACK_NAME}.nodes._host")
    monkeypatch.setattr(host, "free_memory", lambda device: 2**20)
    with pytest.raises(ValueError, match="GiB of working memory.*free"):
        node(pack, "FlashHeadTalkingVideo").execute(**lite, audio=audio(0.5, 24000, 1), image=image(), width=SIZE,
                                                     height=SIZE, seed=0, color_correction=1.0, mode="stream",
                                                     context_seconds=8.0, filename_prefix="x")
    assert not any(comfy_folders.rglob("*.mp4"))


@needs_comfy
def test_pack_ships_the_frontend_extension(pack):
    assert pack.WEB_DIRECTORY == "./web"
    script = (REPO / "web" / "flashhead.js").read_text()
    assert "FlashHeadTalkingVideo" in script and "nodePreviewImages" in script


# --- V3 specifics: host check, validation through ComfyUI, memory management, fp8 --------------------------------------

@needs_comfy
def test_a_host_without_the_pinned_api_gets_one_line_naming_the_minimum_comfyui(pack, monkeypatch, caplog):
    """A ComfyUI without comfy_api.v0_0_2: importing the pack logs one error line naming the minimum ComfyUI, raises
    nothing (no traceback in ComfyUI's log) and offers no entry point, so ComfyUI registers nothing of it."""
    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)  # `import comfy_api.v0_0_2` now fails
    name = "comfyui_flashhead_old_host"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    with caplog.at_level("WARNING"):
        spec.loader.exec_module(module)
    for key in [k for k in sys.modules if k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)
    records = [r for r in caplog.records if r.name.startswith(name)]
    assert len(records) == 1 and records[0].levelname == "ERROR" and "\n" not in records[0].getMessage()
    message = records[0].getMessage()
    assert "needs ComfyUI 0.3.64 or newer" in message and "comfy_api.v0_0_2" in message and "Update ComfyUI" in message
    assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")


def _validate_prompt(pack, prompt: dict) -> list[dict]:
    """ComfyUI's own validation of an API prompt (execution.validate_inputs, as POST /prompt runs it) with the
    FlashHead nodes registered -> the errors of every node."""
    errors = []
    with pytest.MonkeyPatch.context() as patch:
        # ComfyUI's nodes.py, by path: `python -m pytest` puts the checkout first on sys.path, where `nodes` is ours.
        comfy_nodes = sys.modules.get("nodes")
        if not hasattr(comfy_nodes, "NODE_CLASS_MAPPINGS"):
            spec = importlib.util.spec_from_file_location("nodes", Path(folder_paths.__file__).parent / "nodes.py")
            comfy_nodes = importlib.util.module_from_spec(spec)
            patch.setitem(sys.modules, "nodes", comfy_nodes)
            spec.loader.exec_module(comfy_nodes)
        import execution

        patch.setattr(execution, "nodes", comfy_nodes)
        for node_id, cls in node_classes(pack).items():
            patch.setitem(comfy_nodes.NODE_CLASS_MAPPINGS, node_id, cls)
        validated = {}
        for unique_id in prompt:
            valid, node_errors, _ = asyncio.run(execution.validate_inputs("test", prompt, unique_id, validated))
            errors += node_errors
    return errors


@needs_comfy
def test_validation_errors_read_as_clearly_as_before(pack, comfy_folders):
    """Through ComfyUI's own validation: a model that is not there says where to put it (not 'Value not in list');
    an old workflow without the new weight_dtype validates; a bad weight_dtype names the choices."""
    lite = json.loads((V1_WORKFLOWS / "api" / "flashhead_lite.json").read_text())
    loaders = {k: v for k, v in lite.items() if v["class_type"].startswith("FlashHead") and "Loader" in v["class_type"]}
    assert _validate_prompt(pack, loaders) == []  # the V1 values, weight_dtype absent
    missing = json.loads(json.dumps(loaders))
    model_key = next(k for k, v in missing.items() if v["class_type"] == "FlashHeadModelLoader")
    missing[model_key]["inputs"]["model"] = "flashhead/gone/Model_Lite"
    (error,) = _validate_prompt(pack, missing)
    assert error["type"] == "custom_validation_failed" and "not found" in error["details"]
    assert "models/flashhead/" in error["details"] and "press R" in error["details"]
    bad = json.loads(json.dumps(loaders))
    bad[model_key]["inputs"]["weight_dtype"] = "fp4"
    errors = _validate_prompt(pack, bad)
    if errors:  # ComfyUI 0.33 checks a V3 COMBO against its options
        (error,) = errors
        assert error["type"] == "value_not_in_list" and "weight_dtype" in error["details"]
        assert "fp8_e4m3fn" in error["details"]
    # 0.3.64 does not: the node itself says it, before loading anything
    with pytest.raises(ValueError, match="weight_dtype must be one of default, fp8_e4m3fn, fp8_e5m2; got 'fp4'"):
        node(pack, "FlashHeadModelLoader").execute(**bad[model_key]["inputs"])


@needs_comfy
def test_models_use_core_model_patcher_where_the_host_has_it_and_comfy_casting_layers(pack, lite):
    import comfy.model_patcher
    import comfy.ops

    expected = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    for key in ("model", "vae", "audio_encoder"):
        assert isinstance(lite[key].patcher, expected)
    dit = lite["model"].dit
    assert lite["model"].offloadable
    assert isinstance(dit.blocks[0].self_attn.q, comfy.ops.manual_cast.Linear)
    assert isinstance(dit.patch_embedding, comfy.ops.manual_cast.Conv3d)


@needs_comfy
@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_weight_dtype_stores_the_block_weights_in_fp8_and_generates(pack, comfy_folders, weight_dtype):
    loader = node(pack, "FlashHeadModelLoader")
    (model,) = loader.execute(f"flashhead/{RELEASE}/Model_Lite", "auto", "fp32", "auto", False, weight_dtype).args
    fp8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[weight_dtype]
    assert model.dit.blocks[0].ffn[0].weight.dtype == fp8 and model.dit.dtype == torch.float32
    (default,) = loader.execute(f"flashhead/{RELEASE}/Model_Lite", "auto", "fp32", "auto", False).args
    assert default.dit.blocks[0].ffn[0].weight.dtype == torch.float32
    assert model.patcher.model_size() < default.patcher.model_size()
    (vae,) = run(pack, "FlashHeadVAELoader", f"flashhead/{RELEASE}/VAE_LTX", False)
    (encoder,) = run(pack, "FlashHeadAudioEncoderLoader", f"flashhead/{RELEASE}/wav2vec2-base-960h")
    (embeds,) = run(pack, "FlashHeadAudioEncode", encoder, audio(0.5, 24000, 1), model, "once", 8.0)
    images, _, _ = run(pack, "FlashHeadSampler", model, vae, embeds, image(), SIZE, SIZE, 0, 1.0)
    assert images.shape == (round(0.5 * 25), SIZE, SIZE, 3) and torch.isfinite(images).all()


# --- LoRA loader and identity timeline -------------------------------------------------------------------------------

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


def _dit_inputs(config, seed=0):
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


@needs_comfy
@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_chained_loras_equal_the_merged_model_and_leave_the_input_alone(pack, comfy_folders, models_dir,
                                                                         weight_dtype):
    from safetensors.torch import save_file

    lora_core = importlib.import_module(f"{PACK_NAME}.flashhead_core.lora")
    checkpoint = importlib.import_module(f"{PACK_NAME}.flashhead_core.checkpoint")
    save_file(kohya_lora(), str(models_dir / "loras" / "k.safetensors"))
    save_file(comfy_lora(), str(models_dir / "loras" / "c.safetensors"))
    folder_paths.filename_list_cache.clear()
    cls = node(pack, "FlashHeadLoraLoader")
    options = cls.INPUT_TYPES()["required"]["lora_name"][1]["options"]
    assert {"k.safetensors", "c.safetensors"} <= set(options)
    base = _models(pack, "lite", weight_dtype)["model"]
    inputs = _dit_inputs(base.config)
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


@needs_comfy
def test_a_lora_for_another_model_is_refused(pack, lite, models_dir):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 4)},
              str(models_dir / "loras" / "sd15.safetensors"))
    save_file(kohya_lora(dim=5120, ffn=13824), str(models_dir / "loras" / "wan14b.safetensors"))
    folder_paths.filename_list_cache.clear()
    base = lite["model"]
    errors = importlib.import_module(f"{PACK_NAME}.flashhead_core.errors")
    with pytest.raises(errors.FlashHeadError, match="match no layer.*down_blocks_0_attn1_to_q"):
        run(pack, "FlashHeadLoraLoader", base, "sd15.safetensors", 1.0)
    with pytest.raises(errors.FlashHeadError, match="another model"):
        run(pack, "FlashHeadLoraLoader", base, "wan14b.safetensors", 1.0)
    assert node(pack, "FlashHeadLoraLoader").validate_inputs("nope.safetensors") is not True


@needs_comfy
def test_timeline_node_and_talking_video(pack, lite, comfy_folders):
    timeline = run(pack, "FlashHeadIdentityTimeline", image(72, 64, batch=2), "1.2, 2.2")[0]
    assert [round(s, 2) for s in timeline.starts] == [1.2, 2.2] and len(timeline.portraits) == 2
    errors = importlib.import_module(f"{PACK_NAME}.flashhead_core.errors")
    with pytest.raises(errors.FlashHeadError, match="2 start times for 3 portraits"):
        run(pack, "FlashHeadIdentityTimeline", image(72, 64, batch=3), "1, 2")
    cls = node(pack, "FlashHeadTalkingVideo")
    ids = [i.id for i in cls.GET_SCHEMA().inputs]
    assert ids.index("timeline") > ids.index("state") and cls.GET_SCHEMA().inputs[ids.index("timeline")].optional
    args = (lite["model"], lite["vae"], lite["audio_encoder"], audio(3.0, 24000, 1), image(72, 64, seed=5), SIZE,
            SIZE, 42, 1.0, "stream", 8.0, "FlashHead/tl")
    video = cls.execute(*args, timeline=timeline).args[0]
    assert Path(video.get_stream_source()).is_file()
    # past the audio: an error before anything runs, nothing written
    late = run(pack, "FlashHeadIdentityTimeline", image(72, 64), "3.5")[0]
    with pytest.raises(errors.FlashHeadError, match="past the end of the audio"):
        cls.execute(*args[:-1], "FlashHead/late", timeline=late)
    assert not list((comfy_folders / "FlashHead").glob("late*"))


# --- continuation state and batch sampler ----------------------------------------------------------------------------

@needs_comfy
def test_schemas_append_the_state_last_and_register_the_batch_sampler(pack, comfy_folders):
    classes = node_classes(pack)
    video = classes["FlashHeadTalkingVideo"]
    inputs = video.GET_SCHEMA().inputs
    ids = [i.id for i in inputs]
    assert ids.index("state") > ids.index("filename_prefix") and inputs[ids.index("state")].optional
    assert video.RETURN_TYPES == ["VIDEO", "FLASHHEAD_STATE"]
    assert "FlashHeadBatchSampler" in classes
    assert classes["FlashHeadBatchSampler"].RETURN_TYPES == ["IMAGE", "FLOAT", "INT"]


@needs_comfy
def test_talking_video_continues_from_its_state(pack, lite, pro, comfy_folders):
    """Two Talking Video runs chained by the state write the frames of one run over both audios (the MP4s are
    H.264, so the decoded frames are compared with a lossy tolerance and the frame counts exactly)."""
    video = node(pack, "FlashHeadTalkingVideo")
    step = lite["model"].config.new_frames * 640
    whole = audio(2 * step / 16000, 16000, 1)
    first = {"waveform": whole["waveform"][..., :step], "sample_rate": 16000}
    second = {"waveform": whole["waveform"][..., step:], "sample_rate": 16000}
    portrait = image()
    common = dict(image=portrait, width=SIZE, height=SIZE, color_correction=1.0, mode="stream", context_seconds=2.0)
    long_video, _ = video.execute(**lite, audio=whole, seed=7, filename_prefix="long", **common).args
    a, state = video.execute(**lite, audio=first, seed=7, filename_prefix="a", **common).args
    b, end = video.execute(**lite, audio=second, seed=123, filename_prefix="b", state=state, **common).args
    assert state.frames_emitted == 24 and end.frames_emitted == 48
    joined = torch.cat([a.get_components().images, b.get_components().images])
    expected = long_video.get_components().images
    assert joined.shape == expected.shape
    assert (joined - expected).abs().mean() < 0.02  # MP4 re-encoding only (the core test is bit-exact)
    # once mode: the state refuses to continue, before any file is written
    _, once_state = video.execute(**lite, audio=first, seed=7, filename_prefix="once",
                                  **{**common, "mode": "once"}).args
    with pytest.raises(ValueError, match="once mode"):
        video.execute(**lite, audio=second, seed=7, filename_prefix="refused", state=once_state, **common)
    with pytest.raises(ValueError, match="variant lite but this run has variant pro"):
        video.execute(**pro, audio=second, seed=7, filename_prefix="refused", state=state, **common)
    assert not list(comfy_folders.rglob("refused*"))


@needs_comfy
def test_batch_sampler_streams_equal_their_single_runs(pack, lite, comfy_folders):
    classes = node_classes(pack)
    portraits, tracks = image(batch=2), audio(30 * 640 / 16000, 16000, 1, batch=2)
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
        classes["FlashHeadBatchSampler"].execute(**lite, audio=audio(10 * 640 / 16000, 16000, 1, batch=3),
                                                 image=portraits, width=SIZE, height=SIZE, seed=0,
                                                 color_correction=1.0, mode="stream", context_seconds=8.0)


@needs_comfy
def test_audio_batch_feeds_the_batch_sampler_with_each_track_as_heard(pack, lite, comfy_folders):
    classes = node_classes(pack)
    first, second = audio(30 * 640 / 16000, 44100, 2, seed=1), audio(20 * 640 / 16000, 24000, 1, seed=2)
    kept = snapshot(first)
    (tracks,) = classes["FlashHeadAudioBatch"].execute(first, second).args
    assert tracks["sample_rate"] == 16000 and tracks["waveform"].shape == (2, 1, 30 * 640)
    assert torch.equal(first["waveform"], kept["waveform"])  # inputs untouched
    assert not tracks["waveform"][1, 0, 20 * 640 + 16:].any()  # the shorter track padded with silence
    images, _, per_stream = classes["FlashHeadBatchSampler"].execute(
        **lite, audio=tracks, image=image(batch=2), width=SIZE, height=SIZE, seed=4, color_correction=1.0,
        mode="stream", context_seconds=8.0).args
    assert per_stream == 30 and images.shape == (60, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="batch of 2 tracks"):
        classes["FlashHeadAudioBatch"].execute(tracks, second)


# --- face crop and paste-back ----------------------------------------------------------------------------------------

def half_body(width=640, height=360):
    """ComfyUI IMAGE [1, height, width, 3]: scikit-image's astronaut photo (one real face, about 57 px wide here)
    at 0.6x on a grey canvas."""
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    canvas = np.full((height, width, 3), 128, np.uint8)
    canvas[20:327, 200:507] = np.asarray(Image.fromarray(astronaut()).resize((307, 307), Image.BILINEAR))
    return torch.from_numpy(canvas).float()[None] / 255


@needs_comfy
def test_face_crop_node_and_talking_video_write_the_full_frame(pack, lite, comfy_folders):
    portrait = half_body()
    crop, cropped, mask, preview = run(pack, "FlashHeadFaceCrop", portrait, 0.1, "x1,y1,x2,y2")
    assert 50 < crop.face.width < 70 and crop.side == round(2 * crop.face.width)  # the official square
    assert cropped.shape == (1, crop.side, crop.side, 3) and preview.shape == portrait.shape
    assert torch.equal(cropped[0], portrait[0, crop.top:crop.top + crop.side, crop.left:crop.left + crop.side])
    assert mask.shape == (1, 360, 640) and mask[0, crop.top + crop.side // 2, crop.left + crop.side // 2] == 1
    assert mask.gt(0).sum() == crop.side ** 2  # the square, nothing outside
    video = node(pack, "FlashHeadTalkingVideo")
    assert [i.id for i in video.GET_SCHEMA().inputs][-1] == "face_crop"
    out = video.execute(**lite, audio=audio(1.0, 24000, 1), image=portrait, width=SIZE, height=SIZE, seed=3,
                        color_correction=1.0, mode="stream", context_seconds=8.0, filename_prefix="FlashHead/face",
                        face_crop=crop).args[0]
    info = video_info(pack, out.get_stream_source())
    assert (info.width, info.height, info.frames) == (640, 360, 25)
    # a crop made on another image: refused before anything is written
    errors = importlib.import_module(f"{PACK_NAME}.flashhead_core.errors")
    with pytest.raises(errors.FaceError, match="made on a 640x360 portrait but the image is 80x96"):
        video.execute(**lite, audio=audio(1.0, 24000, 1), image=image(), width=SIZE, height=SIZE, seed=3,
                      color_correction=1.0, mode="stream", context_seconds=8.0, filename_prefix="FlashHead/refused",
                      face_crop=crop)
    assert not list(comfy_folders.rglob("refused*"))


@needs_comfy
def test_sampler_frames_paste_back_into_the_portrait(pack, lite, comfy_folders):
    portrait = half_body()
    crop, cropped, mask, _ = run(pack, "FlashHeadFaceCrop", portrait, 0.1, "x1,y1,x2,y2")
    (embeds,) = run(pack, "FlashHeadAudioEncode", lite["audio_encoder"], audio(1.0, 16000, 1), lite["model"],
                    "stream", 8.0)
    frames = run(pack, "FlashHeadSampler", lite["model"], lite["vae"], embeds, cropped, SIZE, SIZE, 5, 1.0)[0]
    (full,) = run(pack, "FlashHeadPasteBack", frames, crop)
    assert full.shape == (frames.shape[0], 360, 640, 3)
    outside = mask[0] == 0
    assert torch.equal(full[:, outside], portrait[0][outside].expand(frames.shape[0], -1, -1))  # exactly
    middle = full[:, crop.top + crop.side // 2, crop.left + crop.side // 2]
    assert not torch.allclose(middle, portrait[0, crop.top + crop.side // 2, crop.left + crop.side // 2])


@needs_comfy
def test_face_crop_node_takes_a_bbox_or_a_mask_and_refuses_bad_ones(pack):
    portrait = half_body()
    face = importlib.import_module(f"{PACK_NAME}.flashhead_core.media.face")
    errors = importlib.import_module(f"{PACK_NAME}.flashhead_core.errors")
    expected = face.FaceBox(300, 80, 60, 70)
    crop = run(pack, "FlashHeadFaceCrop", portrait, 0.1, "x1,y1,x2,y2", bbox=[[300, 80, 360, 150]])[0]
    assert crop.face == expected and (crop.left, crop.top, crop.side) == (270, 49, 120)  # 115 - 0.55 * 120 = 49
    assert run(pack, "FlashHeadFaceCrop", portrait, 0.1, "x,y,w,h", bbox=[300, 80, 60, 70])[0].face == expected
    mask = torch.zeros(1, 360, 640)
    mask[0, 80:150, 300:360] = 1
    assert run(pack, "FlashHeadFaceCrop", portrait, 0.1, "x1,y1,x2,y2", mask=mask)[0].face == expected
    for kwargs, message in [
            (dict(mask=mask, bbox=[300, 80, 360, 150]), "connect one of them"),
            (dict(mask=torch.zeros(1, 360, 640)), "face mask is empty"),
            (dict(mask=torch.ones(1, 100, 100)), "the mask is 100x100 but the portrait is 640x360"),
            (dict(bbox=[600, 80, 700, 150]), "outside the 640x360 portrait"),
            (dict(bbox=[[0, 0, 50, 50], [100, 100, 150, 150]]), "holds 2 boxes")]:
        with pytest.raises(errors.FaceError, match=message):
            run(pack, "FlashHeadFaceCrop", portrait, 0.1, "x1,y1,x2,y2", **kwargs)
    with pytest.raises(errors.FaceError, match="no face found"):
        run(pack, "FlashHeadFaceCrop", image(360, 640), 0.1, "x1,y1,x2,y2")
    with pytest.raises(errors.FlashHeadError, match="feather must be between 0 and 0.5"):
        run(pack, "FlashHeadFaceCrop", portrait, 0.9, "x1,y1,x2,y2")
