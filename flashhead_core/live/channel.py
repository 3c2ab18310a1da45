"""Live streams in memory: a channel per stream (its init segments and its latest media segments) and a registry of
them. Thread-safe: generation publishes from worker threads, readers wait on an asyncio loop (aiohttp handlers).

    registry = LiveRegistry()
    channel = registry.create(prompt_id="...", node="7")     # channel.id: unguessable
    channel.open(encoder.info)                                 # mimes, init segments, size, fps
    channel.publish(segment)                                   # a LiveSegment; the oldest beyond `keep` is dropped
    channel.finish(error=None)                                 # readers waiting past the end get None
    segment = await channel.segment(n, timeout=10)             # from a reader's event loop

Memory stays flat however long a stream runs: a channel keeps its last `keep` segments, the registry its ended
channels for `grace` seconds (and at most `max_ended` of them).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque

from .fragments import LiveSegment

DEFAULT_KEEP = 64  # segments (about a minute of Lite video)
DEFAULT_GRACE = 60.0  # seconds an ended channel stays readable (a viewer behind the live edge finishes watching)
DEFAULT_MAX_ENDED = 8


class LiveChannel:
    """One stream: init segments (once published), the last `keep` media segments, ended/error. `meta` is free-form
    (e.g. {"prompt_id", "node"} in ComfyUI) and shows in info()."""

    def __init__(self, keep: int = DEFAULT_KEEP, **meta):
        if keep < 1:
            raise ValueError(f"a live channel must keep at least one segment, got keep={keep}")
        self.id = secrets.token_urlsafe(16)
        self.meta = dict(meta)
        self.keep = keep
        self.created = time.time()
        self.ended_at: float | None = None  # time.monotonic() of finish()
        self._lock = threading.Lock()
        self._init: dict | None = None
        self._segments: deque[LiveSegment] = deque()
        self._next = 0
        self._media_end = 0.0
        self._error: str | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    # --- the producer (any thread)

    def open(self, encoder_info: dict) -> None:
        """The stream's codecs, init segments and geometry (`LiveEncoder.info`: video_mime, audio_mime, init_video,
        init_audio, width, height, fps); before the first segment."""
        info = encoder_info
        with self._lock:
            self._init = {"video_mime": info["video_mime"], "audio_mime": info["audio_mime"],
                          "init_video": bytes(info["init_video"]), "init_audio": bytes(info["init_audio"]),
                          "width": int(info["width"]), "height": int(info["height"]), "fps": int(info["fps"])}
            waiters = self._take_waiters()
        _wake(waiters)

    def publish(self, segment: LiveSegment) -> None:
        """Append the next segment (its index must be the one info()['next'] announces); wakes waiting readers."""
        with self._lock:
            if self.ended_at is not None:
                raise RuntimeError(f"live channel {self.id} has ended: nothing can be published to it")
            if segment.index != self._next:
                raise ValueError(f"live channel {self.id} expects segment {self._next}, got {segment.index}")
            self._segments.append(segment)
            while len(self._segments) > self.keep:
                self._segments.popleft()
            self._next += 1
            self._media_end = segment.media_end
            waiters = self._take_waiters()
        _wake(waiters)

    def finish(self, error: str | None = None) -> None:
        """End the stream (error: why it stopped early, e.g. cancelled). Idempotent: the first call wins."""
        with self._lock:
            if self.ended_at is not None:
                return
            self.ended_at, self._error = time.monotonic(), error
            waiters = self._take_waiters()
        _wake(waiters)

    # --- readers

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def info(self) -> dict:
        """{id, video_mime, audio_mime, width, height, fps (None until init is published), first (oldest kept
        index), next (the index the next publish gets), ended, error, media_end (seconds published), meta}."""
        with self._lock:
            init = self._init or {}
            return {"id": self.id, **{k: init.get(k) for k in ("video_mime", "audio_mime", "width", "height", "fps")},
                    "first": self._first(), "next": self._next, "ended": self.ended_at is not None,
                    "error": self._error, "media_end": self._media_end, "meta": dict(self.meta)}

    def init_segment(self, track: str) -> bytes | None:
        """The init segment of 'video' or 'audio', None until published."""
        with self._lock:
            return None if self._init is None else self._init[f"init_{track}"]

    def mime(self, track: str) -> str | None:
        with self._lock:
            return None if self._init is None else self._init[f"{track}_mime"]

    async def segment(self, index: int, timeout: float) -> LiveSegment | None:
        """Segment `index`, waiting up to `timeout` seconds for it to be published. None: the stream ended before it
        (see `ended`) or the wait timed out. KeyError: it was dropped (index < info()['first'])."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if index < self._next:
                    first = self._first()
                    if index < first:
                        raise KeyError(f"segment {index} of live channel {self.id} was dropped (oldest kept: {first})")
                    return self._segments[index - first]
                if self.ended_at is not None:
                    return None
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._forget(waiter)
                return None
            try:
                await asyncio.wait_for(waiter[1], remaining)
            except asyncio.TimeoutError:
                self._forget(waiter)
                return None

    async def wait_init(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the init segments; whether they are there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if self._init is not None:
                    return True
                if self.ended_at is not None:
                    return False
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter[1], max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                self._forget(waiter)
                return False

    def _first(self) -> int:
        return self._segments[0].index if self._segments else self._next

    def _take_waiters(self) -> list:
        waiters, self._waiters = self._waiters, []
        return waiters

    def _forget(self, waiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]) -> None:
    """Resolve waiting readers' futures on their own loops (publish runs on any thread)."""
    for loop, future in waiters:
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # that reader's loop is closed: nobody is waiting any more
            pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class LiveRegistry:
    """The channels of one server, by id. Ended channels stay `grace` seconds (at most `max_ended` of them, the
    oldest removed first), then are removed."""

    def __init__(self, keep: int = DEFAULT_KEEP, grace: float = DEFAULT_GRACE, max_ended: int = DEFAULT_MAX_ENDED):
        self.keep, self.grace, self.max_ended = keep, grace, max_ended
        self._lock = threading.Lock()
        self._channels: dict[str, LiveChannel] = {}

    def create(self, **meta) -> LiveChannel:
        channel = LiveChannel(keep=self.keep, **meta)
        with self._lock:
            self._prune()
            self._channels[channel.id] = channel
        return channel

    def get(self, id: str) -> LiveChannel | None:
        with self._lock:
            self._prune()
            return self._channels.get(id)

    def list(self) -> list[dict]:
        """info() of every channel held, oldest first."""
        with self._lock:
            self._prune()
            channels = list(self._channels.values())
        return [c.info() for c in channels]

    def remove(self, id: str) -> None:
        with self._lock:
            self._channels.pop(id, None)

    def _prune(self) -> None:
        now = time.monotonic()
        ended = sorted((c for c in self._channels.values() if c.ended_at is not None), key=lambda c: c.ended_at)
        for index, channel in enumerate(ended):
            if now - channel.ended_at > self.grace or index < len(ended) - self.max_ended:
                del self._channels[channel.id]
