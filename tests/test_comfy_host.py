"""The pack inside real ComfyUI hosts, built from ../shared/comfy_host (no mock of `comfy.*`): 0.3.64 (frontend 1.27.10),
0.33.0 (frontend 1.49.6) and 0.33.0 with frontend 1.58.1.

Every test here runs once per host (the `host` fixture is parametrized over HOSTS; pytest runs all tests of one host,
then the next). Each host is built once with the shared setup.sh (0.3.64 from ComfyUI-0.3.64.tar.gz into
$COMFY_HOST_DIR, 0.33.0 from ComfyUI-0.33.0.tar.gz into $COMFY_HOST_DIR_033 with COMFYUI_TARBALL set, and again beside
it into $COMFY_HOST_DIR_033 + "_frontend_1.58.1", where comfyui-frontend-package 1.58.1 is then pip-installed into the
host's environment, as ComfyUI-Manager updates a frontend), reused when it is already there; the commit the kit names
for the tarball and the installed frontend tell them apart (`test_host_is_the_expected_comfyui`). Tiny random-weight
checkpoints are written with `flashhead make-tiny-checkpoint` in the released layout and linked as
models/flashhead/SoulX-FlashHead-1_3B; the workflows' portrait and speech are the pack's own examples (the pack copies
them into input/). Every check goes through the shared check_pack.py: the pack is pip-installed (requirements.txt, as
ComfyUI-Manager does), imports, registers every FlashHead node, and each shipped API workflow runs end to end; the MP4
it writes is read back (frame count, size, audio track). The TTS workflow runs DJZ-Speak (espeak-ng, from the kit's
packs/) beside the pack and its MP4's audio must match the speech that node made; the upscale workflow runs ComfyUI's
UpscaleModelLoader + ImageUpscaleWithModel on a tiny Real-ESRGAN x2plus written by tests/drivers/host_tiny_upscaler.py
(spandrel must recognise it). One run is interrupted mid-video and must end as interrupted with no file left; 20
prompts queued in one ComfyUI keep its memory flat and an unchanged graph re-executes nothing. In the real web
frontend (headless Chromium, drivers in tests/drivers/): every UI workflow is run from the page and afterwards no node
covers another (screenshots); the Lite one is queued twice (previews, then the finished MP4 in the node); the live
player is judged from what the page recorded. The node unit tests (tests/test_nodes.py) run here too, in each host's
Python, where `comfy` is importable.

Where ../shared/comfy_host is absent (a user's checkout) everything here skips; where it is present, any failure
fails. Speed: the workflows run at 64x64 (the shipped 512x512 is set back to 64 in a copy) on a few seconds of audio.
Environment: COMFY_HOST_DIR (default ~/comfy_host), COMFY_HOST_DIR_033 (default ~/comfy_host_033),
FLASHHEAD_HOST_REBUILD=1 re-runs setup.sh even when a host exists, FLASHHEAD_SCREENSHOT_DIR (default a pytest tmp dir),
FLASHHEAD_HOST_MEMORY=1 adds the 10 s vs 60 s peak-RSS comparison (about two minutes more per host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from drivers import browser_support
from test_live_player import freezes, judged_samples
from flashhead_core.testing.media import write_wav

REPO = Path(__file__).resolve().parent.parent
DRIVERS = REPO / "tests" / "drivers"  # the Playwright drivers and host fixtures, run as scripts in a host's Python
SHARED_HOST = Path(os.environ.get("FLASHHEAD_SHARED_HOST", REPO.parent / "shared" / "comfy_host"))
PACK_DIR_NAME = "ComfyUI-FlashHead"  # the folder name under custom_nodes/, as a git clone names it
RELEASE = "SoulX-FlashHead-1_3B"
NODE_IDS = ["FlashHeadModelLoader", "FlashHeadVAELoader", "FlashHeadAudioEncoderLoader", "FlashHeadAudioEncode",
            "FlashHeadSampler", "FlashHeadVAEDecode", "FlashHeadTalkingVideo", "FlashHeadLoraLoader",
            "FlashHeadIdentityTimeline", "FlashHeadBatchSampler", "FlashHeadAudioBatch", "FlashHeadFaceCrop",
            "FlashHeadPasteBack"]
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))  # the API copy of each has the same name in api/
LITE_UI = REPO / "workflows" / "FlashHead 1 Lite talking video (start here).json"
LITE_API = REPO / "workflows" / "api" / LITE_UI.name
EXAMPLE_INPUTS = REPO / "workflows" / "inputs"  # what the workflows name; the pack copies them into input/
TEST_SIZE = 64
# The TTS workflow's speech comes from DJZSpeak_v1 (ComfyUI-DJZ-Speak, espeak-ng), a pack the kit ships for chain tests:
# it really runs beside this pack (check_pack --with-pack); the test also saves its AUDIO (SaveAudio) to compare.
TTS_NODES = {"DJZSpeak_v1"}
TTS_PACK = SHARED_HOST / "packs" / "ComfyUI-DJZ-Speak-f01aa4d.tar.gz"
# The upscale workflow's model upscaler; the test writes a tiny random-weight one under this name.
UPSCALER = "RealESRGAN_x2plus.pth"
UPSCALE = 2
LORA = "my_wan_lora.safetensors"  # the LoRA workflow's file: a tiny one for the tiny DiT, written by the test

# Slow (two ComfyUI hosts built and started many times: minutes): deselected by the quick `python -m pytest -q`,
# run by .ci/run (`-m "slow or not slow"`).
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_HOST / "setup.sh").is_file(),
                                 reason=f"{SHARED_HOST} is absent (as on a user's machine): the real-ComfyUI tests "
                                        f"need the shared host kit (setup.sh, check_pack.py)")]

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

# FLASHHEAD_PLAYER=<config.json> ({{"python", "script", "args"}}): after the workflow ran, while this ComfyUI still runs,
# drive its web page with tests/drivers/frontend_video_player.py (queues the UI workflow from the frontend, checks the player)
# and write {{"rc", "stdout", "stderr"}} to <config.json>.out.
player = os.environ.get("FLASHHEAD_PLAYER")
if player:
    import subprocess
    config = json.load(open(player))
    _before_player = check_pack.run_prompt

    def run_then_player(cp, port, prompt, *args, **kwargs):
        run = _before_player(cp, port, prompt, *args, **kwargs)
        out = {{"rc": None, "stdout": "", "stderr": "the workflow did not succeed: " + str(run["outcome"])}}
        if run["outcome"] == "success":
            r = subprocess.run([config["python"], config["script"], "--port", str(port), *config["args"]],
                               capture_output=True, text=True, timeout=config.get("timeout", 900))
            out = {{"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-6000:]}}
        json.dump(out, open(player + ".out", "w"))
        return run

    check_pack.run_prompt = run_then_player
sys.exit(check_pack.main(sys.argv[1:]))
"""


