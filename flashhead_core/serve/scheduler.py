"""The one thread that runs the model for every live session of a server: queued, not batched.

    worker = GenerationWorker(); worker.start()
    worker.add(live)                         # a LiveSession; worker.wake() after feeding it
    image_ready = worker.call(live.add_identity, "ben", image)   # a concurrent.futures.Future, run between chunks
    worker.remove(live); worker.stop()

One chunk at a time, round-robin over the sessions that have a chunk's worth of speech (each keeps its own
StreamingSession: identity, motion latents, noise generator, audio context), with calls (identity preparation, a VAE
encode) run between chunks, first come first served. Batching several sessions into one DiT call
(flashhead_core.batch) would raise throughput, but sessions' chunks become ready at different times and would have
to wait for each other; with one queue every session gets 1/N of the model and its latency stays one chunk's
generation time. A session whose speech comes faster than it is generated falls behind (its behind_s grows); its
audio and video stay in sync because both leave in the same segment.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future

from ..errors import FlashHeadError

log = logging.getLogger(__name__)
POLL_SECONDS = 0.05  # how often readiness is checked without a wake(): idle chunks are due by the clock


class GenerationWorker:
    """Round-robin generation over live sessions (objects with ready(), step(), fail(message)) in one daemon
    thread."""

    def __init__(self, name: str = "flashhead-live"):
        self.name = name
        self._cv = threading.Condition()
        self._sessions: list = []
        self._calls: deque[tuple[Future, object, tuple]] = deque()
        self._cursor = 0  # the session after the one served last
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

    def _next_ready(self):
        """The first ready session from the cursor on, round-robin (None if none); under the condition's lock."""
        count = len(self._sessions)
        for offset in range(count):
            index = (self._cursor + offset) % count
            if self._sessions[index].ready():
                self._cursor = index + 1
                return self._sessions[index]
        return None

    def _run(self) -> None:
        while True:
            with self._cv:
                call = session = None
                while not self._stopping and not self._calls and (session := self._next_ready()) is None:
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
                self._step(session)

    @staticmethod
    def _step(session) -> None:
        try:
            session.step()
        except FlashHeadError as e:
            session.fail(str(e))
        except Exception as e:  # a bug: the session stops with the reason, the worker and other sessions go on
            log.exception("live session failed")
            session.fail(f"generation failed: {type(e).__name__}: {e}")
