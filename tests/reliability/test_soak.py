"""Soak: a long synthetic speech track through `flashhead generate` (tiny Lite model, 64x64, MP4 written as it
goes), its memory sampled every second, against a 10-second run.

Marked `slow` (half a minute): left out of the default run; .ci/run runs it, with 3 minutes of audio. The 1-hour run
(about 6 minutes on two CPU cores; figures in README, Reliability):

    FLASHHEAD_SOAK_SECONDS=3600 python -m pytest -q -s -m slow tests/reliability/test_soak.py
"""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest
from support import flashhead, generate_args, run_child

from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS
from flashhead_core.testing.media import synthetic_speech
from flashhead_core.media.video_io import read_video_info

SOAK_SECONDS = float(os.environ.get("FLASHHEAD_SOAK_SECONDS", "180"))
BASELINE_SECONDS = 10.0
PEAK_LIMIT = 1.2  # the long run's peak RSS over the 10-second run's
FLAT_LIMIT = 1.05  # the long run's second half over its first half (a leak climbs; start-up is in the first)
BLOCK_SECONDS = 60.0

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="samples memory from /proc (Linux)")]


def write_speech_wav(path: Path, seconds: float) -> Path:
    """Synthetic speech as a 16 kHz 16-bit WAV, written a minute at a time so that an hour costs little memory."""
    total = round(seconds * AUDIO_SAMPLE_RATE)
    block = round(BLOCK_SECONDS * AUDIO_SAMPLE_RATE)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(AUDIO_SAMPLE_RATE)
        for index, start in enumerate(range(0, total, block)):
            samples = synthetic_speech(min(block, total - start) / AUDIO_SAMPLE_RATE, seed=index)
            f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def generate_in_child(checkpoint: Path, portrait: Path, seconds: float, folder: Path):
    """`flashhead generate` on `seconds` of speech in a fresh process -> (its Run, the MP4's VideoInfo)."""
    folder.mkdir()
    audio = write_speech_wav(folder / "speech.wav", seconds)
    out = folder / "talk.mp4"
    run = run_child(flashhead(*generate_args(checkpoint, portrait, audio, out, "--variant", "lite")),
                    timeout=120 + 2 * seconds)
    assert run.returncode == 0, run.stderr[-3000:]
    return run, read_video_info(out)


def test_memory_stays_flat_over_a_long_stream(checkpoints, portrait, tmp_path):
    baseline, _ = generate_in_child(checkpoints["lite"], portrait, BASELINE_SECONDS, tmp_path / "baseline")
    soak, info = generate_in_child(checkpoints["lite"], portrait, SOAK_SECONDS, tmp_path / "soak")
    quarters = [round(max(q), 1) for q in np.array_split(np.array(soak.rss_mb), 4)]
    figures = {"audio_seconds": SOAK_SECONDS, "frames": info.frames, "video_seconds": info.duration,
               "audio_track_seconds": info.audio_duration, "wall_seconds": round(soak.seconds, 1),
               "baseline_peak_mb": round(baseline.peak_mb, 1), "soak_peak_mb": round(soak.peak_mb, 1),
               "ratio": round(soak.peak_mb / baseline.peak_mb, 3), "rss_max_per_quarter_mb": quarters,
               "samples": len(soak.rss_mb),
               "decoded_track_mb": round(SOAK_SECONDS * AUDIO_SAMPLE_RATE * 4 / 2**20, 1)}  # float32, if held whole
    print("\nsoak:", json.dumps(figures))

    frames = round(SOAK_SECONDS * FPS)
    assert info.frames == frames and info.duration == pytest.approx(SOAK_SECONDS)
    assert info.audio_duration == pytest.approx(frames / FPS, abs=1 / FPS)
    assert max(quarters[2:]) <= FLAT_LIMIT * max(quarters[:2]), f"memory climbs as the video goes on: {figures}"
    assert soak.peak_mb <= PEAK_LIMIT * baseline.peak_mb, f"peak RSS above {PEAK_LIMIT}x the 10-s run's: {figures}"
