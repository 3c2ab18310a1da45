"""Property-based tests (Hypothesis) of the audio windowing, the Temporal Audio Context Cache and the session's
chunking: for any length, chunk size and context, every video frame is produced exactly once, from its own audio,
with no index out of range, and round(seconds * 25) frames in all.

A stub encoder and a stub session stand in for wav2vec2 and the DiT: the track's samples carry the number of their
video frame (1, 2, ...; 0 is padding or the cache's initial silence), the stub encoder returns, per frame, the
number it hears, and the stub session turns the centre of each frame's 5-frame window into a pixel value, so every
frame that comes out says which audio frame it was generated from.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashhead_core.audio.context_cache import AudioContextCache
from flashhead_core.audio.windows import frame_windows, once_mode_chunks
from flashhead_core.config import AUDIO_SAMPLE_RATE, AUDIO_WINDOW, CHUNK_FRAMES, FPS, SAMPLES_PER_FRAME
from flashhead_core.errors import AudioInputError
from flashhead_core.generation.chunks import AUDIO_MODES, audio_chunks, frames_to_keep, video_frame_count
from flashhead_core.generation.run import ChunkRun

PIXEL_SCALE = 2.0**16  # frame numbers travel as pixel values number / 2**16: exact in float32 below 2**15 frames
# no per-example deadline: the machine is shared
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)

new_frames_values = st.integers(1, CHUNK_FRAMES - 1)  # any chunk size; the models use 24 (Lite) and 28 (Pro)
context_frames_values = st.integers(CHUNK_FRAMES, 250)  # whole frames, so the stub's frame grid is exact
num_samples_values = st.integers(1, 20 * AUDIO_SAMPLE_RATE)


class FrameNumberEncoder:
    """Stands in for Wav2Vec2FrameEncoder: [N] samples -> [n, 1, 1] with n = int(N * 25 / 16000), as the real one,
    frame i holding the first sample of its 640."""

    def __init__(self):
        self.calls = 0
        self.model = SimpleNamespace(config=SimpleNamespace(hidden_size=1))

    def encode(self, samples: np.ndarray) -> torch.Tensor:
        self.calls += 1
        frames = len(samples) * FPS // AUDIO_SAMPLE_RATE
        first_samples = np.ascontiguousarray(samples[: frames * SAMPLES_PER_FRAME: SAMPLES_PER_FRAME])
        return torch.from_numpy(first_samples)[:, None, None]


class EchoSession:
    """Stands in for StreamingSession: each of a chunk's 33 frames shows the centre of its audio window."""

    def __init__(self, new_frames: int):
        self.config = SimpleNamespace(motion_frames=CHUNK_FRAMES - new_frames, new_frames=new_frames)
        self.chunks = 0

    def generate_chunk(self, windows: torch.Tensor) -> torch.Tensor:
        assert windows.shape == (1, CHUNK_FRAMES, AUDIO_WINDOW, 1, 1)
        self.chunks += 1
        centre = windows[0, :, AUDIO_WINDOW // 2, 0, 0].float()
        return (centre / PIXEL_SCALE * 2 - 1).view(1, 1, CHUNK_FRAMES, 1, 1).expand(1, 3, -1, -1, -1)


def numbered_track(num_samples: int) -> np.ndarray:
    """[N] float32: sample j holds the number of its video frame, j // 640 + 1."""
    return (np.arange(num_samples) // SAMPLES_PER_FRAME + 1).astype(np.float32)


def frame_numbers(frames: list[torch.Tensor]) -> list[int]:
    """The audio frame numbers the stub session's output frames [n, 1, 1, 3] were generated from."""
    values = torch.cat(frames)[:, 0, 0]
    assert torch.equal(values, values[:, :1].expand_as(values))  # grey: all three channels agree
    return (values[:, 0].double() * PIXEL_SCALE).round().long().tolist()


@PROPERTY_SETTINGS
@given(num_samples=num_samples_values, new_frames=new_frames_values, context_frames=context_frames_values,
       mode=st.sampled_from(AUDIO_MODES))
def test_every_frame_comes_once_from_its_own_audio(num_samples, new_frames, context_frames, mode):
    expected = round(num_samples * FPS / AUDIO_SAMPLE_RATE)
    if expected == 0:
        with pytest.raises(AudioInputError, match="less than one video frame"):
            video_frame_count(num_samples)
        return
    total = video_frame_count(num_samples)
    encoder, session = FrameNumberEncoder(), EchoSession(new_frames)
    chunks = audio_chunks(encoder, numbered_track(num_samples), mode, new_frames, context_frames / FPS)
    frames = list(ChunkRun(session, iter(chunks), mode=mode, total_frames=total))

    assert total == expected and sum(len(f) for f in frames) == total
    assert frame_numbers(frames) == list(range(1, total + 1))  # each frame once, in order, from its own audio
    needed = 1 + max(0, math.ceil((total - CHUNK_FRAMES) / new_frames)) if mode == "once" else \
        math.ceil(total / new_frames)
    assert session.chunks == needed  # no chunk generated past the end of the audio
    assert encoder.calls == (1 if mode == "once" else needed)  # nor any audio encoded for one


@PROPERTY_SETTINGS
@given(length=st.integers(1, 400), start=st.integers(-10, 410), count=st.integers(0, 60))
def test_windows_clamp_every_index_into_the_track(length, start, count):
    features = torch.arange(length, dtype=torch.float32)[:, None, None]
    windows = frame_windows(features, start, start + count)[0, :, :, 0, 0]
    offsets = torch.arange(AUDIO_WINDOW) - AUDIO_WINDOW // 2
    wanted = (torch.arange(start, start + count)[:, None] + offsets).clamp(0, length - 1)
    assert windows.shape == (count, AUDIO_WINDOW) and torch.equal(windows.long(), wanted)


@PROPERTY_SETTINGS
@given(context_frames=context_frames_values,
       pushes=st.lists(st.integers(0, 3 * CHUNK_FRAMES * SAMPLES_PER_FRAME), min_size=1, max_size=12))
def test_context_cache_holds_the_latest_audio_and_encodes_all_of_it(context_frames, pushes):
    capacity = context_frames * SAMPLES_PER_FRAME
    encoder = FrameNumberEncoder()
    cache = AudioContextCache(encoder, context_frames / FPS)
    history = np.zeros(capacity, np.float32)  # the initial silence
    rng = np.random.default_rng(len(pushes))
    for size in pushes:
        piece = rng.standard_normal(min(size, capacity)).astype(np.float32)
        windows = cache.push(piece)
        history = np.concatenate([history, piece])
        assert np.array_equal(cache.buffer, history[-capacity:])  # a FIFO of exactly the last `capacity` samples
        features = encoder.encode(cache.buffer)
        assert len(features) == context_frames
        assert torch.equal(windows, frame_windows(features, context_frames - CHUNK_FRAMES, context_frames))


@settings(max_examples=60, deadline=None)
@given(num_samples=st.integers(1, 8 * AUDIO_SAMPLE_RATE), new_frames=new_frames_values)
def test_once_mode_chunks_stay_inside_the_padded_track(num_samples, new_frames):
    encoder = FrameNumberEncoder()
    chunks = list(once_mode_chunks(encoder, numbered_track(num_samples), new_frames))
    last_frame = math.ceil(num_samples / SAMPLES_PER_FRAME)  # numbers above it are padding (0)
    for index, windows in enumerate(chunks):
        centres = windows[0, :, AUDIO_WINDOW // 2, 0, 0].long()
        first = index * new_frames
        real = torch.arange(first + 1, first + CHUNK_FRAMES + 1)
        assert torch.equal(centres, torch.where(real <= last_frame, real, 0))
        kept = frames_to_keep(index, "once", CHUNK_FRAMES - new_frames)
        assert kept.stop == CHUNK_FRAMES and (index == 0) == (kept.start == 0)
    assert len(chunks) * new_frames + CHUNK_FRAMES - new_frames >= last_frame  # the padded track covers the audio
