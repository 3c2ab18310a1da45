"""The live tee of a video being written: `VideoWriter(..., live=LiveSink(channel))` hands each chunk's frames and
exactly the audio samples it muxed to the sink, which encodes them as live segments and publishes them.

    channel = registry.create(prompt_id=...)
    write_talking_video(pipeline, image, audio, "out.mp4", live=LiveSink(channel))

The MP4 never depends on the live stream: a failure of the live encoder is logged and ends the channel with that
error; the file is written as without it.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..config import AUDIO_SAMPLE_RATE
from .channel import LiveChannel
from .fragments import DEFAULT_CRF, LiveEncoder

log = logging.getLogger(__name__)


class LiveSink:
    """Owns the stream's LiveEncoder (made by start(), once the writer knows its size and soundtrack) and publishes
    to `channel`. Writes shorter than `min_seconds` of video are gathered into one segment (the face crop writes a
    chunk in parts of a few frames; every segment starts with a keyframe). A writer without audio gets a silent
    16 kHz track (a player buffers both tracks). encode_seconds: per segment, the time from the write() that
    completed it to published (what the live edge lags behind the MP4 by)."""

    def __init__(self, channel: LiveChannel, crf: int = DEFAULT_CRF, min_seconds: float = 0.4):
        self.channel, self.crf, self.min_seconds = channel, crf, min_seconds
        self.encode_seconds: list[float] = []
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []  # writes not yet in a segment
        self._encoder: LiveEncoder | None = None
        self._silent = False
        self._closed = False

    def start(self, width: int, height: int, fps: int, sample_rate: int | None, channels: int | None) -> None:
        """The writer's geometry and soundtrack (sample_rate None: the video has no audio)."""
        self._silent = sample_rate is None
        self._guarded(lambda: self._start(width, height, fps, sample_rate or AUDIO_SAMPLE_RATE, channels or 1))

    def write(self, frames: np.ndarray, audio: np.ndarray | None) -> None:
        """frames uint8 [n, H, W, 3]; audio float32 [t, C]: the samples muxed with them (None without audio)."""
        if self._encoder is None or self._closed:
            return
        self._pending.append((frames, audio))
        if sum(len(f) for f, _ in self._pending) >= self.min_seconds * self._encoder.fps:
            self._guarded(self._publish_pending)
        else:  # kept past this call: a copy (the writer's caller may reuse its buffers)
            self._pending[-1] = (np.array(frames), None if audio is None else np.array(audio))

    def interrupt(self) -> None:
        """Barge-in: the writes gathered for the next segment are dropped (segments already published stay: a
        player holding them plays them; the timeline goes on without a gap)."""
        self._pending = []

    def close(self, error: str | None = None) -> None:
        """End the stream: flush the encoders into a last segment (on success), then finish the channel with `error`
        (why it stopped early: cancelled, failed). Idempotent."""
        if self._closed:
            return
        if error is None and self._encoder is not None:
            self._guarded(self._flush)
        if self._encoder is not None:
            self._encoder.close()  # its threads end now, not when the garbage collector finds the session
        self._pending = []
        self._closed = True
        self.channel.finish(error)

    def _start(self, width: int, height: int, fps: int, sample_rate: int, channels: int) -> None:
        self._encoder = LiveEncoder(width, height, fps=fps, sample_rate=sample_rate, channels=channels, crf=self.crf)
        self.channel.open(self._encoder.info)

    def _publish_pending(self) -> None:
        started = time.perf_counter()
        frames = np.concatenate([f for f, _ in self._pending])
        audio = self._silence(len(frames)) if self._silent else np.concatenate([a for _, a in self._pending])
        self._pending = []
        self.channel.publish(self._encoder.encode(frames, audio))
        self.encode_seconds.append(time.perf_counter() - started)

    def _flush(self) -> None:
        if self._pending:
            self._publish_pending()
        last = self._encoder.finish()
        if last is not None:
            self.channel.publish(last)

    def _silence(self, frames: int) -> np.ndarray:
        """float32 [t, 1] zeros: the samples of the next `frames` frames at the encoder's rate."""
        encoder = self._encoder
        samples = lambda count: round(count * encoder.sample_rate / encoder.fps)  # noqa: E731
        return np.zeros((samples(encoder.frames_written + frames) - samples(encoder.frames_written), 1), np.float32)

    def _guarded(self, action) -> bool:
        """Run `action`; a failure ends the live stream with its message and leaves the caller (the MP4) alone."""
        try:
            action()
            return True
        except Exception as e:  # the live view is best effort; the file being written must not fail with it
            log.warning("FlashHead live stream %s stopped: %s", self.channel.id, e, exc_info=True)
            self._closed = True
            self.channel.finish(f"the live stream failed: {e}")
            return False
