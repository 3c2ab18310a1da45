"""`flashhead bench gpu --quick` on the CPU: every path of the GPU bench runs (or says why it cannot) on the tiny
models, so the command the GPU lease runs cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_gpu_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "-m", "flashhead_core", "bench", "gpu", "--quick", "--device", "cpu",
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1])["variants"] == report["variants"]
    assert report["environment"]["torch"] and report["environment"]["attention_kernels"] == ["sdpa"]
    for variant, paths in (("lite", ["float32", "eager", "sdpa:flash", "cuda_graphs", "compiled", "fp8_row",
                                     "batch:1", "batch:8", "decode_overlap"]),
                           ("pro", ["float32", "eager", "compiled", "fp8_row", "taehv_decode", "decode_overlap"])):
        rows = {row["path"]: row for row in report["variants"][variant]}
        assert set(paths) <= set(rows), (variant, sorted(rows))
        assert not [row for row in rows.values() if "error" in row or "skipped" in row], rows
        assert rows["eager"]["fps"] > 0 and rows["eager"]["ttff_s"] > 0
        assert 10 < rows["eager"]["psnr_bf16_vs_float32_db"] < 200
        assert rows["compiled"]["psnr_vs_bf16_db"] > 20 and rows["compiled"]["compile_s"] >= 0
        assert rows["cuda_graphs"]["unavailable"] == "CUDA only" and rows["sdpa:flash"]["unavailable"] == "CUDA only"
        assert 10 < rows["fp8_row"]["psnr_vs_bf16_db"] < 200
        assert rows["decode_overlap"]["same_output"] is True  # on the CPU the two streams run in order
    lite = {row["path"]: row for row in report["variants"]["lite"]}
    assert lite["batch:8"]["streams"] == 8 and lite["batch:8"]["aggregate_fps"] > 0
    pro = {row["path"]: row for row in report["variants"]["pro"]}
    assert 0 < pro["taehv_decode"]["decode_cost_ratio"]
    assert "| lite | eager |" in result.stderr and "| pro | taehv_decode |" in result.stderr


def test_gpu_pack_lists_what_the_lent_machine_lacks_and_one_short_command():
    from flashhead_core.tools import gpu_pack

    missing = {gpu_pack.normalise(line.split(">")[0].split("=")[0]) for line in gpu_pack.missing_requirements()}
    assert {"diffusers", "av", "soxr", "aiortc"} <= missing
    assert not missing & {"numpy", "safetensors", "transformers", "pillow", "aiohttp", "opencv-python-headless"}
    assert gpu_pack.wheel_name(Path("google_crc32c-1.9.0-cp312-cp312-manylinux2014_x86_64.whl")) == "google-crc32c"
    command = gpu_pack.device_command()
    assert len(command) < 2000 and "--no-index" in command and "bench gpu" in command and "$OUT/gpu.json" in command
    # The wheel folder is ignored (wheels are never committed), read from .gitignore: CI runs on a copy without .git.
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert f"/{gpu_pack.WHEELS}/" in ignored or f"{gpu_pack.WHEELS}/" in ignored, f"{gpu_pack.WHEELS}/ is not ignored"
