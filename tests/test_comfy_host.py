"""The pack inside a real ComfyUI 0.3.64, built from ../shared/comfy_host (no mock of `comfy.*`).

Once per session the host is built with the shared setup.sh (reused when $COMFY_HOST_DIR already holds it), and tiny
random-weight checkpoints are written with `flashhead make-tiny-checkpoint` in the released layout and linked as
models/flashhead/SoulX-FlashHead-1_3B. Every check goes through the shared check_pack.py: the pack is pip-installed
(requirements.txt, as ComfyUI-Manager does), imports, registers every FlashHead node, and each shipped API workflow
runs end to end; the MP4 it writes is read back (frame count, audio track). One run is interrupted mid-video and must
end as interrupted with no file left; 20 prompts queued in one ComfyUI keep its memory flat and an unchanged graph
re-executes nothing; one UI workflow is dropped on the real web frontend (headless Chromium). The node unit tests
(tests/test_nodes.py) run here too, in the host's Python, where `comfy` is importable.

Where ../shared/comfy_host is absent (a user's checkout) everything here skips; where it is present, any failure
fails. Speed: the workflows run at 64x64 (the shipped 512x512 is set back to 64 in a copy) on 1-3 s of audio.
Environment: COMFY_HOST_DIR (default ~/comfy_host), FLASHHEAD_HOST_REBUILD=1 re-runs setup.sh even when the host
exists, FLASHHEAD_HOST_MEMORY=1 adds the 10 s vs 60 s peak-RSS comparison (about two minutes more).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashhead_core.testing.media import write_wav

REPO = Path(__file__).resolve().parent.parent
SHARED_HOST = Path(os.environ.get("FLASHHEAD_SHARED_HOST", REPO.parent / "shared" / "comfy_host"))
HOST_DIR = Path(os.environ.get("COMFY_HOST_DIR", Path.home() / "comfy_host")).expanduser()
PACK_DIR_NAME = "ComfyUI-FlashHead"  # the folder name under custom_nodes/, as a git clone names it
RELEASE = "SoulX-FlashHead-1_3B"
NODE_IDS = ["FlashHeadModelLoader", "FlashHeadVAELoader", "FlashHeadAudioEncoderLoader", "FlashHeadAudioEncode",
            "FlashHeadSampler", "FlashHeadVAEDecode", "FlashHeadTalkingVideo"]
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
TEST_SIZE = 64
# The TTS workflow names this node (ComfyUI-F5-TTS); its test runs the same graph with LoadAudio in its place.
TTS_NODES = {"F5TTSAudioInputs"}
AUDIO_FILES = {"speech.wav": (2.0, 44100, 2), "speech_24k_mono.wav": (1.52, 24000, 1),
               "voice_sample.wav": (1.0, 24000, 1)}

pytestmark = pytest.mark.skipif(not (SHARED_HOST / "setup.sh").is_file(),
                                reason=f"{SHARED_HOST} is absent (as on a user's machine): the real-ComfyUI tests need "
                                       f"the shared host kit (setup.sh, check_pack.py)")

# check_pack.py reads /history right after the websocket says 'execution_success'; ComfyUI stores the history a
# moment later (the prompt worker finishes after sending that event, and a GC pause after a first run with big
# models can make the gap visible). This runs check_pack unchanged, except that an empty history after a finished run
# is read again for up to 20 s.
CHECK_PACK_RUNNER = f"""
import json, os, sys, time
sys.path.insert(0, {str(SHARED_HOST)!r})
import check_pack

_run_prompt = check_pack.run_prompt

def run_prompt(cp, port, prompt, *args, **kwargs):
    run = _run_prompt(cp, port, prompt, *args, **kwargs)
    start = time.monotonic()
    while (not run["history"] and run["outcome"] in ("success", "error", "interrupted") and cp.alive()
           and time.monotonic() < start + 20):
        time.sleep(0.2)
        _, history = check_pack.http_json(port, "/history/" + run["prompt_id"])
        run["history"] = history.get(run["prompt_id"], {{}}) if isinstance(history, dict) else {{}}
        if run["history"]:
            print(f"note: /history was empty right after the run; read again after "
                  f"{{time.monotonic() - start:.1f}} s", file=sys.stderr)
    return run

check_pack.run_prompt = run_prompt


