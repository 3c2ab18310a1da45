"""The one thread that runs the model for every live session of a server: ready sessions batched.

    worker = GenerationWorker()              # batched=False: one session's chunk at a time, round-robin
    worker.start()
    worker.add(live)                         # a LiveSession; worker.wake() after feeding it
    image_ready = worker.call(live.add_identity, "ben", image)   # a concurrent.futures.Future, run between chunks
    worker.remove(live); worker.stop()

Each turn takes the next ready session round-robin (one with a chunk's worth of speech, an end, or an idle chunk due)
and, batched, every other ready session of the same size with it, up to max_batch: one chunk each through one
batched 4-step update (`live_session.step_together`: one DiT call per step for all of them). Calls (identity
preparation, a VAE encode) run between turns, first come first served. Each session keeps its own StreamingSession
(identity, motion latents, noise generator, audio context); a session that fails or closes drops out alone.

Batched against round-robin: with N sessions ready, round-robin makes a session wait for up to N - 1 other chunks
and then its own; a batch makes every one wait for the batch, which on a GPU costs little more than one chunk (the
DiT's matrices are far from full at batch 1), and on a CPU about N chunks (`flashhead bench live --scheduling
both` measures both in one run: docs/performance.md). A session whose chunk becomes ready while a batch runs waits for
it (at most one batch). A batched stream is its single run up to floating-point rounding (README, "Batched
streams"). A session whose speech comes faster than it is generated falls behind (its behind_s grows); its audio
and video stay in sync because both leave in the same segment.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from .live_session import step_together

POLL_SECONDS = 0.05  # how often readiness is checked without a wake(): idle chunks are due by the clock


class GenerationWorker:
    """Generation over live sessions (LiveSession: ready(), batch_key) in one daemon thread: batched (up to
    max_batch sessions of one batch_key a turn) or, batched=False, one chunk a turn, round-robin."""

    def __init__(self, name: str = "flashhead-live", batched: bool = True, max_batch: int = 8):
        self.name = name
        self.max_batch = max_batch if batched else 1
        self._cv = threading.Condition()
        self._sessions: list = []
        self._calls: deque[tuple[Future, object, tuple]] = deque()
        self._cursor = 0  # the session after the one served first last turn
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running chunk finish, then end the thread; calls still queued are cancelled."""
        with self._cv:
            self._stopping = True
            calls, self._calls = list(self._calls), deque()
            self._cv.notify_all()
        for future, _, _ in calls:
            future.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def add(self, session) -> None:
        with self._cv:
            self._sessions.append(session)
            self._cv.notify_all()

    def remove(self, session) -> None:
        """Forget a session (a chunk of it that is running now still completes, or is cancelled by its close())."""
        with self._cv:
            if session in self._sessions:
                self._sessions.remove(session)

    @property
    def sessions(self) -> int:
        with self._cv:
            return len(self._sessions)

    def wake(self) -> None:
        """A session may have become ready (speech fed, ended)."""
        with self._cv:
            self._cv.notify_all()

    def call(self, fn, *args) -> Future:
        """Run fn(*args) on the worker thread before the next chunk; its result or exception in the Future."""
        future: Future = Future()
        with self._cv:
            if self._stopping:
                raise RuntimeError("the generation worker has stopped")
            self._calls.append((future, fn, args))
            self._cv.notify_all()
        return future

    def _next_batch(self) -> list:
        """The first ready session from the cursor on, round-robin, and the other ready ones of its batch_key, up to
        max_batch ([] if none ready); under the condition's lock."""
        count, start = len(self._sessions), self._cursor
        batch = []
        for offset in range(count):
            session = self._sessions[(start + offset) % count]
            if len(batch) < self.max_batch and (not batch or session.batch_key == batch[0].batch_key) \
                    and session.ready():
                if not batch:
                    self._cursor = start + offset + 1
                batch.append(session)
        return batch

    def _run(self) -> None:
        while True:
            with self._cv:
                call, batch = None, []
                while not self._stopping and not self._calls and not (batch := self._next_batch()):
                    self._cv.wait(POLL_SECONDS)  # an idle session becomes ready with time, not a call
                if self._stopping:
                    return
                if self._calls:
                    call = self._calls.popleft()
            if call is not None:
                future, fn, args = call
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as e:  # handed to whoever waits on the future
                        future.set_exception(e)
            else:
                step_together(batch)
