"""Re-blocking audio pieces: read any number of samples at a time, whatever sizes the pieces come in.

    queue = SampleQueue()                  # pieces pushed as they arrive (live speech)
    queue.append(piece); queue.queued      # [t] or [t, C] arrays, samples first, any t (0 included)
    block = queue.read(17920)              # up to 17920 samples: what is queued, oldest first
    reader = SampleReader(pieces)          # pieces pulled from an iterable as reads need them (files, arrays)
    block = reader.read(17920)             # [17920] / [17920, C]; fewer only at the end of the stream, then [0]

Used by the chunk loop (one slice per chunk) and the MP4 writer (the audio of the frames written). A whole array
passed as a single piece is cut into views, never copied.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

import numpy as np


class SampleQueue:
    """Pieces in, reads of any length out, oldest first. Not thread-safe (a live session guards it)."""

    def __init__(self):
        self._queue: deque[np.ndarray] = deque()  # not yet read; the head may be a view of a piece's tail
        self.queued = 0  # samples in the queue

    def append(self, piece: np.ndarray) -> None:
        if len(piece):
            self._queue.append(piece)
            self.queued += len(piece)

    def clear(self) -> int:
        """Drop everything queued; returns how many samples were dropped."""
        dropped, self.queued = self.queued, 0
        self._queue.clear()
        return dropped

    def read(self, count: int) -> np.ndarray:
        """Up to `count` queued samples, [<= count] or [<= count, C] ([0] float32 when nothing is queued)."""
        parts = []
        while count and self._queue:
            head = self._queue.popleft()
            if len(head) > count:
                self._queue.appendleft(head[count:])
            parts.append(head[:count])
            count -= len(parts[-1])
        self.queued -= sum(map(len, parts))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class SampleReader(SampleQueue):
    """Sequential reads of `count` samples from an iterable of pieces, pulled lazily: at most one read's worth of
    samples (plus the rest of the last piece pulled) is held at a time."""

    def __init__(self, pieces: Iterable[np.ndarray]):
        super().__init__()
        self._pieces = iter(pieces)

    def read(self, count: int) -> np.ndarray:
        """The next `count` samples, [count] or [count, C]; fewer only when the stream ends ([0] once it has)."""
        while self.queued < count and (piece := next(self._pieces, None)) is not None:
            self.append(piece)
        return super().read(count)
