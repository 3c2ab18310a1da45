"""`flashhead demo`: the main job end to end on a fresh machine, with no download.

It writes tiny checkpoints with RANDOM weights in the released layout (Model_*/, the VAE, wav2vec2-base-960h/), a
synthetic portrait and a synthetic speech-like track, and runs `flashhead generate` on them for Lite and Pro: every
line of the loading, audio, sampling, decoding and video-writing code runs. The weights are random, so the video is
noise shaped by the reference colours, not a talking face. With --reference DIR it also runs `flashhead verify` on
every fixture and manifest there. Everything it makes stays in --workdir (default ./flashhead-demo/): the two MP4s,
the portrait and the speech it used, and the tiny checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..pipeline import load_pipeline, write_talking_video
from ..testing import write_tiny_checkpoint
from ..testing.media import synthetic_portrait, synthetic_speech, write_wav
from ..media.video_io import read_video_info
from .parity import verify_file

DEMO_SIZE = (128, 128)  # (height, width): on the grid of both variants, small enough for a CPU
DEFAULT_WORKDIR = "flashhead-demo"


def _reference_checks(reference: Path) -> bool:
    files = sorted((reference / "fixtures").glob("*.safetensors")) + sorted((reference / "manifests").glob("*.json"))
    all_ok = True
    for path in files:
        result = verify_file(path)
        print(json.dumps(result), flush=True)
        all_ok &= result["ok"]
    return all_ok


def run_demo(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or DEFAULT_WORKDIR).resolve()
    print("FlashHead demo: tiny checkpoints with RANDOM weights (nothing is downloaded). This runs the whole "
          "pipeline; the video shows noise, not a face.")
    print(f"writing into {workdir}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    image = synthetic_portrait(workdir / "portrait.png")
    speech = write_wav(workdir / "speech.wav", synthetic_speech())
    height, width = DEMO_SIZE
    videos = []
    for variant in ("lite", "pro"):
        root = write_tiny_checkpoint(workdir / f"tiny_{variant}", variant)
        pipeline = load_pipeline(root, variant=variant)
        out = workdir / f"demo_{variant}.mp4"
        summary = write_talking_video(pipeline, image, speech, out, height=height, width=width, seed=0)
        info = read_video_info(out)
        print(json.dumps({**summary.as_dict(), "video_frames": info.frames, "audio_seconds": info.audio_duration}), flush=True)
        videos.append(out)
    print(f"portrait: {workdir / 'portrait.png'}\nspeech:   {workdir / 'speech.wav'}")
    for out in videos:
        print(f"video:    {out}")
    print(f"play them with any video player, e.g. `ffplay {videos[0]}` or `vlc {videos[0]}`, or open them in a "
          f"browser")
    if args.reference:
        return 0 if _reference_checks(Path(args.reference)) else 1
    return 0
