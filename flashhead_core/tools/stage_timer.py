"""Per-stage timing of the streaming loop (`flashhead bench e2e`): how long each stage of each chunk takes.

    timer = StageTimer(device)
    with timer.stage("vae_decode"):
        frames = vae.decode(latents)
    timer.end_chunk()
    timer.medians(skip_chunks=1)        # {"vae_decode": 12.3, ...} milliseconds, warm-up chunks left out

On a GPU each stage is bracketed by CUDA events (no synchronisation inside the loop, so the timing does not change
what it measures); they are read once, when the results are asked for. On the CPU it is perf_counter.
The session takes `timer.stage` as its stage hook.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.chunks: list[dict[str, list]] = [{}]  # per chunk: stage -> [(start, end) marks]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._mark()
        yield
        self.chunks[-1].setdefault(name, []).append((start, self._mark()))

    def end_chunk(self) -> None:
        self.chunks.append({})

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def per_chunk(self) -> list[dict[str, float]]:
        """Milliseconds per stage for every finished chunk (a stage entered twice in a chunk is summed)."""
        if self.cuda:
            torch.cuda.synchronize()
        return [{name: sum(self._ms(a, b) for a, b in marks) for name, marks in chunk.items()}
                for chunk in self.chunks if chunk]

    def medians(self, skip_chunks: int = 1) -> dict[str, float]:
        """Median milliseconds per stage over the chunks after the first `skip_chunks` (warm-up)."""
        chunks = self.per_chunk()
        steady = chunks[skip_chunks:] or chunks
        names = [name for chunk in steady for name in chunk]
        return {name: statistics.median([chunk[name] for chunk in steady if name in chunk])
                for name in dict.fromkeys(names)}
