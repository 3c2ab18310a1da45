"""The Temporal Audio Context Cache: the 'stream' audio mode (docs/algorithm.md#stream-mode).

A FIFO of the last `context_seconds` of audio (8 s = 128000 samples), initially silence. Each chunk appends one slice
of new_frames * 640 samples, re-encodes the whole buffer (n = 200 frames for 8 s; the normalisation statistics
include the leading zeros) and takes the windows of its last 33 frames:

    cache = AudioContextCache(encoder)
    windows = cache.push(slice_samples)                # [1, 33, 5, 12, hidden]
    windows = SpeechWindows(cache, speech, new_frames)  # an iterator: one chunk's windows per slice of `speech`
    for windows in stream_chunks(encoder, samples, new_frames): ...   # a whole track ([N] or pieces), a chunk per slice

Memory and cost per chunk are constant, whatever the length of the track.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ..config import AUDIO_SAMPLE_RATE, CHUNK_FRAMES, SAMPLES_PER_FRAME
from ..errors import InputError
from ..media.sample_reader import SampleQueue, SampleReader
from .wav2vec2 import Wav2Vec2FrameEncoder
from .windows import frame_windows

DEFAULT_CONTEXT_SECONDS = 8.0


class AudioContextCache:
    """Sliding window over the most recent audio; `push` returns the next chunk's windows."""

    def __init__(self, encoder: Wav2Vec2FrameEncoder, context_seconds: float = DEFAULT_CONTEXT_SECONDS,
                 buffer: np.ndarray | None = None):
        """buffer: the FIFO to start from ([capacity] float32, e.g. a previous run's `buffer`); default silence."""
        capacity = round(context_seconds * AUDIO_SAMPLE_RATE)
        if capacity < CHUNK_FRAMES * SAMPLES_PER_FRAME:
            raise InputError(f"context of {context_seconds} s is shorter than one chunk "
                             f"({CHUNK_FRAMES * SAMPLES_PER_FRAME / AUDIO_SAMPLE_RATE} s); use at least that")
        self.encoder = encoder
        if buffer is not None and np.shape(buffer) != (capacity,):
            raise InputError(f"the saved audio context holds {np.shape(buffer)} samples, this cache {capacity} "
                             f"({context_seconds} s): continue with the context_seconds of the first run")
        self._buffer = np.zeros(capacity, np.float32) if buffer is None else np.array(buffer, np.float32)

    @property
    def buffer(self) -> np.ndarray:
        """The samples the next encode sees: [capacity] float32, oldest first (a copy)."""
        return self._buffer.copy()

    def push(self, samples: np.ndarray) -> torch.Tensor:
        """Append [S] new samples (S <= capacity; the oldest S drop out), encode the whole buffer ([n, 12, H],
        n = int(capacity * 25 / 16000)) and return the windows of its last 33 frames: [1, 33, 5, 12, H]."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1 or len(samples) > len(self._buffer):
            raise ValueError(f"push takes [samples] with at most {len(self._buffer)} samples, "
                             f"got shape {list(samples.shape)}")
        self._buffer = np.concatenate([self._buffer[len(samples):], samples])
        features = self.encoder.encode(self._buffer)
        return frame_windows(features, len(features) - CHUNK_FRAMES, len(features))


def stream_slices(samples: np.ndarray | Iterable[np.ndarray], new_frames: int) -> Iterator[np.ndarray]:
    """A track of N samples -> ceil(N / S) slices [S] float32, S = new_frames * 640, one per chunk, the last one
    zero-padded. The track is a whole array [N] or an iterable of pieces [t] (any sizes, e.g. a file decoded as a
    stream); slices are cut as they are needed, so the track is never copied or held whole (an hour at 16 kHz is
    220 MB)."""
    step = new_frames * SAMPLES_PER_FRAME
    reader = SampleReader([samples] if isinstance(samples, np.ndarray) else samples)
    while len(piece := np.asarray(reader.read(step), dtype=np.float32)):
        yield np.pad(piece, (0, step - len(piece)))


class SpeechWindows:
    """Stream mode's chunk windows [1, 33, 5, 12, 768] from speech: each chunk reads the next slice of
    new_frames x 640 samples (a partial one at the end, zero-padded for the model) and pushes it through the Temporal
    Audio Context Cache. `speech` is a SampleReader (a whole track, pulled) or a SampleQueue (pushed, live)."""

    def __init__(self, cache: AudioContextCache, speech: SampleQueue, new_frames: int):
        self.cache, self.speech = cache, speech
        self.slice_samples = new_frames * SAMPLES_PER_FRAME
        self.last_slice = np.zeros(0, np.float32)  # the real samples of the latest slice: the audio of its frames

    def __iter__(self) -> "SpeechWindows":
        return self

    def __next__(self) -> torch.Tensor:
        piece = np.asarray(self.speech.read(self.slice_samples), dtype=np.float32)
        if not len(piece):
            raise StopIteration
        self.last_slice = piece
        return self.cache.push(np.pad(piece, (0, self.slice_samples - len(piece))))

    @property
    def partial(self) -> bool:
        """The latest slice was cut short by the end of the speech."""
        return len(self.last_slice) < self.slice_samples


def stream_chunks(encoder: Wav2Vec2FrameEncoder, samples: np.ndarray | Iterable[np.ndarray], new_frames: int,
                  context_seconds: float = DEFAULT_CONTEXT_SECONDS) -> SpeechWindows:
    """A whole track (an array [N] or pieces [t], as `stream_slices` takes) in stream mode: one [1, 33, 5, 12, H]
    window tensor per slice of `stream_slices`; each chunk's last new_frames frames are its slice's audio."""
    pieces = [samples] if isinstance(samples, np.ndarray) else samples
    return SpeechWindows(AudioContextCache(encoder, context_seconds), SampleReader(pieces), new_frames)
