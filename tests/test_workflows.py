"""The shipped workflows as files: what a new user meets before anything runs (no ComfyUI needed).

The same workflows after a run in the real frontend of every tested ComfyUI (node rectangles read from the page,
screenshots) are tests/test_comfy_host.py's `test_every_ui_workflow_runs_from_the_real_frontend_and_no_node_covers_
another`. Here: each UI workflow has its API copy under the same name, names only example inputs the pack ships
(with their licence), uses no node ComfyUI marks deprecated, carries the download address of every model file it
needs, tells how to download them inside a ComfyUI install, and as saved no node's rectangle (title bar included)
overlaps another's, with room below every node that grows when it runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
UI = sorted(WORKFLOWS.glob("*.json"))
INPUTS = WORKFLOWS / "inputs"
TITLE_HEIGHT = 30  # LiteGraph's title bar, above a node's pos
# How far below its saved rectangle a node reaches after a run, at the saved width (measured in frontends 1.27.10,
# 1.49.6 and 1.58.1): LoadImage shows the portrait, the video nodes their finished video.
GROWS = {"LoadImage": 0, "FlashHeadTalkingVideo": 420, "SaveVideo": 380, "PreviewImage": 0, "LoadAudio": 0}
DEPRECATED = {"ImageBatch", "LatentBatch"}  # shown by ComfyUI 0.33 as "... (DEPRECATED)"
GAP = 20


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def rects(workflow: dict) -> dict[int, tuple[float, float, float, float]]:
    """node id -> (x0, y0, x1, y1) with the title bar, and the room the node takes after a run."""
    out = {}
    for node in workflow["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        out[node["id"]] = (x, y - TITLE_HEIGHT, x + w, y + h + GROWS.get(node["type"], 0))
    return out


def test_the_workflows_are_numbered_lite_first_and_each_has_its_api_copy():
    assert [p.name.split()[:2] for p in UI] == [["FlashHead", str(i)] for i in range(1, len(UI) + 1)]
    assert "Lite" in UI[0].stem and "start here" in UI[0].stem
    assert sorted(p.name for p in (WORKFLOWS / "api").glob("*.json")) == [p.name for p in UI]
    for path in UI:  # a name the template browser and its thumbnail URL carry as they are
        assert re.fullmatch(r"[A-Za-z0-9 ()]+", path.stem), path.name


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_no_node_covers_another_as_saved_with_room_to_grow(path):
    boxes = rects(load(path))
    names = {n["id"]: n.get("title") or n["type"] for n in load(path)["nodes"]}
    hits = []
    for a, ra in boxes.items():
        for b, rb in boxes.items():
            if a < b and ra[0] < rb[2] + GAP and rb[0] < ra[2] + GAP and ra[1] < rb[3] + GAP and rb[1] < ra[3] + GAP:
                hits.append((names[a], names[b]))
    assert hits == []


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_inputs_are_the_shipped_examples_and_nothing_is_deprecated(path):
    workflow, api = load(path), load(WORKFLOWS / "api" / path.name)
    named = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in ("LoadImage", "LoadAudio")]
    named_api = [n["inputs"].get("image") or n["inputs"].get("audio") for n in api.values()
                 if n["class_type"] in ("LoadImage", "LoadAudio")]
    assert sorted(named) == sorted(named_api)
    licence = (INPUTS / "LICENSE.md").read_text()
    for name in named:
        assert (INPUTS / name).is_file() and name.startswith("flashhead_example_") and f"`{name}`" in licence, name
    types = {n["type"] for n in workflow["nodes"]} | {n["class_type"] for n in api.values()}
    assert not types & DEPRECATED


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_every_model_file_has_its_download_address_and_the_note_a_command_that_works_in_comfyui(path):
    workflow = load(path)
    models = {m["name"]: m for m in workflow["models"]}
    pro = any("Model_Pro" in n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "FlashHeadModelLoader")
    needed = [f"SoulX-FlashHead-1_3B/Model_{'Pro' if pro else 'Lite'}/diffusion_pytorch_model.safetensors",
              "SoulX-FlashHead-1_3B/wav2vec2-base-960h/model.safetensors"]
    needed += [] if pro else ["SoulX-FlashHead-1_3B/VAE_LTX/diffusion_pytorch_model.safetensors"]
    for name in needed:
        assert name in models and models[name]["url"].startswith("https://") and models[name]["directory"], name
        assert models[name]["url"].endswith(name.rpartition("/")[2]), models[name]
    # frontend 1.27 offers only .safetensors / .sft downloads (any other entry is an alert that cannot be acted on):
    # the .pth files (Pro's VAE, the upscaler) are named in the Note instead
    assert all(m["name"].endswith((".safetensors", ".sft")) for m in workflow["models"]), workflow["models"]
    notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note")
    assert "-m flashhead_core download" in notes and "flashhead download" not in notes.replace("flashhead_core", "")
    for upscaler in [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "UpscaleModelLoader"]:
        assert upscaler in notes and "https://github.com/xinntao/Real-ESRGAN/releases" in notes
