"""A live talking head: speech arrives in pieces while it is spoken, the stream's segments leave one per chunk.

    live = LiveSession(pipeline, channel, height=512, width=512, seed=0)
    live.add_identity("anna", image)          # the first one added is active
    live.feed_pcm16(data, rate=24000)         # any thread, any piece size: s16le mono PCM (or feed(float32 [t], rate))
    live.use_identity("ben")                  # takes effect at the next chunk (a clean cut)
    while live.ready():                       # the generation worker's side (live/scheduler.py)
        live.step()                           # one chunk: model, encoder, channel.publish
    live.end()                                # end of speech: the last chunk is padded, the video trimmed

The speech is resampled to 16 kHz mono (soxr, streaming) and cut into slices of new_frames x 640 samples; each slice
is one chunk in stream mode: the Temporal Audio Context Cache takes it (`AudioContextCache.push`), the session
generates the chunk, its new frames (motion frames dropped) are encoded with exactly that slice's samples, so the
segment's audio is the speech its frames were made from (the frames of slice k cover [k x S, (k + 1) x S) samples,
S = new_frames x 640). At the end the last slice is padded with silence for the model, and the video is trimmed to
round(seconds x 25) frames (the last segment keeps its real samples only). `flush()` pads the speech so far with
silence to the next chunk (a text-to-speech program between utterances: its last words need not wait for more).

Figures (`status()`): received_s (speech in), generated_s (video out), behind_s = received - generated (what the
stream lags behind the speech; at least the speech waiting for a whole chunk), rtf (generation seconds per second of
video over the last 8 chunks; above 1 the session falls behind), first_frame_latency_s (first audio in -> first
segment published).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from ..audio import AudioContextCache
from ..audio.decode import RESAMPLE_QUALITY
from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from ..errors import AudioInputError, InputError, SpeechBacklogError
from ..generation.sampler import GenerationCancelled
from ..generation.session import StreamingSession
from ..generation.chunks import check_encoder_fits, new_images
from ..live.fragments import LiveEncoder

RTF_CHUNKS = 8  # the real-time factor: generation seconds over video seconds of the last RTF_CHUNKS chunks
MIN_RATE, MAX_RATE = 8000, 192000  # PCM rates a live session takes


def check_rate(rate) -> int:
    """A PCM sample rate in MIN_RATE..MAX_RATE Hz (whole), else AudioInputError naming the range."""
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioInputError(f"PCM rate must be a whole number of Hz between {MIN_RATE} and {MAX_RATE}, got "
                              f"{rate!r}: send ?rate=<the rate your audio is at> (16000 needs no resampling)")
    return rate


class LiveSession:
    """One live stream: its StreamingSession (identities, motion, noise), audio context, encoder and channel.

    feed/flush/end/use_identity/status may be called from any thread; step() from one thread at a time (the
    generation worker). max_backlog_seconds: speech that may wait for generation; a push beyond it is refused
    (SpeechBacklogError) instead of growing memory without bound."""

    def __init__(self, pipeline, channel, *, height: int, width: int, seed: int = 0, context_seconds: float = 8.0,
                 max_backlog_seconds: float = 600.0):
        check_encoder_fits(pipeline.audio_encoder, pipeline.model.config)
        self._cancel = threading.Event()  # close(): the running step stops at its next check
        self.session = StreamingSession(pipeline.model, pipeline.vae, height=height, width=width, seed=seed,
                                        device=pipeline.device, should_cancel=self._cancel.is_set)
        self.cache = AudioContextCache(pipeline.audio_encoder, context_seconds)
        self.channel = channel
        self.encoder: LiveEncoder | None = LiveEncoder(width, height, fps=FPS, sample_rate=AUDIO_SAMPLE_RATE)
        channel.publish_init(**self.encoder.info)
        config = pipeline.model.config
        self.new_frames, self.motion_frames = config.new_frames, config.motion_frames
        self.slice_samples = self.new_frames * SAMPLES_PER_FRAME
        self.max_backlog = round(max_backlog_seconds * AUDIO_SAMPLE_RATE)
        self._lock = threading.Lock()  # guards everything below that feed() and step() share
        self._step_lock = threading.Lock()  # held through a step; close() waits for it
        self._pending: deque[np.ndarray] = deque()  # 16 kHz samples not yet in a chunk
        self._pending_samples = 0
        self._received = 0  # 16 kHz samples in (silence added by flush() included)
        self._emitted = 0  # frames published
        self._resampler = None
        self._rate = AUDIO_SAMPLE_RATE
        self._odd_byte = b""  # a PCM byte left over from a piece of odd length
        self._wanted: str | None = None  # identity to switch to at the next chunk
        self._ended = self._done = False
        self.error: str | None = None
        self._first_audio: float | None = None
        self.first_frame_latency: float | None = None
        self._compute: deque[tuple[float, float]] = deque(maxlen=RTF_CHUNKS)  # (generation s, video s) per chunk

    # --- the speech -----------------------------------------------------------------------------------------------

    def feed_pcm16(self, data: bytes, rate: int = AUDIO_SAMPLE_RATE) -> None:
        """Signed 16-bit little-endian mono PCM at `rate`, any number of bytes (an odd last byte waits for the
        next piece)."""
        with self._lock:
            data, self._odd_byte = self._odd_byte + data, b""
            if len(data) % 2:
                data, self._odd_byte = data[:-1], data[-1:]
        self.feed(np.frombuffer(data, "<i2").astype(np.float32) / 32768, rate)

    def feed(self, samples: np.ndarray, rate: int = AUDIO_SAMPLE_RATE) -> None:
        """Speech [t] float32 in -1..1 at `rate` Hz (mono). A new rate closes the previous one's resampler."""
        rate = check_rate(rate)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise AudioInputError("the speech holds NaN or infinite samples: send finite PCM in -1..1")
        with self._lock:
            self._check_open()
            if rate != self._rate:
                self._append(self._flush_resampler())
                self._rate = rate
            if rate != AUDIO_SAMPLE_RATE and self._resampler is None:
                import soxr

                self._resampler = soxr.ResampleStream(rate, AUDIO_SAMPLE_RATE, 1, dtype="float32",
                                                      quality=RESAMPLE_QUALITY)
            resampled = samples if self._resampler is None else self._resampler.resample_chunk(samples)
            if self._pending_samples + len(resampled) > self.max_backlog:
                raise SpeechBacklogError(
                    f"{(self._pending_samples + len(resampled)) / AUDIO_SAMPLE_RATE:.0f} s of speech would wait "
                    f"for generation, more than this session's {self.max_backlog / AUDIO_SAMPLE_RATE:.0f} s "
                    f"backlog: push it no faster than it is generated (watch behind_s in the status)")
            if len(samples) and self._first_audio is None:
                self._first_audio = time.perf_counter()
            self._append(resampled)

    def flush(self) -> None:
        """Pad the speech so far with silence to a whole chunk, so that its last words are generated now."""
        with self._lock:
            self._check_open()
            self._append(self._flush_resampler())
            self._append(np.zeros(-self._received % self.slice_samples, np.float32))

    def end(self) -> None:
        """The speech is over: what is pending becomes the last chunk. Ending twice is harmless."""
        with self._lock:
            if not self._ended:
                self._append(self._flush_resampler())
                self._ended = True

    def _check_open(self) -> None:
        if self._cancel.is_set():
            raise InputError("this session was closed (deleted, or freed after being idle): create a new session")
        if self._ended:
            raise InputError("this session's speech has ended (an 'end' was sent, or the speech came as a file): "
                             "create a new session for more speech")

    def _flush_resampler(self) -> np.ndarray:
        """The tail the resampler still holds (empty at 16 kHz); the next piece at another rate starts afresh."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail, self._resampler = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True), None
        return tail

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(samples)
            self._pending_samples += len(samples)
            self._received += len(samples)

    def _take(self, count: int) -> np.ndarray:
        """Up to `count` pending samples, oldest first, [<= count] float32."""
        parts = []
        while count and self._pending:
            head = self._pending.popleft()
            if len(head) > count:
                self._pending.appendleft(head[count:])
                head = head[:count]
            parts.append(head)
            count -= len(head)
        self._pending_samples -= sum(map(len, parts))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    # --- identities -----------------------------------------------------------------------------------------------

    @property
    def identities(self) -> list[str]:
        return list(self.session.identities)

    @property
    def identity(self) -> str | None:
        """The identity the next chunk uses."""
        with self._lock:
            return self._wanted or self.session.active

    def add_identity(self, name: str, image) -> None:
        """Prepare a portrait (a VAE encode: run it where the model runs); the first one becomes active."""
        if name in self.session.identities:
            raise InputError(f"an identity named {name!r} exists already: choose another name")
        self.session.add_identity(name, image)

    def use_identity(self, name: str) -> None:
        """Switch to a prepared identity at the next chunk."""
        if name not in self.session.identities:
            raise InputError(f"unknown identity {name!r}; this session has: {', '.join(self.identities) or 'none'}")
        with self._lock:
            self._wanted = name

    # --- generation -----------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """A chunk can be generated now: a whole slice is pending, or the speech ended with something left."""
        with self._lock:
            if self._done or self._cancel.is_set() or self.error is not None:
                return False
            return self._pending_samples >= self.slice_samples or self._ended

    def step(self) -> None:
        """Generate, encode and publish the next chunk (or, after the end, finish the stream)."""
        with self._step_lock:
            if self._cancel.is_set() or self._done:
                return
            with self._lock:
                piece = self._take(self.slice_samples)
                last = self._ended and self._pending_samples == 0
                switch, self._wanted = self._wanted, None
                total = round(self._received * FPS / AUDIO_SAMPLE_RATE) if last else None
            frames = self.new_frames if total is None else total - self._emitted
            try:
                if frames > 0:
                    self._generate(piece, switch, frames)
            except GenerationCancelled:
                if self._cancel.is_set():  # close() is waiting for this step
                    return
                raise
            if last:
                self._finish()

    def _generate(self, piece: np.ndarray, switch: str | None, frames: int) -> None:
        start = time.perf_counter()
        if switch is not None:
            self.session.use_identity(switch)
        windows = self.cache.push(np.pad(piece, (0, self.slice_samples - len(piece))))
        chunk = self.session.generate_chunk(windows)
        images = new_images(chunk, self.session.chunk_index - 1, "stream", self.motion_frames, frames)
        segment = self.encoder.encode(images, piece[:, None])
        self._compute.append((time.perf_counter() - start, len(images) / FPS))
        self._emitted += len(images)
        self.channel.publish(segment)
        if self.first_frame_latency is None and self._first_audio is not None:
            self.first_frame_latency = time.perf_counter() - self._first_audio

    def _finish(self) -> None:
        last = self.encoder.finish()
        if last is not None:
            self.channel.publish(last)
        self.encoder = None
        self._done = True
        self.channel.finish()

    def fail(self, error: str) -> None:
        """Generation failed: the stream ends with `error`, nothing more is generated."""
        self.error = error
        self.encoder = None
        self.channel.finish(error=error)

    def close(self) -> None:
        """Stop (a running step is cancelled at its next denoising step) and release the encoder. Blocks until the
        step has stopped: call it off the event loop."""
        self._cancel.set()
        with self._step_lock:
            if not self._done and self.error is None:
                self.channel.finish(error="session closed")
            self.encoder = None
            self._done = True

    # --- figures --------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """The session's figures (see the module docstring) and state: waiting (for a chunk of speech),
        generating, ended (all generated), failed (with error), closed."""
        with self._lock:
            received = self._received / AUDIO_SAMPLE_RATE
            generated = self._emitted / FPS
            ready = self._pending_samples >= self.slice_samples or (self._ended and not self._done)
            state = ("failed" if self.error is not None else "closed" if self._cancel.is_set() else
                     "ended" if self._done else "generating" if ready else "waiting")
            rtf = sum(c for c, _ in self._compute) / sum(v for _, v in self._compute) if self._compute else None
            return {"state": state, "received_s": round(received, 3), "generated_s": round(generated, 3),
                    "behind_s": round(max(0.0, received - generated), 3) if not self._done else 0.0,
                    "rtf": None if rtf is None else round(rtf, 3), "chunks": self.session.chunk_index,
                    "first_frame_latency_s": None if self.first_frame_latency is None else
                    round(self.first_frame_latency, 3),
                    "speech_ended": self._ended, "identity": self._wanted or self.session.active,
                    "identities": list(self.session.identities), "error": self.error}