def rss_mb(pid):
    for line in open(f"/proc/{{pid}}/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)


# FLASHHEAD_QUEUE=<prompts.json>: after the workflow, queue each prompt of that list in the same ComfyUI, one after
# the other, and write what each did (outcome, nodes executed, RSS of ComfyUI afterwards) to <prompts.json>.out.
queue = os.environ.get("FLASHHEAD_QUEUE")
if queue:
    _first = check_pack.run_prompt

    def run_queue(cp, port, prompt, *args, **kwargs):
        run = _first(cp, port, prompt, *args, **kwargs)
        runs = [{{"outcome": run["outcome"], "executed": run["order"], "rss_mb": rss_mb(cp.pid)}}]
        for queued in json.load(open(queue)):
            if runs[-1]["outcome"] != "success":
                break
            later = _first(cp, port, queued, *args, **kwargs)
            runs.append({{"outcome": later["outcome"], "executed": later["order"], "rss_mb": rss_mb(cp.pid),
                         "error": later["error"]}})
        json.dump(runs, open(queue + ".out", "w"))
        return run

    check_pack.run_prompt = run_queue
sys.exit(check_pack.main(sys.argv[1:]))
"""


# --- session fixtures ------------------------------------------------------------------------------------------------

def _host_ready() -> bool:
    info = HOST_DIR / "HOST_INFO.txt"
    commit = (SHARED_HOST / "COMFYUI_COMMIT").read_text().strip() if (SHARED_HOST / "COMFYUI_COMMIT").is_file() else ""
    return (info.is_file() and (HOST_DIR / "ComfyUI" / "main.py").is_file()
            and (HOST_DIR / "venv" / "bin" / "python").is_file() and commit in info.read_text())


@pytest.fixture(scope="session")
def host() -> Path:
    """The ComfyUI host: built with setup.sh unless it is already there (FLASHHEAD_HOST_REBUILD=1 forces it)."""
    if os.environ.get("FLASHHEAD_HOST_REBUILD") == "1" or not _host_ready():
        result = subprocess.run(["bash", str(SHARED_HOST / "setup.sh")], capture_output=True, text=True,
                                env={**os.environ, "COMFY_HOST_DIR": str(HOST_DIR)}, timeout=1200)
        if result.returncode != 0:
            pytest.fail(f"building the ComfyUI host failed (setup.sh exit {result.returncode}):\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    assert _host_ready(), f"setup.sh finished but {HOST_DIR} is not a complete host"
    return HOST_DIR


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("comfy_host_run")


@pytest.fixture(scope="session")
def tiny_checkpoint(work) -> Path:
    """`flashhead make-tiny-checkpoint` (both variants in one root, as the release holds both)."""
    root = work / RELEASE
    result = subprocess.run([sys.executable, "-m", "flashhead_core", "make-tiny-checkpoint", str(root),
                             "--variant", "both"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return root


def _write_wav(path: Path, seconds: float, rate: int, channels: int) -> None:
    """16-bit PCM with a speech-like envelope (LoadAudio decodes it with PyAV like any user file)."""
    t = np.arange(int(round(seconds * rate))) / rate
    voice = 0.3 * np.sin(2 * np.pi * 170 * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t))
    write_wav(path, np.repeat(voice[:, None], channels, axis=1), rate)


def _portrait(path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (160, 200), (90, 120, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((35, 30, 125, 150), fill=(225, 185, 160))
    draw.ellipse((58, 70, 70, 82), fill=(30, 30, 30))
    draw.ellipse((90, 70, 102, 82), fill=(30, 30, 30))
    draw.rectangle((65, 115, 95, 122), fill=(150, 50, 60))
    image.save(path)


@pytest.fixture(scope="session")
def inputs(work) -> Path:
    """ComfyUI input files the workflows name: portrait.png and the audio of AUDIO_FILES."""
    folder = work / "inputs"
    folder.mkdir()
    _portrait(folder / "portrait.png")
    for name, (seconds, rate, channels) in AUDIO_FILES.items():
        _write_wav(folder / name, seconds, rate, channels)
    return folder


def _long_speech(work: Path, seconds: float, rate: int = 44100, channels: int = 2) -> Path:
    """An input folder whose speech.wav lasts `seconds` (for the interrupt and memory runs)."""
    folder = work / f"inputs_{seconds:g}s_{rate}_{channels}"
    if not folder.is_dir():
        folder.mkdir()
        _portrait(folder / "portrait.png")
        _write_wav(folder / "speech.wav", seconds, rate, channels)
    return folder


def check_pack(host: Path, work: Path, label: str, *args: str, timeout: float = 900) -> tuple[int, dict, str]:
    """Run check_pack.py on this pack -> (exit code, its full JSON summary, its stderr)."""
    summary = work / f"summary_{label}.json"
    cmd = [sys.executable, "-c", CHECK_PACK_RUNNER, "--pack", str(REPO), "--name", PACK_DIR_NAME,
           "--host-dir", str(host), "--json-out", str(summary), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    data = json.loads(summary.read_text()) if summary.is_file() else {}
    return result.returncode, data, result.stderr + result.stdout[-2000:]


@pytest.fixture(scope="session")
def installed(host, work) -> dict:
    """First run: pip-install requirements.txt into the host (as ComfyUI-Manager does), start ComfyUI, and check
    that the pack imports and registers every node. Later runs skip the install."""
    code, summary, log = check_pack(host, work, "install", "--expect-nodes", *NODE_IDS)
    assert code == 0, f"the pack did not install/import/register in ComfyUI:\n{log}"
    return summary


def _models(tiny_checkpoint: Path) -> list[str]:
    return ["--models", f"{tiny_checkpoint}=models/flashhead/{RELEASE}"]


# --- the pack in the host --------------------------------------------------------------------------------------------

def test_pack_imports_and_registers_every_node(installed):
    pack = installed["pack"]
    assert pack["requirements"]["pip_exit"] == 0
    assert sorted(n["name"] for n in pack["nodes"]) == sorted(NODE_IDS)
    assert {n["category"] for n in pack["nodes"]} == {"FlashHead"}
    assert all(n["display_name"].startswith("FlashHead ") for n in pack["nodes"])
    # UI workflows in workflows/ appear in ComfyUI's template browser (GET /workflow_templates); api/ does not.
    assert sorted(pack["example_workflows"]) == sorted(p.stem for p in UI_WORKFLOWS)


def _api_prompt_for_test(path: Path) -> tuple[dict, float]:
    """The shipped API workflow at TEST_SIZE, with any TTS node replaced by LoadAudio of a 24 kHz mono file (same id,
    so every link stays); returns (prompt, seconds of the speech the FlashHead nodes hear)."""
    prompt = json.loads(path.read_text())
    for node in prompt.values():
        if node["class_type"].startswith("FlashHead"):
            for key in ("width", "height"):
                if key in node["inputs"]:
                    node["inputs"][key] = TEST_SIZE
        if node["class_type"] in TTS_NODES:
            node.update(class_type="LoadAudio", inputs={"audio": "speech_24k_mono.wav"},
                        _meta={"title": "LoadAudio (in place of the TTS node)"})
    heard = {prompt[src[0]]["inputs"]["audio"] for node in prompt.values() if node["class_type"].startswith("FlashHead")
             for src in [node["inputs"].get("audio")] if isinstance(src, list)}
    assert len(heard) == 1, f"{path.name}: expected one speech input for FlashHead, found {heard}"
    return prompt, AUDIO_FILES[heard.pop()][0]


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=[p.stem for p in API_WORKFLOWS])
def test_api_workflow_runs_end_to_end(workflow, installed, host, work, tiny_checkpoint, inputs):
    from flashhead_core.video_io import read_video_info

    prompt, seconds = _api_prompt_for_test(workflow)
    if workflow.stem == "flashhead_tts":
        assert TTS_NODES & {n["class_type"] for n in json.loads(workflow.read_text()).values()}
    test_copy = work / f"{workflow.stem}_{TEST_SIZE}.json"
    test_copy.write_text(json.dumps(prompt))
    output = work / f"output_{workflow.stem}"
    code, summary, log = check_pack(host, work, workflow.stem, "--no-install-requirements", "--workflow",
                                    str(test_copy), "--inputs", str(inputs), *_models(tiny_checkpoint),
                                    "--output-dir", str(output), "--expect-nodes", *NODE_IDS)
    assert code == 0, f"{workflow.name} failed in ComfyUI:\n{log}"
    run = summary["workflow"]
    assert run["outcome"] == "success"
    videos = [Path(o["path"]) for o in run["outputs"] if o["path"].endswith(".mp4")]
    assert len(videos) == 1, run["outputs"]
    info = read_video_info(videos[0])
    assert info.frames == round(seconds * 25), f"{workflow.name}: {info}"
    assert info.fps == 25.0 and info.audio_channels and info.audio_sample_rate
    assert abs(info.audio_duration - seconds) < 0.1
    # every FlashHead node that reports progress reached its total
    for node in run["nodes"]:
        if "progress" in node:
            value, total = node["progress"].split(" ")[0].split("/")
            assert value == total, node


def test_interrupt_mid_video_ends_interrupted_and_leaves_no_file(installed, host, work, tiny_checkpoint):
    """Three minutes of speech (far more than any machine generates in the 10 s before POST /interrupt): the run must
    end as 'interrupted' after at least one chunk, and the output folder must hold nothing (no MP4, no partial)."""
    prompt, _ = _api_prompt_for_test(REPO / "workflows" / "api" / "flashhead_lite.json")
    test_copy = work / "interrupt.json"
    test_copy.write_text(json.dumps(prompt))
    output = work / "output_interrupt"
    code, summary, log = check_pack(host, work, "interrupt", "--no-install-requirements", "--workflow",
                                    str(test_copy), "--inputs", str(_long_speech(work, 180.0, 16000, 1)),
                                    *_models(tiny_checkpoint), "--output-dir", str(output),
                                    "--interrupt-after", "10")
    assert code == 0, f"the interrupt check failed:\n{log}"
    run = summary["workflow"]
    assert run["outcome"] == "interrupted"
    talking = next(n for n in run["nodes"] if n["class_type"] == "FlashHeadTalkingVideo")
    assert "progress" in talking, "interrupted before the video started: raise --interrupt-after"
    assert [p for p in output.rglob("*") if p.is_file()] == [], "files left behind after the interrupt"


def _chromium() -> str | None:
    if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=600)
        if Path("/usr/bin/chromium").exists():
            return "/usr/bin/chromium"
    return None


def _as_returning_user(host: Path) -> None:
    """Mark the frontend's first-visit tutorial as seen (the setting the page itself writes on a first visit). On a
    fresh host the page opens its "Get Started with a Template" dialog a moment after loading, racing with the kit's
    Escape; it then counts as an alert although it has nothing to do with the workflow under test."""
    settings = host / "ComfyUI" / "user" / "default" / "comfy.settings.json"
    values = json.loads(settings.read_text()) if settings.is_file() else {}
    if values.get("Comfy.TutorialCompleted") is not True:
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({**values, "Comfy.TutorialCompleted": True}, indent=4))


def test_ui_workflow_runs_from_the_real_frontend(installed, host, work, tiny_checkpoint, inputs):
    """Drop the Lite UI workflow on ComfyUI's own web page (headless Chromium), as a user would: no missing node, no
    alert; the prompt the frontend builds (what the Run button queues) equals the API copy and runs end to end.
    (A full run rather than check_pack's --load-only, which crashes while printing its summary in this kit.)"""
    if _chromium() is None:
        pytest.skip("no Chromium (apt-get install -y chromium needs root and the Debian archive)")
    _as_returning_user(host)
    workflow = json.loads((REPO / "workflows" / "flashhead_lite.json").read_text())
    talking = next(n for n in workflow["nodes"] if n["type"] == "FlashHeadTalkingVideo")
    talking["widgets_values"][:2] = [TEST_SIZE, TEST_SIZE]  # width, height: the first two widgets
    test_copy = work / "flashhead_lite_ui.json"
    test_copy.write_text(json.dumps(workflow))
    code, summary, log = check_pack(host, work, "frontend", "--no-install-requirements", "--workflow", str(test_copy),
                                    "--frontend", "--screenshot", str(work / "frontend.png"), "--inputs", str(inputs),
                                    *_models(tiny_checkpoint), "--output-dir", str(work / "output_frontend"))
    assert code == 0, f"the frontend did not load and run the Lite UI workflow cleanly:\n{log}"
    assert summary["frontend"]["missing_node_types"] == [] and summary["frontend"]["alerts"] == []
    built = summary["workflow"]["api_prompt"]
    expected, _ = _api_prompt_for_test(REPO / "workflows" / "api" / "flashhead_lite.json")
    for node_id, node in expected.items():
        frontend_inputs = {k: v for k, v in built[node_id]["inputs"].items() if k != "audioUI"}  # a UI-only widget
        assert (built[node_id]["class_type"], frontend_inputs) == (node["class_type"], node["inputs"]), node_id
    assert set(built) == set(expected)
    (video,) = [o["path"] for o in summary["workflow"]["outputs"]]
    assert video.endswith(".mp4")


def test_node_unit_tests_pass_inside_the_host(installed, host):
    """tests/test_nodes.py in ComfyUI's own Python (comfy importable): every test must run, none may skip."""
    python = host / "venv" / "bin" / "python"
    if subprocess.run([str(python), "-c", "import pytest"], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "pytest"],
                       check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FLASHHEAD_REQUIRE_REFERENCE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(host / "ComfyUI")
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                             "tests/test_nodes.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " skipped" not in result.stdout.splitlines()[-1], result.stdout[-3000:]


# --- many prompts in one ComfyUI --------------------------------------------------------------------------------------

QUEUED_PROMPTS = 20
QUEUE_AUDIO = {f"speech_{i}.wav": (0.8 + 0.3 * i, 22050 * (1 + i % 2), 1 + i % 2) for i in range(4)}


def test_twenty_prompts_keep_memory_flat_and_an_unchanged_graph_reruns_nothing(installed, host, work,
                                                                               tiny_checkpoint, monkeypatch):
    """20 prompts, each with another seed and one of four speech files (0.8-1.7 s, 22/44 kHz, mono/stereo), queued one
    after the other in one ComfyUI: all complete; ComfyUI's RSS after the 20th is within 10% of after the 2nd (the
    first run loads the models); the 20th queued again unchanged executes no node (ComfyUI's cache)."""
    folder = work / "inputs_queue"
    folder.mkdir()
    _portrait(folder / "portrait.png")
    for name, (seconds, rate, channels) in QUEUE_AUDIO.items():
        _write_wav(folder / name, seconds, rate, channels)
    base, _ = _api_prompt_for_test(REPO / "workflows" / "api" / "flashhead_lite.json")
    prompts = []
    for index in range(QUEUED_PROMPTS):
        prompt = json.loads(json.dumps(base))
        prompt["5"]["inputs"]["audio"] = sorted(QUEUE_AUDIO)[index % len(QUEUE_AUDIO)]
        prompt["6"]["inputs"]["seed"] = 1000 + index
        prompts.append(prompt)
    first_prompt = work / "queue_first.json"
    first_prompt.write_text(json.dumps(prompts[0]))
    queue = work / "queue.json"
    queue.write_text(json.dumps(prompts[1:] + [prompts[-1]]))  # the last one twice: the repeat must be all cached
    monkeypatch.setenv("FLASHHEAD_QUEUE", str(queue))  # read by CHECK_PACK_RUNNER in the check_pack process
    code, summary, log = check_pack(host, work, "queue", "--no-install-requirements", "--workflow", str(first_prompt),
                                    "--inputs", str(folder), *_models(tiny_checkpoint),
                                    "--output-dir", str(work / "output_queue"))
    assert code == 0, log
    runs = json.loads(Path(str(queue) + ".out").read_text())
    assert [r["outcome"] for r in runs] == ["success"] * (QUEUED_PROMPTS + 1), runs
    assert all("6" in r["executed"] for r in runs[:QUEUED_PROMPTS]), "a new seed or audio must run the video node"
    assert runs[-1]["executed"] == [], f"the unchanged graph re-executed {runs[-1]['executed']}"
    second, twentieth = runs[1]["rss_mb"], runs[QUEUED_PROMPTS - 1]["rss_mb"]
    print(f"\nComfyUI RSS after prompt 2: {second} MB, after prompt 20: {twentieth} MB "
          f"(ratio {twentieth / second:.3f}); all: {[r['rss_mb'] for r in runs]}")
    assert twentieth <= 1.1 * second, [r["rss_mb"] for r in runs]
    videos = list((work / "output_queue").rglob("*.mp4"))
    assert len(videos) == QUEUED_PROMPTS and not [p for p in (work / "output_queue").rglob("*") if "partial" in p.name]


# --- memory: peak RSS for 10 s vs 60 s of speech (opt-in) -------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("FLASHHEAD_HOST_MEMORY") != "1",
                    reason="set FLASHHEAD_HOST_MEMORY=1 to measure ComfyUI's peak RSS for 10 s vs 60 s of speech")
def test_talking_video_memory_does_not_grow_with_audio_length(installed, host, work, tiny_checkpoint):
    prompt, _ = _api_prompt_for_test(REPO / "workflows" / "api" / "flashhead_lite.json")
    size = int(os.environ.get("FLASHHEAD_MEMORY_SIZE", "256"))
    prompt["6"]["inputs"].update(width=size, height=size)
    test_copy = work / "memory.json"
    test_copy.write_text(json.dumps(prompt))
    peaks = {}
    for seconds in (10.0, 60.0):
        code, summary, log = check_pack(host, work, f"memory_{seconds:g}", "--no-install-requirements",
                                        "--workflow", str(test_copy), "--inputs", str(_long_speech(work, seconds)),
                                        *_models(tiny_checkpoint), "--output-dir", str(work / f"out_mem_{seconds:g}"))
        assert code == 0, log
        peaks[seconds] = summary["comfyui"]["peak_rss_mb"]
    ratio = peaks[60.0] / peaks[10.0]
    print(f"\npeak RSS of ComfyUI, FlashHead Talking Video (tiny Lite, {size}x{size}): "
          f"10 s {peaks[10.0]} MB, 60 s {peaks[60.0]} MB, ratio {ratio:.3f}")
    assert ratio <= 1.2, peaks
