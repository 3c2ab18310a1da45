"""Pack the checkout for a lent GPU machine that has no package index (docs/performance.md#running-it-on-a-lent-gpu):
download the wheels of the runtime packages its image lacks (Python 3.12, x86-64 manylinux) into the git-ignored
`.whl/`, check they fit the 64 MiB that may travel with the checkout, and print the one command line that installs
them there and runs `flashhead bench gpu`.

    python -m flashhead_core.tools.gpu_pack            # downloads into .whl/, prints the command
    python -m flashhead_core.tools.gpu_pack --print    # only the command

The image holds torch 2.11 (CUDA 13), transformers, safetensors, numpy, pillow, aiohttp, triton, opencv and the
usual scientific and web stack (`PRESENT`), but not diffusers, PyAV, soxr, aiortc or flash-attn. pip resolves each
missing requirement with its dependencies for that platform; the wheels of packages the image already has are
dropped again, so only what is missing travels.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = ".whl"  # relative to the checkout; git-ignored
CARRY_LIMIT = 64 * 2**20  # bytes that may travel with the checkout
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# Distributions the lent machine's image already has (normalised names), from its package list.
PRESENT = frozenset("""
aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click filelock frozenlist
fsspec h11 hf-xet httpcore httpx huggingface-hub idna jinja2 markupsafe mpmath multidict networkx numpy
opencv-python-headless packaging pillow propcache psutil pyyaml regex requests safetensors setuptools sympy tokenizers
torch tqdm transformers triton typer typing-extensions urllib3 yarl zipp shellingham rich pygments markdown-it-py mdurl
""".split())
BENCH = "python3 -m flashhead_core bench gpu --out $OUT/gpu.json"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_requirements(requirements: Path = REPO / "requirements.txt") -> list[str]:
    """The runtime requirements (name and version spec) whose distribution the image lacks."""
    wanted = []
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and normalise(re.split(r"[<>=!~;\[ ]", line)[0]) not in PRESENT:
            wanted.append(line)
    return wanted


def wheel_name(path: Path) -> str:
    """The normalised distribution name of a wheel file (`PyAV-14.0.1-cp312-...whl` -> `pyav`)."""
    return normalise(path.name.split("-")[0])


def download(target: Path) -> list[Path]:
    """pip-download the missing requirements with their dependencies for the image's Python and platform, then drop
    the wheels of distributions the image already has. Returns the wheels kept."""
    if target.exists():
        shutil.rmtree(target)
    command = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
               PYTHON_VERSION, "--implementation", "cp", "-d", str(target)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + missing_requirements(), check=True)
    kept = []
    for wheel in sorted(target.glob("*.whl")):
        if wheel_name(wheel) in PRESENT:
            wheel.unlink()
        else:
            kept.append(wheel)
    return kept


def device_command(wheels: str = WHEELS) -> str:
    """The one line that installs the carried wheels on the lent machine and runs the GPU bench (under 2,000
    characters; run from the checkout's root with `.whl` carried)."""
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
            f"{wheels}/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit; nvidia-smi; "
            f"set -o pipefail; timeout 540 {BENCH} 2>&1 | tee $OUT/gpu.log")


def tree_bytes() -> int:
    """Bytes of the files git tracks or would add (what travels besides the carried wheels)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed if name and (REPO / name.decode()).is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="only print the device command")
    args = parser.parse_args(argv)
    if not args.print:
        kept = download(REPO / WHEELS)
        wheels = sum(w.stat().st_size for w in kept)
        total = wheels + tree_bytes()
        print(f"{len(kept)} wheels, {wheels / 2**20:.1f} MiB: {', '.join(w.name for w in kept)}", file=sys.stderr)
        print(f"checkout + wheels: {total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB", file=sys.stderr)
        if total > CARRY_LIMIT:
            raise SystemExit("too large to travel: drop a wheel or shrink the checkout")
    print(device_command())


if __name__ == "__main__":
    main()
