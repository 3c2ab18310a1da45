"""Re-blocking a stream of audio pieces: read any number of samples at a time, whatever sizes the pieces come in.

    reader = SampleReader(pieces)          # pieces: [t] or [t, C] arrays, samples first, any t (0 included)
    block = reader.read(17920)             # [17920] / [17920, C]; fewer only at the end of the stream, then [0]

Used by the Temporal Audio Context Cache (one slice per chunk) and the MP4 writer (the audio of the frames written).
A whole array passed as a single piece is cut into views, never copied.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

import numpy as np


class SampleReader:
    """Sequential reads of `count` samples from an iterable of pieces, pulled lazily: at most one read's worth of
    samples (plus the rest of the last piece pulled) is held at a time."""

    def __init__(self, pieces: Iterable[np.ndarray]):
        self._pieces = iter(pieces)
        self._queue: deque[np.ndarray] = deque()  # pulled, not yet read; the head may be a view of a piece's tail
        self._queued = 0  # samples in the queue

    def read(self, count: int) -> np.ndarray:
        """The next `count` samples, [count] or [count, C]; fewer only when the stream ends ([0] once it has)."""
        while self._queued < count and (piece := next(self._pieces, None)) is not None:
            if len(piece):
                self._queue.append(piece)
                self._queued += len(piece)
        parts = []
        while count and self._queue:
            head = self._queue.popleft()
            if len(head) > count:
                self._queue.appendleft(head[count:])
            parts.append(head[:count])
            count -= len(parts[-1])
        self._queued -= sum(map(len, parts))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