# --- session fixtures ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostSpec:
    """One ComfyUI version to test in: its tarball in the kit, the commit recorded for it, where it is built, and its
    web frontend: the comfyui_frontend_package its requirements pin, or (`frontend_pip`) a newer one pip-installed
    into the host's environment afterwards, as a ComfyUI-Manager user updates the frontend."""
    version: str
    tarball: str
    commit_file: str
    dir_env: str
    default_dir: str
    frontend: str
    frontend_pip: bool = False

    @property
    def id(self) -> str:
        return f"{self.version}-frontend-{self.frontend}" if self.frontend_pip else self.version

    @property
    def dir(self) -> Path:
        base = Path(os.environ.get(self.dir_env) or Path.home() / self.default_dir).expanduser()
        return base.with_name(f"{base.name}_frontend_{self.frontend}") if self.frontend_pip else base

    @property
    def commit(self) -> str:
        return (SHARED_HOST / self.commit_file).read_text().strip()


HOSTS = [HostSpec("0.3.64", "ComfyUI-0.3.64.tar.gz", "COMFYUI_COMMIT", "COMFY_HOST_DIR", "comfy_host", "1.27.10"),
         HostSpec("0.33.0", "ComfyUI-0.33.0.tar.gz", "ComfyUI-0.33.0.commit", "COMFY_HOST_DIR_033", "comfy_host_033",
                  "1.49.6"),
         # the newest frontend the package index has (ComfyUI 0.47 ships 1.58.5), beside $COMFY_HOST_DIR_033
         HostSpec("0.33.0", "ComfyUI-0.33.0.tar.gz", "ComfyUI-0.33.0.commit", "COMFY_HOST_DIR_033", "comfy_host_033",
                  "1.58.1", frontend_pip=True)]


def _host_info(spec: HostSpec) -> dict:
    info = spec.dir / "HOST_INFO.txt"
    if not info.is_file():
        return {}
    fields = {}
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip() and not line.startswith(" "):
            fields[key.strip()] = value.strip()
    return fields


def _host_ready(spec: HostSpec) -> bool:
    info = _host_info(spec)
    return ((spec.dir / "ComfyUI" / "main.py").is_file() and (spec.dir / "venv" / "bin" / "python").is_file()
            and info.get("comfyui_commit") == spec.commit and info.get("comfyui_version") == spec.version)


def _installed_frontend(spec: HostSpec) -> str | None:
    """The comfyui-frontend-package version in the host's environment (what ComfyUI serves)."""
    result = subprocess.run([str(spec.dir / "venv" / "bin" / "python"), "-c", "import importlib.metadata as m; "
                             "print(m.version('comfyui-frontend-package'))"], capture_output=True, text=True)
    return result.stdout.strip() or None


@pytest.fixture(scope="session", params=HOSTS, ids=[h.id for h in HOSTS])
def host_spec(request) -> HostSpec:
    return request.param


