"""Synthetic inputs: a drawn portrait and a speech-like track (the demo, benchmarks and tests), and WAV files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..config import AUDIO_SAMPLE_RATE

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


def synthetic_speech(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
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
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path
