"""Faults: cancellation at any step, Ctrl-C on the command line, a full disk while the MP4 is written, two
sessions in two threads, and Lite / Pro / Lite in one process. Nothing is left on disk, no state is shared between
sessions, and nothing carries over into the next run."""

from __future__ import annotations

import itertools
import random
import re
import resource
import signal
import threading
import time

import numpy as np
import pytest
import torch
from support import SIZE, Child, assert_user_error, flashhead, generate_args, generated_frames, run_child

from flashhead_core.audio.decode import load_audio
from flashhead_core.config import FPS
from flashhead_core.pipeline import load_pipeline, write_talking_video
from flashhead_core.generation.sampler import GenerationCancelled
from flashhead_core.testing.media import synthetic_speech, write_wav
from flashhead_core.media.video_io import read_video_info

from .conftest import VARIANTS

TWO_CHUNKS_SECONDS = 1.6  # 40 frames: two chunks of either variant
FILE_SIZE_LIMIT = 32 * 1024  # bytes: the MP4 of 4 s of speech outgrows it after a few frames


@pytest.fixture(scope="module")
def two_chunk_speech(inputs_dir):
    return write_wav(inputs_dir / "two_chunks.wav", synthetic_speech(TWO_CHUNKS_SECONDS))


@pytest.fixture(scope="module")
def red_face() -> np.ndarray:
    """A second identity: a red square on red, as a uint8 array."""
    image = np.zeros((80, 80, 3), np.uint8)
    image[..., 0] = 200
    image[20:60, 20:60] = (250, 120, 120)
    return image


# --- cancellation -----------------------------------------------------------------------------------------------------

def cancel_at(check: int):
    """A should_cancel callback that says stop at its `check`-th call (1 = the first)."""
    calls = itertools.count(1)
    return lambda: next(calls) >= check


@pytest.mark.parametrize("variant", VARIANTS)
def test_cancel_at_any_check_leaves_nothing_and_the_next_run_is_unaffected(variant, pipelines, portrait,
                                                                           two_chunk_speech, tmp_path):
    """The frames are compared, not the MP4s: at 64x64 libx264's bitstream varies from run to run (it reads
    uninitialised memory on frames this small), even from identical frames."""
    pipeline = pipelines[variant]
    job = dict(height=SIZE, width=SIZE, seed=5)
    samples = load_audio(two_chunk_speech)
    before = generated_frames(pipeline, portrait, samples, seed=5)
    checks = []

    def count_checks() -> bool:
        checks.append(1)
        return False

    write_talking_video(pipeline, portrait, two_chunk_speech, tmp_path / "before.mp4", should_cancel=count_checks,
                        **job)
    # Per chunk at least: before it starts and before each of the 4 steps; the long stages inside a chunk
    # (reference preparation, colour correction frame by frame, decode tiles) check too.
    assert len(checks) > 2 * (1 + 4)
    chosen = sorted({1, len(checks), *random.Random(variant).sample(range(2, len(checks)), 2)})
    for stop_at in chosen:
        out_dir = tmp_path / f"cancelled_at_{stop_at}"
        out_dir.mkdir()
        with pytest.raises(GenerationCancelled):
            write_talking_video(pipeline, portrait, two_chunk_speech, out_dir / "talk.mp4",
                                should_cancel=cancel_at(stop_at), **job)
        assert list(out_dir.iterdir()) == [], f"cancelled at check {stop_at} of {len(checks)}"
    write_talking_video(pipeline, portrait, two_chunk_speech, tmp_path / "after.mp4", **job)
    assert read_video_info(tmp_path / "after.mp4").frames == round(TWO_CHUNKS_SECONDS * FPS)
    assert torch.equal(generated_frames(pipeline, portrait, samples, seed=5), before)


def test_ctrl_c_on_the_command_line_exits_130_and_leaves_nothing(checkpoints, portrait, tmp_path, out_dir):
    speech = write_wav(tmp_path / "speech.wav", synthetic_speech(60.0))  # 1500 frames: still running at the signal
    # A shell ignores SIGINT in the jobs it starts in the background, and the child would inherit that: restore the
    # default, as in a terminal, so the test does not depend on how the suite was launched.
    child = Child(flashhead(*generate_args(checkpoints["lite"], portrait, speech, out_dir / "talk.mp4")),
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.perf_counter() + 120
    while not re.search(r"\|\s*[1-9]\d*/1500", child.stderr_so_far()):  # the progress bar: the first chunk is out
        assert child.process.poll() is None and time.perf_counter() < deadline, child.stderr_so_far()[-2000:]
        time.sleep(0.05)
    child.process.send_signal(signal.SIGINT)
    run = child.wait(timeout=60)
    assert run.returncode == 130, run.stderr[-3000:]
    assert "flashhead: interrupted" in run.stderr and "Traceback" not in run.stderr
    assert list(out_dir.iterdir()) == []


# --- a full disk ------------------------------------------------------------------------------------------------------

def limit_file_size() -> None:
    """In the child: files may not grow past FILE_SIZE_LIMIT, and a write past it fails with EFBIG (as ENOSPC on a
    full disk) instead of killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_full_disk_while_writing_the_mp4_names_the_file_and_removes_it(checkpoints, portrait, tmp_path, out_dir):
    speech = write_wav(tmp_path / "speech.wav", synthetic_speech(4.0))
    out = out_dir / "talk.mp4"
    run = run_child(flashhead(*generate_args(checkpoints["lite"], portrait, speech, out)), timeout=300,
                    preexec_fn=limit_file_size)
    assert run.returncode == 1, run.stderr[-3000:]
    assert_user_error(run.stderr, f"could not write {out}", "File too large", "Is the disk full",
                      "no partial file was left")
    assert list(out_dir.iterdir()) == []


# --- shared state -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_two_sessions_in_two_threads_match_each_run_alone(variant, pipelines, portrait, red_face):
    """Two sessions sharing one model and VAE, with their own identity and seed, run at the same time."""
    pipeline = pipelines[variant]
    speech = synthetic_speech(TWO_CHUNKS_SECONDS, seed=1)
    jobs = [(portrait, 1), (red_face, 2)]
    alone = [generated_frames(pipeline, image, speech, seed=seed) for image, seed in jobs]
    together = [None, None]
    start = threading.Barrier(len(jobs))

    def run(index: int) -> None:
        start.wait()
        image, seed = jobs[index]
        together[index] = generated_frames(pipeline, image, speech, seed=seed)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, (expected, got) in enumerate(zip(alone, together)):
        assert torch.equal(got, expected), f"session {index}: max difference {(got - expected).abs().max():.3g}"


def test_lite_then_pro_then_lite_gives_the_same_lite_video(checkpoints, portrait):
    """Variants share no global state: loading and running Pro between two Lite runs changes nothing."""
    speech = synthetic_speech(TWO_CHUNKS_SECONDS, seed=2)
    lite = load_pipeline(checkpoints["lite"], variant="lite")
    first = generated_frames(lite, portrait, speech, seed=7)
    generated_frames(load_pipeline(checkpoints["pro"], variant="pro"), portrait, speech, seed=7)
    assert torch.equal(generated_frames(lite, portrait, speech, seed=7), first)
    assert torch.equal(generated_frames(load_pipeline(checkpoints["lite"], variant="lite"), portrait, speech, seed=7),
                       first)