@pytest.fixture(scope="session")
def host(host_spec) -> Path:
    """The ComfyUI host of this version: built once with setup.sh unless it is already there (FLASHHEAD_HOST_REBUILD=1
    forces it), then reused by every test of that version. pytest groups the tests by host, one version after the
    other."""
    spec = host_spec
    if os.environ.get("FLASHHEAD_HOST_REBUILD") == "1" or not _host_ready(spec):
        env = {**os.environ, "COMFY_HOST_DIR": str(spec.dir)}
        env.pop("COMFYUI_TARBALL", None)
        if spec.tarball != HOSTS[0].tarball:
            env["COMFYUI_TARBALL"] = str(SHARED_HOST / spec.tarball)
        result = subprocess.run(["bash", str(SHARED_HOST / "setup.sh")], capture_output=True, text=True, env=env,
                                timeout=1800)
        if result.returncode != 0:
            pytest.fail(f"building the ComfyUI {spec.version} host failed (setup.sh exit {result.returncode}):\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    assert _host_ready(spec), f"setup.sh finished but {spec.dir} is not a complete ComfyUI {spec.version} host"
    if spec.frontend_pip and _installed_frontend(spec) != spec.frontend:
        result = subprocess.run([str(spec.dir / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
                                 "--disable-pip-version-check", f"comfyui-frontend-package=={spec.frontend}"],
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"pip could not install comfyui-frontend-package=={spec.frontend} into the {spec.id} host:\n"
                        f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return spec.dir


@pytest.fixture(scope="session")
def shared_work(tmp_path_factory) -> Path:
    """Files every host uses (tiny checkpoints, inputs)."""
    return tmp_path_factory.mktemp("comfy_host_shared")


@pytest.fixture(scope="session")
def work(tmp_path_factory, host_spec) -> Path:
    """This host's summaries, outputs and test copies."""
    return tmp_path_factory.mktemp(f"comfy_host_{host_spec.id}")


@pytest.fixture(scope="session")
def tiny_checkpoint(shared_work) -> Path:
    """`flashhead make-tiny-checkpoint` (both variants in one root, as the release holds both)."""
    root = shared_work / RELEASE
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


def _example_seconds(name: str) -> float:
    """Seconds of one of the pack's example speech files (WAV)."""
    import wave

    with wave.open(str(EXAMPLE_INPUTS / name)) as wav:
        return wav.getnframes() / wav.getframerate()


def _example_size(name: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(EXAMPLE_INPUTS / name) as image:
        return image.size


def _own_inputs(prompt: dict, portrait: str = "portrait.png", speech: str = "speech.wav") -> dict:
    """The prompt with its (first) Load Image / Load Audio reading the test's own files instead of the examples."""
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = portrait
        if node["class_type"] == "LoadAudio":
            node["inputs"]["audio"] = speech
    return prompt


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


def test_host_is_the_expected_comfyui(installed, host_spec):
    """The host under test is the ComfyUI this parameter names: setup.sh recorded the kit's commit for that tarball
    (each tarball has its own), the running server reports the version, and its frontend is the one it pins."""
    info = _host_info(host_spec)
    assert info["comfyui_commit"] == host_spec.commit and info["comfyui_version"] == host_spec.version, info
    assert len({(h.commit, h.frontend) for h in HOSTS}) == len(HOSTS)
    assert len({h.dir.resolve() for h in HOSTS}) == len(HOSTS)
    assert installed["comfyui"]["version"] == host_spec.version, installed["comfyui"]
    assert _installed_frontend(host_spec) == host_spec.frontend


def _api_prompt_for_test(path: Path) -> tuple[dict, float | None]:
    """The shipped API workflow at TEST_SIZE; returns (prompt, seconds of the speech the FlashHead nodes hear, None when
    a TTS node makes it: then a SaveAudio node (id "tts_speech") is added that saves the TTS node's AUDIO)."""
    prompt = json.loads(path.read_text())
    for node in prompt.values():
        if node["class_type"].startswith("FlashHead"):
            for key in ("width", "height"):
                if key in node["inputs"]:
                    node["inputs"][key] = TEST_SIZE
    heard = sorted({src[0] for node in prompt.values() if node["class_type"].startswith("FlashHead")
                    for src in [node["inputs"].get("audio")] if isinstance(src, list)})
    if len(heard) > 1:  # several videos (the continue workflow): the seconds of each, in order
        return prompt, [_example_seconds(prompt[h]["inputs"]["audio"]) for h in heard]
    assert len(heard) == 1, f"{path.name}: expected a speech input for FlashHead, found {heard}"
    source = prompt[heard.pop()]
    if source["class_type"] == "FlashHeadAudioBatch":  # batched streams: each lasts as long as the longest track
        tracks = [prompt[src[0]]["inputs"]["audio"] for src in source["inputs"].values()]
        return prompt, [max(_example_seconds(name) for name in tracks)] * len(tracks)
    if source["class_type"] in TTS_NODES:
        tts_id = next(k for k, v in prompt.items() if v is source)
        prompt["tts_speech"] = {"class_type": "SaveAudio", "inputs": {"audio": [tts_id, 0],
                                                                       "filename_prefix": "FlashHead/tts_speech"}}
        return prompt, None
    assert source["class_type"] == "LoadAudio", source
    return prompt, _example_seconds(source["inputs"]["audio"])


def _tiny_lora(work: Path) -> Path:
    """A kohya-format LoRA (rank 4) on the first block's attention of the tiny DiT (dim 128)."""
    import torch
    from safetensors.torch import save_file

    path = work / LORA
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name in ("q", "k", "v", "o"):
        stem = f"lora_unet_blocks_0_self_attn_{name}"
        tensors |= {f"{stem}.lora_down.weight": 0.05 * torch.randn(4, 128, generator=generator),
                    f"{stem}.lora_up.weight": 0.05 * torch.randn(128, 4, generator=generator),
                    f"{stem}.alpha": torch.tensor(4.0)}
    save_file(tensors, str(path))
    return path


def _chain_args(types: set[str], work: Path, request, run: bool) -> list[str]:
    """check_pack arguments for what a workflow's node types need beside the tiny FlashHead models: the TTS pack (and,
    to run it, espeak-ng), a tiny LoRA, a tiny upscaler."""
    extra = []
    if TTS_NODES & types:
        assert TTS_PACK.is_file(), f"{TTS_PACK} is missing from the kit"
        if run and _espeak() is None:
            pytest.skip("no espeak-ng (apt-get install -y espeak-ng), which the DJZ-Speak TTS node runs")
        extra += ["--with-pack", str(TTS_PACK)]
    if "FlashHeadLoraLoader" in types:
        extra += ["--models", f"{_tiny_lora(work)}=models/loras/{LORA}"]
    if "UpscaleModelLoader" in types:
        extra += ["--models", f"{request.getfixturevalue('upscaler')}=models/upscale_models/{UPSCALER}"]
    return extra


def _espeak() -> str | None:
    if not shutil.which("espeak-ng") and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "espeak-ng"], capture_output=True, timeout=600)
    return shutil.which("espeak-ng")


@pytest.fixture(scope="session")
def upscaler(host, work) -> Path:
    """A tiny random-weight Real-ESRGAN x2plus (published RRDBNet key layout), written and checked with spandrel in the
    host's own Python: ComfyUI's UpscaleModelLoader must recognise it as ESRGAN at scale 2."""
    path = work / "upscale_models" / UPSCALER
    path.parent.mkdir(exist_ok=True)
    result = subprocess.run([str(host / "venv" / "bin" / "python"), str(DRIVERS / "host_tiny_upscaler.py"),
                             str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    described = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\ntiny upscaler {path}: {described}")
    assert described["architecture"] == "ESRGAN" and described["scale"] == UPSCALE, described
    assert described["out_shape"] == [1, 3, 16 * UPSCALE, 16 * UPSCALE], described
    return path


def _decode_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """The first audio stream as mono float at `rate` Hz (PyAV's resampler, as ComfyUI decodes)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float64)


def _compare_speech(reference: np.ndarray, heard: np.ndarray, rate: int = 16000) -> dict:
    """How well the MP4's (AAC) track matches the TTS speech: the best normalised cross-correlation of the waveforms
    within +-100 ms, the correlation of their 10 ms RMS envelopes at that lag, and the two durations."""
    max_lag = rate // 10
    n = min(len(reference), len(heard))
    best = (-2.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        a = reference[max(0, -lag): n - max(0, lag)]
        b = heard[max(0, lag): max(0, lag) + len(a)]
        if len(a) >= rate // 4 and len(b) == len(a):
            r = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
            if r > best[0]:
                best = (r, lag)
    lag = best[1]
    a = reference[max(0, -lag): n - max(0, lag)]
    b = heard[max(0, lag): max(0, lag) + len(a)]
    win = rate // 100
    frames = len(a) // win
    env_a = np.sqrt((a[: frames * win].reshape(frames, win) ** 2).mean(axis=1))
    env_b = np.sqrt((b[: frames * win].reshape(frames, win) ** 2).mean(axis=1))
    return {"waveform_correlation": round(best[0], 4), "lag_ms": round(1000 * lag / rate, 2),
            "envelope_correlation": round(float(np.corrcoef(env_a, env_b)[0, 1]), 4),
            "tts_seconds": round(len(reference) / rate, 4), "mp4_audio_seconds": round(len(heard) / rate, 4)}


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=[p.stem for p in API_WORKFLOWS])
def test_api_workflow_runs_end_to_end(workflow, installed, host, work, tiny_checkpoint, request):
    """Each shipped API workflow runs in the host at TEST_SIZE. The TTS one runs DJZ-Speak (espeak-ng) beside the pack
    and its MP4's audio must be that speech; the upscale one gets a tiny real ESRGAN and its video is UPSCALE x larger."""
    from flashhead_core.media.video_io import read_video_info

    prompt, seconds = _api_prompt_for_test(workflow)
    types = {n["class_type"] for n in prompt.values()}
    if "UpscaleModelLoader" in types:
        assert {n["inputs"]["model_name"] for n in prompt.values() if n["class_type"] == "UpscaleModelLoader"} == {UPSCALER}
    extra = _chain_args(types, work, request, run=True)
    test_copy = work / f"{workflow.stem}_{TEST_SIZE}.json"
    test_copy.write_text(json.dumps(prompt))
    output = work / f"output_{workflow.stem}"
    code, summary, log = check_pack(host, work, workflow.stem, "--no-install-requirements", "--workflow",
                                    str(test_copy), *_models(tiny_checkpoint), *extra,
                                    "--output-dir", str(output), "--expect-nodes", *NODE_IDS)
    assert code == 0, f"{workflow.name} failed in ComfyUI:\n{log}"
    run = summary["workflow"]
    assert run["outcome"] == "success"
    videos = [Path(o["path"]) for o in run["outputs"] if o["path"].endswith(".mp4")]
    if isinstance(seconds, list):  # one video per speech input, each exactly as long as its speech
        assert sorted(read_video_info(v).frames for v in videos) == sorted(round(t * 25) for t in seconds), videos
        return
    assert len(videos) == 1, run["outputs"]
    info = read_video_info(videos[0])
    if seconds is None:  # TTS: the speech is what the TTS node made, saved beside the video by SaveAudio
        (speech,) = [Path(o["path"]) for o in run["outputs"] if o["node"] == "tts_speech"]
        tts = _decode_audio(speech)
        match = _compare_speech(tts, _decode_audio(videos[0]))
        print(f"\nTTS speech {speech.name} vs the MP4's audio track: {match}")
        seconds = len(tts) / 16000
        assert abs(match["mp4_audio_seconds"] - match["tts_seconds"]) < 0.05, match
        assert match["waveform_correlation"] > 0.9 and match["envelope_correlation"] > 0.9, match
        assert abs(match["lag_ms"]) < 30, match
    assert info.frames == round(seconds * 25), f"{workflow.name}: {info}"
    assert info.fps == 25.0 and info.audio_channels and info.audio_sample_rate
    assert abs(info.audio_duration - seconds) < 0.1
    scale = UPSCALE if "UpscaleModelLoader" in types else 1
    half_body = [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"]
    size = _example_size(half_body[0]) if "FlashHeadFaceCrop" in types else (TEST_SIZE * scale, TEST_SIZE * scale)
    assert (info.width, info.height) == size, info  # face crop: pasted back into the full portrait
    # every FlashHead node that reports progress reached its total
    for node in run["nodes"]:
        if "progress" in node:
            value, total = node["progress"].split(" ")[0].split("/")
            assert value == total, node


def test_a_flashhead_error_reaches_the_error_panel_as_its_class_name_and_sentence(installed, host, work,
                                                                                  tiny_checkpoint):
    """A user error raised in a node (the timeline workflow with start_times 'soon') reaches ComfyUI as
    exception_type 'TimelineError', not the pack folder's full path: frontend 1.49 and newer show
    "<exception_type>: <exception_message>" in the error panel, so the sentence that helps comes right after the
    class name (1.27 shows the message alone under the node's name)."""
    workflow = REPO / "workflows" / "api" / "FlashHead 5 Several portraits in one video.json"
    prompt, _ = _api_prompt_for_test(workflow)
    next(n for n in prompt.values() if n["class_type"] == "FlashHeadIdentityTimeline")["inputs"]["start_times"] = "soon"
    test_copy = work / "bad_timeline.json"
    test_copy.write_text(json.dumps(prompt))
    code, summary, log = check_pack(host, work, "bad_timeline", "--no-install-requirements", "--workflow",
                                    str(test_copy), *_models(tiny_checkpoint))
    assert code != 0 and summary["workflow"]["outcome"] == "error", log
    (failure,) = [f for f in summary["failures"] if f.startswith("workflow error in node")]
    panel = failure.split("(FlashHeadIdentityTimeline): ", 1)[1]  # check_pack writes "<type>: <message>" as 1.49 does
    print(f"\nthe error panel reads: {panel[:160]}")
    assert panel.startswith("TimelineError: start_times must be numbers in seconds"), panel


def test_interrupt_mid_video_ends_interrupted_and_leaves_no_file(installed, host, work, tiny_checkpoint):
    """Three minutes of speech (far more than any machine generates in the 10 s before POST /interrupt): the run must
    end as 'interrupted' after at least one chunk, and the output folder must hold nothing (no MP4, no partial)."""
    prompt = _own_inputs(_api_prompt_for_test(LITE_API)[0])
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


def _screenshot_dir(work: Path) -> Path:
    folder = Path(os.environ.get("FLASHHEAD_SCREENSHOT_DIR") or work / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_ui_workflow_runs_from_the_real_frontend(installed, host, host_spec, work, tiny_checkpoint, monkeypatch):
    """Drop the Lite UI workflow on ComfyUI's own web page (headless Chromium), as a user would: no missing node, no
    alert; the prompt the frontend builds (what the Run button queues) equals the API copy and runs end to end.
    Then, in the same ComfyUI, tests/drivers/frontend_video_player.py queues it twice from the page itself (app.queuePrompt,
    a new seed each time): during each run the Talking Video node shows its live player, no JPEG previews (blob:
    URLs); after it the node holds a <video> playing the MP4 from /view, and a screenshot of the page is saved."""
    if _chromium() is None:
        pytest.skip("no Chromium (apt-get install -y chromium needs root and the Debian archive)")
    _as_returning_user(host)
    workflow = json.loads(LITE_UI.read_text())
    talking = next(n for n in workflow["nodes"] if n["type"] == "FlashHeadTalkingVideo")
    talking["widgets_values"][:2] = [TEST_SIZE, TEST_SIZE]  # width, height: the first two widgets
    test_copy = work / f"flashhead_lite_ui_{host_spec.id}.json"
    test_copy.write_text(json.dumps(workflow))
    shots = _screenshot_dir(work)
    player = work / f"player_{host_spec.id}.json"
    player.write_text(json.dumps({"python": str(host / "venv" / "bin" / "python"),
                                  "script": str(DRIVERS / "frontend_video_player.py"),
                                  "args": ["--workflow", str(test_copy), "--runs", "2",
                                           "--screenshot-prefix", str(shots / f"player_{host_spec.id}")]}))
    monkeypatch.setenv("FLASHHEAD_PLAYER", str(player))  # read by CHECK_PACK_RUNNER in the check_pack process
    code, summary, log = check_pack(host, work, f"frontend_{host_spec.id}", "--no-install-requirements", "--workflow",
                                    str(test_copy), "--frontend", "--screenshot", str(shots / f"loaded_{host_spec.id}.png"),
                                    *_models(tiny_checkpoint),
                                    "--output-dir", str(work / f"output_frontend_{host_spec.id}"))
    assert code == 0, f"the frontend did not load and run the Lite UI workflow cleanly:\n{log}"
    assert summary["frontend"]["missing_node_types"] == [] and summary["frontend"]["alerts"] == []
    built = summary["workflow"]["api_prompt"]
    expected, _ = _api_prompt_for_test(LITE_API)
    for node_id, node in expected.items():
        frontend_inputs = {k: v for k, v in built[node_id]["inputs"].items() if k != "audioUI"}  # a UI-only widget
        assert (built[node_id]["class_type"], frontend_inputs) == (node["class_type"], node["inputs"]), node_id
    assert set(built) == set(expected)
    (video,) = [o["path"] for o in summary["workflow"]["outputs"]]
    assert video.endswith(".mp4")

    # --- the player, as a user sees it
    out = json.loads(Path(str(player) + ".out").read_text())
    assert out["rc"] == 0, f"the player check could not drive the page:\n{out['stderr']}"
    report = json.loads(out["stdout"].strip().splitlines()[-1])
    print(f"\nfrontend {report.get('version')} on {host_spec.id}: screenshots "
          + ", ".join([str(shots / f"loaded_{host_spec.id}.png")] + [r["screenshot"] for r in report["runs"]]))
    assert report["api_found"] and report["version"] == host_spec.frontend, report
    assert len(report["runs"]) == 2, report
    for index, run in enumerate(report["runs"], 1):
        where = f"run {index} on {host_spec.id}: {json.dumps(run)}"
        assert run["status"] == "execution_success", where
        assert run["node_executed"], where      # a new seed: the node really ran, not served from the cache
        assert not run["preview_seen"], where   # the live player is the node's preview while it runs
        player_video = run["video"]
        assert player_video, f"no <video> in the Talking Video node after the run: {where}"
        assert player_video["src"].split("?")[0].endswith("/view") and ".mp4" in player_video["src"], where
        assert "type=output" in player_video["src"] and not player_video["src"].startswith("blob:"), where
        assert player_video["readyState"] >= 1 and player_video["duration"] > 0, where
        rect = player_video["rect"]
        assert player_video["videoWidth"] == TEST_SIZE and rect["width"] > 0 and rect["height"] > 0, where
        assert 0 <= rect["x"] < 1600 and 0 <= rect["y"] < 1000, f"the player is off screen: {where}"
        assert not [s for s in run["images_shown"] if s.startswith("blob:")], f"a preview still shows: {where}"
    first, second = (r["video"]["src"] for r in report["runs"])
    assert first != second, "the second run must show its own video"
    assert report["console_errors"] == [], report["console_errors"]


def _set_widgets(node: dict, **values) -> None:
    """Set a UI-format node's widget values by input name (widgets_values follows the node's widget inputs in order;
    a seed is followed by its control_after_generate value)."""
    index = 0
    for slot in node.get("inputs", []):
        if "widget" not in slot:
            continue
        if slot["name"] in values:
            node["widgets_values"][index] = values[slot["name"]]
        index += 2 if slot["name"] in ("seed", "noise_seed") else 1


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_every_ui_workflow_runs_from_the_real_frontend_and_no_node_covers_another(workflow, installed, host, host_spec,
                                                                                  work, tiny_checkpoint, request,
                                                                                  monkeypatch):
    """Each shipped UI workflow as a new user meets it: dropped on ComfyUI's own page (headless Chromium) with only
    the model files in place (the portrait and speech are the pack's examples, which it copies into input/ itself):
    no missing node, no alert, no page error, and the prompt the page builds runs. Then
    tests/drivers/frontend_workflow_run.py queues it from the page and, once every node shows what it got (the
    portrait, the finished videos, previews), no node's rectangle overlaps another's. A screenshot of each, the whole
    graph in view, is saved ($FLASHHEAD_SCREENSHOT_DIR/run_<workflow>_<host>.png). The FlashHead nodes run at
    TEST_SIZE (the nodes' sizes do not depend on it: the square video fills the node's width either way)."""
    if _chromium() is None:
        pytest.skip("no Chromium (apt-get install -y chromium needs root and the Debian archive)")
    _as_returning_user(host)
    ui = json.loads(workflow.read_text())
    for node in ui["nodes"]:
        if node["type"].startswith("FlashHead"):
            _set_widgets(node, width=TEST_SIZE, height=TEST_SIZE)
    label = f"{workflow.stem.split()[1]}_{host_spec.id}"  # "FlashHead 3 Text ..." -> 3_<host>
    test_copy = work / f"{workflow.name}"
    test_copy.write_text(json.dumps(ui))
    extra = _chain_args({n["type"] for n in ui["nodes"]}, work, request, run=True)
    shot = _screenshot_dir(work) / f"run_{label}.png"
    player = work / f"run_{label}.json"
    player.write_text(json.dumps({"python": str(host / "venv" / "bin" / "python"),
                                  "script": str(DRIVERS / "frontend_workflow_run.py"),
                                  "args": ["--workflow", str(test_copy), "--screenshot", str(shot)]}))
    monkeypatch.setenv("FLASHHEAD_PLAYER", str(player))
    # check_pack runs the API copy, then the driver loads the UI workflow on the page and queues the prompt the page
    # builds (the page's own checks there, where the 0.33 frontend's loading-mask race is told apart; check_pack's
    # own UI converter misses SaveVideo's format in 0.33)
    api_copy = work / f"api_{label}.json"
    api_copy.write_text(json.dumps(_api_prompt_for_test(REPO / "workflows" / "api" / workflow.name)[0]))
    code, summary, log = check_pack(host, work, f"ui_{label}", "--no-install-requirements", "--workflow",
                                    str(api_copy), *_models(tiny_checkpoint), *extra,
                                    "--output-dir", str(work / f"output_ui_{label}"))
    assert code == 0, f"{workflow.name} did not run in the {host_spec.id} host:\n{log}"
    out = json.loads(Path(str(player) + ".out").read_text())
    assert out["rc"] == 0, f"the page could not be driven:\n{out['stderr']}"
    report = json.loads(out["stdout"].strip().splitlines()[-1])
    names = {n["id"]: f"{n['title']} ({n['id']})" for n in report["nodes"]}
    print(f"\n{workflow.name} after a run in frontend {report['version']}: screenshot {shot}; "
          f"overlaps {[(names[a], names[b], area) for a, b, area in report['overlaps']]}")
    assert report["missing_node_types"] == [] and report["nodes_loaded"] == len(ui["nodes"]), report
    assert report["status"] == "execution_success", report
    assert report["overlaps"] == [], (
        f"nodes cover each other after a run: {[(names[a], names[b], area) for a, b, area in report['overlaps']]}; "
        f"rectangles {[(names[n['id']], [round(v) for v in n['rect']]) for n in report['nodes']]}")
    assert report["alerts"] == [] and report["console_errors"] == [], report


def _frontend_internal(failure: str) -> bool:
    """check_pack's report of a console error raised inside the 0.33 frontend's own code
    (browser_support.comfyui_frontend_internal); any other failure still fails the test."""
    return failure.startswith("frontend console:") and browser_support.comfyui_frontend_internal(failure)


LIVE_SPEECH = ("live_speech.wav", 40.0)  # the live-player runs: long enough to watch the tiny model's video play


def test_talking_video_plays_live_in_the_node(installed, host, host_spec, work, tiny_checkpoint, monkeypatch):
    """The Lite UI workflow on 40 s of speech, queued from the real frontend by tests/drivers/frontend_live_player.py,
    judged from what the page itself recorded every 100 ms (behaviour, not how fast this machine is): while the
    prompt runs the Talking Video node holds a live <video> whose currentTime grows (the first chunks play before the
    last exist), never stands still for long with media buffered ahead, says "waiting for the model" whenever it has
    played all it has, and shows no preview image under it; a second tab opened mid-run joins the same stream at the
    live edge and plays it; the finished MP4 then takes the player's place from where the live one was. A second run
    interrupted mid-video ends its player with the reason in words ("stopped: generation cancelled at chunk N"), and
    no page error occurs in either (screenshots in $FLASHHEAD_SCREENSHOT_DIR)."""
    if _chromium() is None:
        pytest.skip("no Chromium (apt-get install -y chromium needs root and the Debian archive)")
    _as_returning_user(host)
    # Frontend 1.27.10 throws in every page load after the first one (the second tab here): registering the
    # Canvas.NavigationMode setting runs its onChange, which sets two settings not registered yet. A stored "custom"
    # mode sets nothing. (Unrelated to the pack.)
    settings = host / "ComfyUI" / "user" / "default" / "comfy.settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "Comfy.Canvas.NavigationMode": "custom"}))
    folder = work / "inputs_live"
    folder.mkdir(exist_ok=True)
    _portrait(folder / "portrait.png")
    _write_wav(folder / "speech.wav", 1.0, 16000, 1)  # check_pack's own run of the API workflow: short
    _write_wav(folder / LIVE_SPEECH[0], LIVE_SPEECH[1], 16000, 1)
    prompt = _own_inputs(_api_prompt_for_test(LITE_API)[0])
    api_copy = work / "live_api.json"
    api_copy.write_text(json.dumps(prompt))
    workflow = json.loads(LITE_UI.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "FlashHeadTalkingVideo":
            node["widgets_values"][:2] = [TEST_SIZE, TEST_SIZE]
        if node["type"] == "LoadImage":
            node["widgets_values"][0] = "portrait.png"
        if node["type"] == "LoadAudio":
            node["widgets_values"][0] = LIVE_SPEECH[0]
    ui_copy = work / f"flashhead_lite_live_{host_spec.id}.json"
    ui_copy.write_text(json.dumps(workflow))
    shots = _screenshot_dir(work)
    player = work / f"live_player_{host_spec.id}.json"
    player.write_text(json.dumps({"python": str(host / "venv" / "bin" / "python"),
                                  "script": str(DRIVERS / "frontend_live_player.py"),
                                  "args": ["--workflow", str(ui_copy),
                                           "--screenshot-prefix", str(shots / f"live_{host_spec.id}")]}))
    monkeypatch.setenv("FLASHHEAD_PLAYER", str(player))
    code, summary, log = check_pack(host, work, f"live_{host_spec.id}", "--no-install-requirements",
                                    "--workflow", str(api_copy), "--inputs", str(folder), *_models(tiny_checkpoint),
                                    "--output-dir", str(work / f"output_live_{host_spec.id}"))
    assert code == 0, log
    out = json.loads(Path(str(player) + ".out").read_text())
    assert out["rc"] == 0, f"the live player check could not drive the page:\n{out['stderr']}"
    report = json.loads(out["stdout"].strip().splitlines()[-1])
    live, interrupt = report["live"], report["interrupt"]
    samples, joined = live["samples"], live["joined"]
    playing = [x for x in samples if x["live"] and not x["done"] and x["segment"] >= 0]
    handover = next((i for i, x in enumerate(samples) if i and samples[i - 1]["live"] and not x["live"]), None)
    dry, flowing = judged_samples([x for x in samples if x["live"]])
    print(f"\nlive player on {host_spec.id} (frontend {report.get('version')}): run of {live['seconds']} s, "
          f"{len(playing)} samples played while it ran, last currentTime then {playing[-1]['ct'] if playing else None}; "
          f"freezes {freezes([x for x in samples if x['live']])}; {len(dry)} samples dry (labels "
          f"{sorted({x['label'] for x in dry})}), {len(flowing)} playing; handover "
          f"{samples[handover - 1:handover + 3] if handover else None}; joined tab from segment "
          f"{next((x['joined'] for x in (joined or {}).get('samples', []) if x.get('joined', -1) >= 0), None)}; "
          f"interrupted at {interrupt['interrupted_at']}: {(interrupt['live_after'] or {}).get('label')}; "
          f"screenshots {shots}/live_{host_spec.id}_*.png")
    where = json.dumps({k: v for k, v in report.items() if k != "live"})[-3000:]
    assert live["status"] == "execution_success", where
    assert len({x["ct"] for x in playing if x["ct"] > 0}) >= 2, f"no live playback while it ran: {playing[:20]}"
    assert freezes([x for x in samples if x["live"]]) == [], "the live player stood still with media buffered ahead"
    assert all(x["label"] == "LIVE · waiting for the model" for x in dry), [x["label"] for x in dry]
    assert not any(x["waiting"] for x in flowing), "'waiting' shown while the video played"
    assert not any(x["previews"] for x in playing), "a preview image shows under the live player"
    assert live["live_state"]["video"]["videoWidth"] == TEST_SIZE and live["live_state"]["widget"], where
    rect = live["live_state"]["video"]["rect"]
    assert rect["width"] > 0 and rect["height"] > 0 and 0 <= rect["x"] < 1600 and 0 <= rect["y"] < 1000, where
    routes = live["routes"]  # the running stream of this workflow; none of another; 404 for an id not created here
    assert [(s["id"], s["prompt_id"]) for s in routes["listed"]] == [(live["live_state"]["stream"], live["prompt_id"])]
    assert routes["listed"][0]["workflow"] == live["live_state"]["graph_id"] and routes["other"] == [], where
    assert routes["unnamed"] == 400 and routes["forged"] == 404 and routes["bad_index"] == 400, where
    # the finished MP4 takes over where the live player was (not paused at 0:00)
    assert handover is not None, "the live player never gave way to the finished video"
    last_live = samples[handover - 1]
    resumed = [x["finished"] for x in samples[handover:] if x.get("finished") and "/view?" in x["finished"]["src"]]
    moved = [f for f in resumed if f["ct"] > 0]  # its first position past 0:00 is the live one (then it may loop)
    assert moved and moved[0]["ct"] >= last_live["ct"] - 0.5, (last_live, resumed[:5])
    if not last_live["paused"] and last_live["ct"] < LIVE_SPEECH[1] - 1:
        assert any(not f["paused"] for f in resumed), f"the finished video did not go on playing: {resumed[:5]}"
    assert joined and joined["node_found"], f"the second tab did not restore the workflow: {where}"
    mine = [x for x in joined["samples"] if x["live"]]
    first = next((x["joined"] for x in mine if x["joined"] >= 0), None)   # the segment its player started from
    assert first is not None and first >= 1, f"the tab opened mid-run did not start at the live edge: {mine[:5]}"
    # it played from where it joined (segment n starts at n x 0.96 s on the stream's timeline), not from 0:00
    positions = sorted({x["ct"] for x in mine if x["ct"] > 0})
    assert len(positions) >= 2 and positions[0] >= first * 0.96 - 0.1, \
        f"the tab opened mid-run did not play the running stream from segment {first}: {positions[:5]}"
    finished = live["finished_video"]
    assert finished and "/view?" in finished["src"] and ".mp4" in finished["src"] and finished["duration"] > 30, where
    assert not live["live_after"]["widget"], f"the live player is still there after the run: {where}"
    assert interrupt["status"] == "execution_interrupted" and interrupt["interrupted_at"], where
    after = interrupt["live_after"]["status"]
    assert after and after["ended"] and after["error"], f"the interrupted stream did not end its player: {where}"
    assert re.fullmatch(r"stopped: generation cancelled at chunk \d+", interrupt["live_after"]["label"]), where
    assert report["console_errors"] == [], report["console_errors"]


def test_node_unit_tests_pass_inside_the_host(installed, host):
    """tests/test_nodes*.py in ComfyUI's own Python (comfy importable): every test must run, none may skip."""
    python = host / "venv" / "bin" / "python"
    # pytest, and scikit-image for the face-crop tests' photo (test extras, not the pack's requirements)
    if subprocess.run([str(python), "-c", "import pytest, skimage"], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "pytest",
                        "scikit-image>=0.22"], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FLASHHEAD_REQUIRE_REFERENCE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(host / "ComfyUI")
    node_tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_nodes*.py"))
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *node_tests],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
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
    _portrait(folder / "portrait2.png")
    for name, (seconds, rate, channels) in QUEUE_AUDIO.items():
        _write_wav(folder / name, seconds, rate, channels)
    base = _own_inputs(_api_prompt_for_test(LITE_API)[0])
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
    prompt = _own_inputs(_api_prompt_for_test(LITE_API)[0])
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
