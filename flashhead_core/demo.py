"""`flashhead demo`: the main job end to end on a fresh machine, with no download.

It writes tiny checkpoints with RANDOM weights in the released layout (Model_*/, the VAE, wav2vec2-base-960h/), a
synthetic portrait and a synthetic speech-like track, and runs `flashhead generate` on them for Lite and Pro: every
line of the loading, audio, sampling, decoding and video-writing code runs. The weights are random, so the video is
noise shaped by the reference colours, not a talking face. With --reference DIR it also runs `flashhead verify` on
every fixture and manifest there.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .config import AUDIO_SAMPLE_RATE

DEMO_SIZE = (128, 128)  # (height, width): on the grid of both variants, small enough for a CPU
DEMO_SECONDS = 3.0


def synthetic_portrait(path: Path, size: int = 320) -> Path:
    """A simple drawn face (skin-tone oval, eyes, mouth) on a plain background."""
    image = Image.new("RGB", (size, size), (70, 90, 120))
    draw = ImageDraw.Draw(image)
    s = size / 320
    draw.ellipse([90 * s, 50 * s, 230 * s, 250 * s], fill=(224, 180, 150))
    for x in (130, 190):
        draw.ellipse([(x - 12) * s, 120 * s, (x + 12) * s, 136 * s], fill=(40, 30, 30))
    draw.arc([125 * s, 170 * s, 195 * s, 215 * s], start=20, end=160, fill=(150, 50, 60), width=max(1, int(5 * s)))
    image.save(path)
    return path


def synthetic_speech(seconds: float = DEMO_SECONDS, seed: int = 0) -> np.ndarray:
    """A speech-like 16 kHz signal: a gliding voiced tone with harmonics, in syllable-rate (4 Hz) bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / AUDIO_SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    signal = 0.3 * voiced * syllables + 0.01 * rng.standard_normal(t.shape)
    return signal.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> Path:
    """samples [T] (mono) or [T, C] in [-1, 1] -> a 16-bit PCM WAV (stdlib writer: the demo needs nothing else)."""
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _reference_checks(reference: Path) -> bool:
    from .verify import verify_file

    files = sorted((reference / "fixtures").glob("*.safetensors")) + sorted((reference / "manifests").glob("*.json"))
    all_ok = True
    for path in files:
        result = verify_file(path)
        print(json.dumps(result), flush=True)
        all_ok &= result["ok"]
    return all_ok


def run_demo(args: argparse.Namespace) -> int:
    from .pipeline import load_pipeline, write_talking_video
    from .tiny import write_tiny_checkpoint
    from .video_io import read_video_info

    print("FlashHead demo: tiny checkpoints with RANDOM weights (nothing is downloaded). This runs the whole "
          "pipeline; the video shows noise, not a face.")
    with tempfile.TemporaryDirectory(prefix="flashhead-demo-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        image = synthetic_portrait(workdir / "portrait.png")
        speech = write_wav(workdir / "speech.wav", synthetic_speech())
        height, width = DEMO_SIZE
        for variant in ("lite", "pro"):
            root = write_tiny_checkpoint(workdir / f"tiny_{variant}", variant)
            pipeline = load_pipeline(root, variant=variant)
            out = workdir / f"demo_{variant}.mp4"
            summary = write_talking_video(pipeline, image, speech, out, height=height, width=width, seed=0)
            info = read_video_info(out)
            print(json.dumps({**summary, "video_frames": info.frames, "audio_seconds": info.audio_duration}))
        if args.workdir:
            print(f"outputs kept in {workdir}")
    if args.reference:
        return 0 if _reference_checks(Path(args.reference)) else 1
    return 0
