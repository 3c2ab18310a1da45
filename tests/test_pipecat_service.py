"""FlashHead as a pipecat video service (flashhead_core/integrations/pipecat.py) on the tiny random Lite model, in a
pipecat test pipeline (pipecat.tests.utils.run_test): text-to-speech audio frames in, then what comes out
downstream. pipecat is the optional `conversation` extra; CI installs it (a missing pipecat fails here, it is never
skipped).

- in step: every OutputAudioRawFrame (640 samples at 16 kHz) is followed by the OutputImageRawFrame made from it,
  and the audio that leaves is the speech that came in, sample for sample (to the 16-bit rounding), in order;
- idle: before the speech and after it, frames keep coming (image only: silence is not sent as the bot speaking);
- barge-in: an InterruptionFrame in the middle of a 4 s utterance stops its sound within two chunks (the chunk
  being pushed and the one being generated); the frames go on (idle) and the interruption is passed on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import (InterruptionFrame, OutputAudioRawFrame, OutputImageRawFrame, TTSAudioRawFrame,
                                   TTSStoppedFrame)
from pipecat.tests.utils import SleepFrame, run_test

from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from flashhead_core.integrations.pipecat import FlashHeadVideoService
from flashhead_core.pipeline import load_pipeline
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech

SIZE = 64
CHUNK_FRAMES = 24  # the tiny Lite model's new frames per chunk


@pytest.fixture(scope="module")
def service_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipecat")
    pipeline = load_pipeline(write_tiny_checkpoint(root / "lite", "lite"), variant="lite")
    return pipeline, synthetic_portrait(root / "face.png", 96)


def pcm(seconds: float) -> bytes:
    speech = synthetic_speech(seconds)
    return (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()


def run(service, frames) -> list:
    down, _ = asyncio.run(run_test(service, frames_to_send=frames, start_timeout=120))
    return [f for f in down if isinstance(f, (OutputAudioRawFrame, OutputImageRawFrame, InterruptionFrame))]


def audio_of(frames) -> np.ndarray:
    return np.concatenate([np.frombuffer(f.audio, "<i2") for f in frames if isinstance(f, OutputAudioRawFrame)])


def test_speech_leaves_with_its_frames_in_step_and_idle_around_it(service_inputs):
    pipeline, portrait = service_inputs
    speech = pcm(2.0)
    out = run(FlashHeadVideoService(pipeline, portrait, width=SIZE, height=SIZE, idle=True),
              [SleepFrame(sleep=2.0), TTSAudioRawFrame(audio=speech, sample_rate=AUDIO_SAMPLE_RATE, num_channels=1),
               TTSStoppedFrame(), SleepFrame(sleep=8.0)])
    kinds = ["A" if isinstance(f, OutputAudioRawFrame) else "I" for f in out]
    first_audio, last_audio = kinds.index("A"), len(kinds) - 1 - kinds[::-1].index("A")
    print(f"\n{len(out)} frames out: {kinds.count('I')} images, {kinds.count('A')} audio; idle images before the "
          f"speech {kinds[:first_audio].count('I')}, after it {kinds[last_audio:].count('I') - 1}")
    assert all(kinds[i + 1] == "I" for i, k in enumerate(kinds) if k == "A")  # each audio frame then its image
    assert all(len(f.audio) == 2 * SAMPLES_PER_FRAME and f.sample_rate == AUDIO_SAMPLE_RATE
               for f in out if isinstance(f, OutputAudioRawFrame))
    image = next(f for f in out if isinstance(f, OutputImageRawFrame))
    assert image.size == (SIZE, SIZE) and image.format == "RGB" and len(image.image) == SIZE * SIZE * 3
    assert kinds[:first_audio].count("I") >= CHUNK_FRAMES  # idle before the first word: generated frames
    assert kinds[last_audio:].count("I") - 1 >= CHUNK_FRAMES  # ... and after the last
    sent, heard = np.frombuffer(speech, "<i2").astype(int), audio_of(out).astype(int)
    # the speech, in order, to the rounding of the 16-bit round trip (all-zero frames, e.g. a silent start, are
    # not sent: compare from the first sample sent)
    start = int(np.flatnonzero(sent)[0]) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME
    assert len(heard) >= len(sent) - start - SAMPLES_PER_FRAME
    assert np.abs(heard[: len(sent) - start] - sent[start: start + len(heard)]).max() <= 2


def test_interruption_cuts_the_speech_at_a_chunk_boundary(service_inputs):
    pipeline, portrait = service_inputs
    out = run(FlashHeadVideoService(pipeline, portrait, width=SIZE, height=SIZE, idle=True),
              [TTSAudioRawFrame(audio=pcm(4.0), sample_rate=AUDIO_SAMPLE_RATE, num_channels=1), TTSStoppedFrame(),
               SleepFrame(sleep=3.0), InterruptionFrame(), SleepFrame(sleep=4.0)])
    cut = next(i for i, f in enumerate(out) if isinstance(f, InterruptionFrame))
    before, after = audio_of(out[:cut]), out[cut:]
    after_audio = sum(isinstance(f, OutputAudioRawFrame) for f in after)
    images_after = sum(isinstance(f, OutputImageRawFrame) for f in after)
    print(f"\naudio frames before the interruption {len(before) // SAMPLES_PER_FRAME}, after it {after_audio}; "
          f"images after it {images_after}")
    assert len(before) < 4.0 * AUDIO_SAMPLE_RATE  # it came in the middle
    assert after_audio <= 2 * CHUNK_FRAMES  # the chunk being pushed and the one being generated, no more
    assert images_after >= FPS  # the head goes on (idle)


@pytest.mark.slow
def test_the_example_bot_talks_and_is_interrupted():
    """examples/pipecat_bot.py --tiny (SmallWebRTC, espeak-ng) with a WebRTC client on loopback
    (tests/drivers/pipecat_bot_client.py, in a network namespace where only `lo` exists): its greeting is heard with
    frames flowing, and a long line interrupted after 2.5 s falls silent within two chunks while frames go on."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("espeak-ng"):
        pytest.fail("the example bot's test needs root and unshare (a loopback-only network namespace) and espeak-ng")
    driver = Path(__file__).parent / "drivers" / "pipecat_bot_client.py"
    result = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                             str(driver)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    audio, cut = np.array(report["audio"]), report["interrupted_at"]
    loud_after = np.flatnonzero(audio[cut:] > 0.02)
    print(f"\ngreeting {report['greeting']}; loud 20 ms packets after the interrupt {len(loud_after)}, the last "
          f"{(loud_after[-1] + 1) * 20 if len(loud_after) else 0} ms after it; video frames {report['video_frames']}")
    assert report["greeting"]["loud_packets"] >= 25 and report["greeting"]["video_frames"] >= 4 * FPS
    assert (audio[cut - 25: cut] > 0.02).any()  # the long line was being said
    assert len(loud_after) == 0 or (loud_after[-1] + 1) * 20 <= 2 * 960 + 300
    assert report["video_frames"] >= report["greeting"]["video_frames"] + 5 * FPS  # frames go on (idle)
