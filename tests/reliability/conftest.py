"""Shared fixtures of the reliability suite: tiny checkpoints and pipelines (session scope), the synthetic portrait
and speech, an output folder that must stay empty after a failure, and a guard against generation starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashhead_core.pipeline import Pipeline, load_pipeline
from flashhead_core.generation.session import StreamingSession
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech, write_wav

VARIANTS = ("lite", "pro")
SPEECH_SECONDS = 0.96  # 24 frames: one Lite chunk, one Pro chunk


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight checkpoint roots in the released layout, one per variant. Tests that damage a checkpoint
    copy it first."""
    base = tmp_path_factory.mktemp("checkpoints")
    return {variant: write_tiny_checkpoint(base / variant, variant) for variant in VARIANTS}


@pytest.fixture(scope="session")
def pipelines(checkpoints) -> dict[str, Pipeline]:
    return {variant: load_pipeline(root, variant=variant) for variant, root in checkpoints.items()}


@pytest.fixture(scope="session")
def inputs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="session")
def portrait(inputs_dir) -> Path:
    return synthetic_portrait(inputs_dir / "face.png", 96)


@pytest.fixture(scope="session")
def speech(inputs_dir) -> Path:
    """SPEECH_SECONDS of synthetic speech as a 16 kHz mono WAV."""
    return write_wav(inputs_dir / "speech.wav", synthetic_speech(SPEECH_SECONDS))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """A folder that receives the output and nothing else: after a failure it must be empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if a chunk starts generating: bad input must be refused before the heavy work."""
    def refuse(*args, **kwargs):
        raise AssertionError("generation started: the bad input was not refused before the heavy work")

    monkeypatch.setattr(StreamingSession, "generate_chunk", refuse)
