"""The live session as a push-mode chunk run: barge-in drops queued speech and keeps the face going, idle chunks keep
the avatar moving at real time, and in both cases the stream is exactly one offline run over the audio it showed;
the generation worker batches ready sessions, each stream still its own run."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import SIZE, generated_frames

from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from flashhead_core.errors import InputError
from flashhead_core.live import LiveRegistry
from flashhead_core.media.frames import images_to_uint8
from flashhead_core.pipeline import load_pipeline
from flashhead_core.serve import live_session as live_session_module
from flashhead_core.serve.live_session import IDLE_LEAD_SECONDS, LiveSession, step_together
from flashhead_core.serve.scheduler import GenerationWorker
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return load_pipeline(write_tiny_checkpoint(tmp_path_factory.mktemp("lite"), "lite"), variant="lite")


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    return synthetic_portrait(tmp_path_factory.mktemp("face") / "face.png")


class Recorder:
    """A sink: what each write() received, and the interrupts."""

    def __init__(self):
        self.frames, self.audio, self.interrupts, self.closed = [], [], 0, []

    def start(self, width, height, fps, sample_rate, channels):
        pass

    def write(self, frames, audio):
        self.frames.append(frames.copy())
        self.audio.append(audio[:, 0].copy())

    def interrupt(self):
        self.interrupts += 1

    def close(self, error=None):
        self.closed.append(error)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def live_session(pipeline, face, **options) -> tuple[LiveSession, Recorder]:
    recorder = Recorder()
    live = LiveSession(pipeline, LiveRegistry().create(), height=SIZE, width=SIZE, sinks=[recorder], **options)
    live.add_identity("face", face)
    return live, recorder


def shown(recorder: Recorder) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(recorder.frames), np.concatenate(recorder.audio)


def with_frames(samples: np.ndarray) -> np.ndarray:
    """The samples of a video over `samples`: 640 a frame, round(seconds x 25) frames (cut or padded with silence)."""
    count = round(len(samples) * FPS / AUDIO_SAMPLE_RATE) * SAMPLES_PER_FRAME
    return np.pad(samples, (0, max(0, count - len(samples))))[:count]


def test_barge_in_drops_the_queued_speech_and_the_next_speech_starts_at_the_next_chunk(pipeline, face):
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    first, second = synthetic_speech(3 * step / AUDIO_SAMPLE_RATE, seed=1), synthetic_speech(0.7, seed=2)
    live, recorder = live_session(pipeline, face)
    live.feed(first)  # three chunks queued
    live.step()  # the first is generated and shown
    assert live.interrupt() == pytest.approx(2 * step / AUDIO_SAMPLE_RATE)  # the other two are dropped
    assert recorder.interrupts == 1 and not live.ready()
    live.feed(second)
    live.end()
    while live.ready():
        live.step()
    frames, audio = shown(recorder)
    # The video is one run over what was shown: the first chunk's speech, then the new speech from the next chunk
    # boundary on (same identity, motion, noise and audio context: the session went on).
    heard = np.concatenate([first[:step], second])
    assert np.array_equal(audio, with_frames(heard))
    assert np.array_equal(frames, images_to_uint8(generated_frames(pipeline, face, heard)))
    assert len(frames) == round(len(heard) * FPS / AUDIO_SAMPLE_RATE) and recorder.closed == [None]
    status = live.status()
    assert status["state"] == "ended" and status["received_s"] == pytest.approx(len(heard) / AUDIO_SAMPLE_RATE)


def test_idle_chunks_keep_the_avatar_moving_at_real_time_and_speech_takes_over_at_a_chunk_boundary(pipeline, face):
    """Silence, speech, silence: one continuous stream, equal to an offline run over that audio (the motion and the
    audio context carry across every switch), and no idle chunk while the video is a lead ahead of the clock."""
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    chunk_seconds = step / AUDIO_SAMPLE_RATE
    clock = Clock()
    live, recorder = live_session(pipeline, face, idle=True, clock=clock)
    assert live.ready() and live.status()["state"] == "idle"  # nothing queued, nothing shown: idle starts now
    live.step()
    assert live.ready() == (chunk_seconds < IDLE_LEAD_SECONDS)  # one chunk ahead of the clock: within the lead
    speech = synthetic_speech(1.5 * chunk_seconds, seed=3)  # a chunk and a half: the half is padded with idle
    live.feed(speech)
    assert live.ready() and live.status()["state"] == "generating"
    live.step()  # the speech's first slice
    assert not live.ready()  # two chunks ahead of the clock: the half slice waits for more speech or for the clock
    clock.now += 2 * chunk_seconds  # both have played
    live.step()  # the half slice, padded with the idle track
    live.step()  # idle again
    frames, audio = shown(recorder)
    heard = np.concatenate([np.zeros(step, np.float32), speech, np.zeros(3 * step - len(speech), np.float32)])
    assert np.array_equal(audio, heard)
    assert np.array_equal(frames, images_to_uint8(generated_frames(pipeline, face, heard)))
    assert len({frame.tobytes() for frame in frames}) == len(frames)  # every idle frame is generated, none repeated


def test_idle_is_off_by_default_and_a_closed_session_refuses_barge_in(pipeline, face):
    live, _ = live_session(pipeline, face)
    assert not live.ready() and live.status()["state"] == "waiting" and not live.status()["idle"]
    live.close()
    with pytest.raises(InputError, match="closed"):
        live.interrupt()


def test_after_a_barge_in_idle_pacing_counts_from_what_was_shown(pipeline, face):
    """The sinks drop the unplayed frames on an interrupt: idle must not wait for them to 'play' (the picture would
    stand still for the length of the dropped video)."""
    clock = Clock()
    live, _ = live_session(pipeline, face, idle=True, clock=clock)
    live.step()
    live.step()  # two idle chunks, none played yet: the video is ahead of the clock by more than the lead
    assert not live.ready()
    live.interrupt()
    assert live.ready() and live.status()["state"] == "idle"


# --- batched live scheduling ------------------------------------------------------------------------------------------

def _until_ended(lives, seconds: float = 300.0) -> None:
    """Wait for the worker to finish every session (the deadline only catches a hang, it judges no speed)."""
    deadline = time.monotonic() + seconds
    while not all(live.status()["state"] in ("ended", "failed") for live in lives):
        assert time.monotonic() < deadline, [live.status() for live in lives]
        time.sleep(0.05)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "round-robin"])
def test_the_worker_batches_ready_sessions_and_each_stream_is_its_single_run(pipeline, face, monkeypatch, batched):
    """Two sessions with their speech queued: batched, every chunk of both goes through one batched update (one DiT
    call per step for the two), and each stream is its own single run up to float rounding (uint8 within 1);
    round-robin, one chunk at a time, bit for bit."""
    speech = [synthetic_speech(2.5, seed=seed) for seed in (1, 2)]
    batches = []
    real = live_session_module.generate_together
    monkeypatch.setattr(live_session_module, "generate_together",
                        lambda runs, windows: batches.append(len(runs)) or real(runs, windows))
    worker = GenerationWorker(batched=batched)
    lives = [live_session(pipeline, face) for _ in speech]
    for (live, _), samples in zip(lives, speech):
        live.feed(samples)
        live.end()
        worker.add(live)
    worker.start()  # both ready from the first turn on
    try:
        _until_ended([live for live, _ in lives])
    finally:
        worker.stop()
    chunks = -(-round(2.5 * FPS) // pipeline.model.config.new_frames)
    assert batches == ([2] * chunks if batched else [1] * (2 * chunks))
    for (live, recorder), samples in zip(lives, speech):
        frames, audio = shown(recorder)
        single = images_to_uint8(generated_frames(pipeline, face, samples))
        assert live.error is None and np.array_equal(audio, with_frames(samples)) and frames.shape == single.shape
        difference = np.abs(frames.astype(int) - single.astype(int)).max()
        assert difference <= (1 if batched else 0), difference


def test_in_a_batch_a_failing_or_closed_session_drops_out_alone(pipeline, face):
    """Three sessions in one batched chunk: one whose sink breaks fails with the reason, one closed during the
    denoising steps shows nothing and reports no error, and the third gets its chunk as its single run would make it
    (to float rounding). A batch whose every session is closed stops at its next step."""
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    speech = synthetic_speech(step / AUDIO_SAMPLE_RATE, seed=3)
    (broken, broken_sink), (closed, closed_sink), (kept, kept_sink) = lives = \
        [live_session(pipeline, face) for _ in range(3)]
    for live, _ in lives:
        live.feed(speech)

    def write(frames, audio):
        raise OSError("the viewer's connection broke")

    broken_sink.write = write
    closed.session.progress = lambda chunk, denoising_step: denoising_step == 1 and closed._cancel.set()
    step_together([live for live, _ in lives])
    assert broken.status()["state"] == "failed" and "OSError: the viewer's connection broke" in broken.error
    assert closed_sink.frames == [] and closed.error is None
    assert kept.error is None and len(kept_sink.frames) == 1
    single = images_to_uint8(generated_frames(pipeline, face, speech))
    assert np.abs(kept_sink.frames[0].astype(int) - single[:len(kept_sink.frames[0])].astype(int)).max() <= 1
    alone, alone_sink = live_session(pipeline, face)
    alone.feed(speech)
    alone.session.progress = lambda chunk, denoising_step: alone._cancel.set()
    step_together([alone])
    assert alone_sink.frames == [] and alone.error is None and alone.session.chunk_index == 0
