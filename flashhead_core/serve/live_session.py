"""A live talking head: speech arrives in pieces while it is spoken, each chunk leaves through the stream's sinks.

    live = LiveSession(pipeline, channel, height=512, width=512, seed=0, idle=True)
    live.add_identity("anna", image)          # the first one added is active
    live.feed_pcm16(data, rate=24000)         # any thread, any piece size: s16le mono PCM (or feed(float32 [t], rate))
    live.use_identity("ben")                  # takes effect at the next chunk (a clean cut)
    live.interrupt()                          # barge-in: queued speech dropped, the next speech starts at the next chunk
    while live.ready():                       # the generation worker's side (serve/scheduler.py)
        live.step()                           # one chunk of the push-mode ChunkRun, written to every sink
    step_together([live, other])              # one chunk of each, in one batched DiT call per step (same size)
    live.end()                                # end of speech: the last chunk is padded, the video trimmed

The speech is resampled to 16 kHz mono (soxr, streaming) into a SampleQueue; the session's `generation.run.ChunkRun`
(push mode) cuts it into slices of new_frames x 640 samples, one chunk each, in stream mode. Each chunk's new frames
go to the sinks (`live.LiveSink`: the MSE stream on the channel; others, e.g. WebRTC, with the same interface) with
exactly their samples, 640 a frame, so the audio of a segment is the speech its frames were made from (the last
chunk's are cut or padded with silence to its trimmed frames: at most half a frame). At the end the last
slice is padded with silence for the model, and the video is trimmed to round(seconds x 25) frames. `flush()` pads
the speech so far with silence to the next chunk (a text-to-speech program between utterances).

Idle (`idle=True`): while no whole slice of speech is queued and the video is less than IDLE_LEAD_SECONDS ahead of
the wall clock (`idle_lead_seconds`), the next chunk is made from what is queued padded with the idle track (silence
by default, or any `idle_audio(samples) -> float32 [samples]`), so the avatar keeps moving, generated, at real time
and no faster; speech that arrives takes over at the next chunk boundary, behind at most the lead plus one chunk of
idle video (a smaller lead answers sooner but must still cover one chunk's generation time, or the picture waits). Silence is what the model renders as listening: a closed mouth
with the head's natural motion (docs/live.md#idle).

Barge-in (`interrupt()`): the queued speech is dropped (it is not part of the video: the timeline counts only the
speech that was generated), the sinks drop what they hold but have not played, and the session keeps its identity,
motion latents and noise generator, so the next speech continues the same face from the next chunk boundary. The
Temporal Audio Context Cache is kept as it is: it holds exactly the audio of the chunks already shown, which is what
the listener heard, so the next chunk's context is the conversation as it happened.

Figures (`status()`): received_s (speech in, idle padding included), generated_s (video out), behind_s = received -
generated, rtf (generation seconds per second of video over the last 8 chunks; above 1 the session falls behind),
first_frame_latency_s (first audio in -> first chunk written to the sinks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import ExitStack
from typing import Callable, Sequence

import numpy as np
import torch

from ..audio.decode import RESAMPLE_QUALITY
from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from ..errors import AudioInputError, FlashHeadError, InputError, SpeechBacklogError
from ..generation.run import generate_together, speech_run
from ..generation.sampler import GenerationCancelled
from ..generation.session import StreamingSession
from ..live.sink import LiveSink
from ..media.frames import images_to_uint8
from ..media.sample_reader import SampleQueue

log = logging.getLogger(__name__)
RTF_CHUNKS = 8  # the real-time factor: generation seconds over video seconds of the last RTF_CHUNKS chunks
MIN_RATE, MAX_RATE = 8000, 192000  # PCM rates a live session takes
IDLE_LEAD_SECONDS = 1.0  # idle chunks are made while the video is less than this far ahead of the wall clock


def check_rate(rate) -> int:
    """A PCM sample rate in MIN_RATE..MAX_RATE Hz (whole), else AudioInputError naming the range."""
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioInputError(f"PCM rate must be a whole number of Hz between {MIN_RATE} and {MAX_RATE}, got "
                              f"{rate!r}: send ?rate=<the rate your audio is at> (16000 needs no resampling)")
    return rate


def silence(samples: int) -> np.ndarray:
    """The default idle track: [samples] float32 zeros."""
    return np.zeros(samples, np.float32)


class LiveSession:
    """One live stream: its StreamingSession (identities, motion, noise) driven by a push-mode ChunkRun, and its
    sinks (the channel's LiveSink first).

    feed/flush/end/interrupt/use_identity/status may be called from any thread; step() from one thread at a time
    (the generation worker). max_backlog_seconds: speech that may wait for generation; a push beyond it is refused
    (SpeechBacklogError) instead of growing memory without bound. clock: seconds, monotonic (tests pass their own)."""

    def __init__(self, pipeline, channel, *, height: int, width: int, seed: int = 0, context_seconds: float = 8.0,
                 max_backlog_seconds: float = 600.0, sinks: Sequence = (), idle: bool = False,
                 idle_audio: Callable[[int], np.ndarray] = silence, idle_lead_seconds: float = IDLE_LEAD_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._cancel = threading.Event()  # close(): the running step stops at its next check
        self.session = StreamingSession(pipeline.model, pipeline.vae, height=height, width=width, seed=seed,
                                        sampler=pipeline.sampler(), device=pipeline.device,
                                        should_cancel=self._cancel.is_set)
        self._speech = SampleQueue()  # 16 kHz samples not yet in a chunk
        self.run = speech_run(self.session, pipeline.audio_encoder, self._speech, context_seconds=context_seconds)
        self.channel = channel
        self.sinks = [LiveSink(channel), *sinks]
        for sink in self.sinks:
            sink.start(width, height, FPS, AUDIO_SAMPLE_RATE, 1)
        self.slice_samples = self.run.windows.slice_samples
        self.batch_key = (height, width)  # sessions of one pipeline and size can share a batched chunk
        self.max_backlog = round(max_backlog_seconds * AUDIO_SAMPLE_RATE)
        self.idle, self.idle_audio, self.idle_lead, self.clock = idle, idle_audio, idle_lead_seconds, clock
        self._lock = threading.Lock()  # guards everything below that feed() and step() share
        self._step_lock = threading.Lock()  # held through a step; close() waits for it
        self._received = 0  # 16 kHz samples in the video's timeline (padding added by flush()/idle included)
        self._resampler = None
        self._rate = AUDIO_SAMPLE_RATE
        self._odd_byte = b""  # a PCM byte left over from a piece of odd length
        self._ended = self._done = False
        self.error: str | None = None
        self._first_audio: float | None = None
        self._started: float | None = None  # clock() when the first chunk was written: the stream's time 0
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
            if self._speech.queued + len(resampled) > self.max_backlog:
                raise SpeechBacklogError(
                    f"{(self._speech.queued + len(resampled)) / AUDIO_SAMPLE_RATE:.0f} s of speech would wait "
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
        """The speech is over: what is queued becomes the last chunk. Ending twice is harmless."""
        with self._lock:
            if not self._ended:
                self._append(self._flush_resampler())
                self._ended = True

    def interrupt(self) -> float:
        """Barge-in: drop the queued speech (and the resampler's tail) and what the sinks hold unplayed; the session
        goes on (identity, motion, noise, audio context) and the next speech starts at the next chunk boundary.
        Returns the seconds of speech dropped."""
        with self._lock:
            self._check_open()
            self._resampler = None
            dropped = self._speech.clear()
            self._received -= dropped
            if self._started is not None:  # the sinks drop what is unplayed: idle pacing counts from what was shown
                self._started = self.clock() - self.run.frames_emitted / FPS
        for sink in self.sinks:
            sink.interrupt()
        return dropped / AUDIO_SAMPLE_RATE

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
        self._speech.append(samples)
        self._received += len(samples)

    # --- identities -----------------------------------------------------------------------------------------------

    @property
    def identities(self) -> list[str]:
        return list(self.session.identities)

    @property
    def identity(self) -> str | None:
        """The identity the next chunk uses."""
        with self._lock:
            return self.run.requested_identity or self.session.active

    def add_identity(self, name: str, image) -> None:
        """Prepare a portrait (a VAE encode: run it where the model runs); the first one becomes active."""
        if name in self.session.identities:
            raise InputError(f"an identity named {name!r} exists already: choose another name")
        self.session.add_identity(name, image)

    def use_identity(self, name: str) -> None:
        """Switch to a prepared identity at the next chunk."""
        with self._lock:
            self.run.use_identity(name)

    # --- generation -----------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """A chunk can be generated now: a whole slice is queued, the speech ended with something left, or idle
        mode wants the next chunk."""
        with self._lock:
            if self._done or self._cancel.is_set() or self.error is not None:
                return False
            return self._speech.queued >= self.slice_samples or self._ended or self._idle_due()

    def _idle_due(self) -> bool:
        """Idle mode, and the video is less than IDLE_LEAD_SECONDS ahead of the wall clock (under the lock)."""
        if not self.idle or not self.session.identities:
            return False
        ahead = self.run.frames_emitted / FPS - (0.0 if self._started is None else self.clock() - self._started)
        return ahead < self.idle_lead

    def step(self) -> None:
        """Generate the next chunk and write it to the sinks (after the end: finish the stream); a failure ends
        the stream with its reason (`fail`)."""
        step_together([self])

    def _prepare(self) -> tuple[torch.Tensor | None, bool]:
        """The next chunk's windows (None: nothing to generate), and whether it is the last; under the step lock.
        Idle mode pads a short queue with the idle track, the end of speech trims the run."""
        if self._cancel.is_set() or self._done:
            return None, False
        with self._lock:
            if self._speech.queued < self.slice_samples and not self._ended and self._idle_due():
                shortfall = self.slice_samples - self._speech.queued
                self._append(np.asarray(self.idle_audio(shortfall), np.float32).reshape(-1)[:shortfall])
            last = self._ended and self._speech.queued <= self.slice_samples
            if last:
                self.run.end(self._received)
        return self.run.next_windows(), last

    def _publish(self, images: torch.Tensor, seconds: float) -> None:
        """A chunk's new frames [n, H, W, 3] with exactly their samples (640 each: the slice's; the last, trimmed
        chunk's real samples cut or padded with silence to its frames, at most half a frame either way), to every
        sink. seconds: the time its generation took."""
        audio = np.zeros((len(images) * SAMPLES_PER_FRAME, 1), np.float32)
        real = self.run.windows.last_slice[:len(audio)]
        audio[:len(real), 0] = real
        frames = images_to_uint8(images)
        for sink in self.sinks:
            sink.write(frames, audio)
        with self._lock:
            self._compute.append((seconds, len(images) / FPS))
            if self._started is None:
                self._started = self.clock()
        if self.first_frame_latency is None and self._first_audio is not None:
            self.first_frame_latency = time.perf_counter() - self._first_audio

    def _finish(self) -> None:
        for sink in self.sinks:
            sink.close()
        self._done = True

    def _failing(self, what: Callable, *args):
        """what(*args); a failure ends this stream with its reason (`failed`) and None is returned."""
        try:
            return what(*args)
        except Exception as e:
            self.failed(e)
            return None

    def failed(self, error: Exception) -> None:
        """Generation raised `error`: the stream ends with its reason (a cancel after close() is no failure)."""
        if isinstance(error, GenerationCancelled) and self._cancel.is_set():
            return
        if isinstance(error, FlashHeadError):
            self.fail(str(error))
        else:  # a bug: this stream stops with the reason, the others go on
            log.error("live session failed", exc_info=error)
            self.fail(f"generation failed: {type(error).__name__}: {error}")

    def fail(self, error: str) -> None:
        """Generation failed: the stream ends with `error`, nothing more is generated."""
        self.error = error
        for sink in self.sinks:
            sink.close(error)

    def close(self) -> None:
        """Stop (a running step is cancelled at its next denoising step) and release the sinks' encoders. Blocks
        until the step has stopped: call it off the event loop."""
        self._cancel.set()
        with self._step_lock:
            for sink in self.sinks:
                sink.close("session closed")
            self._done = True

    # --- figures --------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """The session's figures (see the module docstring) and state: waiting (for a chunk of speech), idle
        (making idle chunks), generating, ended (all generated), failed (with error), closed."""
        with self._lock:
            received = self._received / AUDIO_SAMPLE_RATE
            generated = self.run.frames_emitted / FPS
            speech = self._speech.queued >= self.slice_samples or (self._ended and not self._done)
            state = ("failed" if self.error is not None else "closed" if self._cancel.is_set() else
                     "ended" if self._done else "generating" if speech else "idle" if self._idle_due() else
                     "waiting")
            rtf = sum(c for c, _ in self._compute) / sum(v for _, v in self._compute) if self._compute else None
            return {"state": state, "received_s": round(received, 3), "generated_s": round(generated, 3),
                    "behind_s": round(max(0.0, received - generated), 3) if not self._done else 0.0,
                    "rtf": None if rtf is None else round(rtf, 3), "chunks": self.session.chunk_index,
                    "first_frame_latency_s": None if self.first_frame_latency is None else
                    round(self.first_frame_latency, 3),
                    "speech_ended": self._ended, "idle": self.idle,
                    "identity": self.run.requested_identity or self.session.active,
                    "identities": list(self.session.identities), "error": self.error}


def step_together(lives: Sequence[LiveSession]) -> None:
    """One chunk of each live session (one pipeline, one size), their 4-step updates in one batched call
    (`generation.run.generate_together`, one DiT call per step for all of them): the generation worker's batch.
    Each session's chunk is the one its own `step()` would make, up to the batch's floating-point rounding (README,
    "Batched streams": in float32 the same video to the eye, in bf16 another valid one). A session whose
    preparation fails, or that is closed meanwhile, drops out alone; a failure of the batched generation ends every
    stream in it with its reason."""
    with ExitStack() as held:
        prepared = []
        for live in lives:
            held.enter_context(live._step_lock)
            windows, last = live._failing(live._prepare) or (None, False)
            if windows is not None:
                prepared.append((live, windows, last))
            elif last:
                live._failing(live._finish)
        if not prepared:
            return
        start = time.perf_counter()
        try:
            images = generate_together([live.run for live, _, _ in prepared], [w for _, w, _ in prepared])
        except Exception as e:
            for live, _, _ in prepared:
                live.failed(e)
            return
        seconds = time.perf_counter() - start
        for (live, _, last), new in zip(prepared, images):
            if live._cancel.is_set():
                continue
            live._failing(live._publish, new, seconds)
            if last and live.error is None:
                live._failing(live._finish)
