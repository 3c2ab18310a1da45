"""The chunk loop (docs/algorithm.md#chunks), once: chunk windows in, each chunk's new frames out.

    run = speech_run(session, encoder, samples, portraits=image)       # pull: a whole track (an array or pieces)
    for images in run: ...                                             # [n, H, W, 3] float32 0..1 on the CPU
    run.state                                                          # with keep_state=True: a ContinuationState

    queue = SampleQueue()                                              # push: speech as it arrives (live)
    run = speech_run(session, encoder, queue)
    queue.append(samples); images = run.step()                         # one chunk (call it when a slice is queued)
    run.end(total_samples); images = run.step()                        # the last, trimmed chunk

    run = ChunkRun(session, iter(windows), mode="once", total_frames=n)   # precomputed windows (ComfyUI's embeds)
    for outs in run_together([run_a, run_b]): ...                      # N runs, one batched 4-step update per chunk
    images = generate_together([run_a, run_b], [windows_a, windows_b])  # one batched chunk (each from next_windows())

Each chunk: take the next windows (stream mode: the next slice of new_frames x 640 samples through the Temporal
Audio Context Cache), switch identity if the schedule (or a live request) says so, generate the chunk, keep its new
frames (the motion frames dropped, except in chunk 0 of once mode; a continuation also drops the frames the previous
run showed already) and stop at the video's frame count, round(seconds x 25). Files, ComfyUI, the live session,
continuation, the identity timeline and batched streams are all this loop.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from ..audio import DEFAULT_CONTEXT_SECONDS, AudioContextCache, SpeechWindows, Wav2Vec2FrameEncoder, once_mode_chunks
from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from ..errors import AudioInputError, InputError
from ..media.sample_reader import SampleQueue, SampleReader
from ..media.image import reference_tensor
from .chunks import AUDIO_MODES, check_encoder_fits, new_images, video_frame_count
from .timeline import TimelineError
from .continuation import ContinuationState, check_continuation, once_mode_state, stream_state
from .session import StreamingSession, generate_chunks


class ChunkRun:
    """The chunk loop over one session. windows: the chunk windows, taken one per chunk (a `SpeechWindows`, or any
    iterator of precomputed [1, 33, 5, 12, 768] tensors). total_frames: the frames this run yields (None: open, until
    `end`). identities: {chunk of this run: identity name} switched to right before that chunk (a clean cut,
    `StreamingSession.use_identity`). skip_frames: new frames of the first chunk already shown by a previous run.
    keep_state: remember where to continue from (stream mode over speech; `state` after the run)."""

    def __init__(self, session: StreamingSession, windows: Iterator[torch.Tensor], *, mode: str = "stream",
                 total_frames: int | None = None, identities: Mapping[int, str] | None = None, skip_frames: int = 0,
                 frames_before: int = 0, context_seconds: float = DEFAULT_CONTEXT_SECONDS, keep_state: bool = False):
        if mode not in AUDIO_MODES:
            raise InputError(f"audio mode must be one of {', '.join(AUDIO_MODES)}, not {mode!r}")
        if keep_state and mode == "stream" and not isinstance(windows, SpeechWindows):
            raise InputError("only a stream-mode run over speech can end in a continuation state")
        self.session, self.windows, self.mode = session, windows, mode
        self.total_frames = total_frames
        self.identities = dict(identities or {})
        self.context_seconds, self.keep_state = context_seconds, keep_state
        self.frames_before = frames_before  # frames of previous runs (a continuation)
        self.frames_emitted = 0  # frames this run yielded
        self.chunks = 0  # chunks this run generated
        self._skip = skip_frames
        self.requested_identity: str | None = None  # a live switch (`use_identity`), for the next chunk
        self._resume_point: tuple | None = None  # `_capture()` + leftover before a chunk made from a partial slice

    @property
    def done(self) -> bool:
        return self.total_frames is not None and self.frames_emitted >= self.total_frames

    def use_identity(self, name: str) -> None:
        """Switch to a prepared identity at the next chunk."""
        if name not in self.session.identities:
            raise InputError(f"unknown identity {name!r}; prepared: {', '.join(self.session.identities) or 'none'}")
        self.requested_identity = name

    def end(self, total_samples: int) -> None:
        """Push mode: the speech is over after `total_samples` 16 kHz samples (all runs' together): the video gets
        round(seconds x 25) frames in all, the last chunk is trimmed."""
        self.total_frames = round(total_samples * FPS / AUDIO_SAMPLE_RATE) - self.frames_before

    def next_windows(self) -> torch.Tensor | None:
        """Prepare the next chunk: its windows (None when the run is complete or the speech has ended), with the
        scheduled or requested identity switched to."""
        if self.done:
            return None
        before = self._capture() if self.keep_state else None
        windows = next(self.windows, None)
        if windows is None:
            return None
        if before is not None and self.windows.partial:
            self._resume_point = (*before, self.windows.last_slice.copy())
        name = self.identities.get(self.chunks, self.requested_identity)
        if name is not None:
            self.session.use_identity(name)
            self.requested_identity = None
        return windows

    def keep(self, frames: torch.Tensor) -> torch.Tensor:
        """The chunk's decoded frames [1, 3, 33, H, W] -> its new frames as images [n, H, W, 3] float32 0..1 (CPU),
        at most what the video still needs."""
        remaining = frames.shape[2] if self.total_frames is None else self.total_frames - self.frames_emitted
        images = new_images(frames, self.chunks, self.mode, self.session.config.motion_frames, remaining, self._skip)
        self._skip = 0
        self.chunks += 1
        self.frames_emitted += len(images)
        return images

    def step(self) -> torch.Tensor | None:
        """Generate the next chunk: its new frames [n, H, W, 3], or None when there is none to make."""
        windows = self.next_windows()
        return None if windows is None else self.keep(self.session.generate_chunk(windows))

    def __iter__(self) -> Iterator[torch.Tensor]:
        while (images := self.step()) is not None:
            yield images

    @property
    def state(self) -> ContinuationState:
        """Where the next run continues (after the last chunk): at the end of the speech when it ended on a chunk
        boundary, else before the last, partial chunk, carrying that chunk's real samples (`leftover`); its frames
        are redone by the next run and the ones shown already dropped. A once-mode run's state refuses to continue."""
        frames = self.frames_before + self.frames_emitted
        if self.mode == "once":
            return once_mode_state(self.session, frames)
        if not self.keep_state:
            raise RuntimeError("this run was made without keep_state=True: it kept no state to continue from")
        point = self._resume_point
        if point is None:  # the speech ended on (or within half a frame of) a chunk boundary
            rest = np.asarray(self.windows.speech.read(self.windows.slice_samples), dtype=np.float32)
            point = (*self._capture(), rest.copy())
        snapshot, audio_buffer, leftover = point
        return stream_state(self.session, snapshot.on_cpu(), audio_buffer, frames, self.context_seconds, leftover)

    def _capture(self) -> tuple:
        """Where the run is now, cheaply (kept before every chunk, used only when the speech ends in the chunk):
        the session's state uncopied and the context cache's buffer."""
        return self.session.snapshot(on_cpu=False), self.windows.cache.buffer


def generate_together(runs: list[ChunkRun], windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """One chunk of each run (sessions sharing one model and VAE, one size) from the windows its `next_windows()`
    gave, through one batched 4-step update (`session.generate_chunks`): each run's new frames [n, H, W, 3]."""
    frames = generate_chunks([run.session for run in runs], windows)
    return [run.keep(chunk) for run, chunk in zip(runs, frames)]


def run_together(runs: list[ChunkRun]) -> Iterator[list[torch.Tensor | None]]:
    """N runs to their ends, each chunk of all of them through one batched update (`generate_together`): per chunk,
    each run's new frames (None for a run already complete)."""
    while prepared := [(k, windows) for k, run in enumerate(runs) if (windows := run.next_windows()) is not None]:
        images = generate_together([runs[k] for k, _ in prepared], [windows for _, windows in prepared])
        out: list[torch.Tensor | None] = [None] * len(runs)
        for (k, _), new in zip(prepared, images):
            out[k] = new
        yield out


def add_portraits(session: StreamingSession, portraits: Mapping[int, tuple[str, object]]) -> dict[int, str]:
    """Encode each scheduled portrait once, in chunk order ({chunk: (identity name, image)}; the first becomes the
    active identity of a fresh session) -> the run's identity schedule {chunk: name}."""
    for _, (name, image) in sorted(portraits.items()):
        if name not in session.identities:
            session.add_identity(name, image)
    return {chunk: name for chunk, (name, _) in portraits.items()}


def speech_run(session: StreamingSession, encoder: Wav2Vec2FrameEncoder,
               speech: np.ndarray | Iterable[np.ndarray] | SampleQueue, *, mode: str = "stream",
               context_seconds: float = DEFAULT_CONTEXT_SECONDS, num_samples: int | None = None,
               portraits: Mapping[int, tuple[str, object]] | None = None, state: ContinuationState | None = None,
               keep_state: bool = False) -> ChunkRun:
    """The run over 16 kHz mono speech: an array [N], pieces [t] (with their total `num_samples`), or a SampleQueue
    fed as it is spoken (push mode, stream mode only; `end` it). portraits: {chunk: (name, image)}, encoded now
    (`timeline.portrait_schedule`; none: the session's prepared identity). state: continue a ContinuationState (its
    identity, motion, generators, audio context and leftover samples go into `session`; the seed is unused); a
    portrait given with it that differs from the state's starts at the first chunk (a clean cut), the same one
    continues exactly. keep_state: the run's `state` says where to continue (a once-mode state refuses to)."""
    check_encoder_fits(encoder, session.config)
    new_frames = session.config.new_frames
    pushed = isinstance(speech, SampleQueue)
    if mode == "once":
        if pushed or state is not None:
            raise InputError("once mode encodes a whole track in one pass: it can neither take live speech nor "
                             "continue a state; use stream mode")
        total = video_frame_count(len(speech) if num_samples is None else num_samples)
        return ChunkRun(session, once_mode_chunks(encoder, speech, new_frames), mode="once", total_frames=total,
                        identities=add_portraits(session, portraits or {}))
    leftover, frames_before, skip, identities = np.zeros(0, np.float32), 0, 0, {}
    if state is None:
        identities = add_portraits(session, portraits or {})
    else:
        check_continuation(state, session, mode, context_seconds)
        if len(portraits or {}) > 1:
            raise TimelineError("a timeline run cannot continue a state: give one portrait, or disconnect the state")
        session.restore(state.session)
        leftover, frames_before, skip = state.leftover, state.frames_emitted, state.skip_frames
        for _, image in (portraits or {}).values():
            if not torch.equal(reference_tensor(image, session.height, session.width), state.session.color_reference):
                identities = add_portraits(session, {0: (f"{state.session.identity_name}+{state.chunk_index}", image)})
    cache = AudioContextCache(encoder, context_seconds, None if state is None else state.audio_buffer)
    if pushed:
        speech.append(leftover)
        queue, total = speech, None
    else:
        queue = SampleReader(_chained(leftover, [speech] if isinstance(speech, np.ndarray) else speech))
        length = len(speech) if num_samples is None else num_samples
        if state is None:
            total = video_frame_count(length)
        else:
            whole = session.chunk_index * new_frames * SAMPLES_PER_FRAME
            total = round((whole + len(leftover) + length) * FPS / AUDIO_SAMPLE_RATE) - frames_before
            if total < 1:
                raise AudioInputError(f"{length} samples ({length / AUDIO_SAMPLE_RATE * 1000:.1f} ms) add no video "
                                      f"frame to the {frames_before} already made: continue with a longer track")
    return ChunkRun(session, SpeechWindows(cache, queue, new_frames), total_frames=total, identities=identities,
                    skip_frames=skip, frames_before=frames_before, context_seconds=context_seconds,
                    keep_state=keep_state)


def stream_talking_head(session: StreamingSession, encoder: Wav2Vec2FrameEncoder,
                        samples: np.ndarray | Iterable[np.ndarray], mode: str = "stream",
                        context_seconds: float = DEFAULT_CONTEXT_SECONDS, num_samples: int | None = None
                        ) -> Iterator[torch.Tensor]:
    """Speech [N] float32 at 16 kHz -> the video's frames, chunk by chunk, as [n, H, W, 3] float32 0..1 on the CPU;
    round(N / 16000 * 25) frames in all, with the session's prepared identity. In stream mode the speech may come as
    pieces [t], with their total N given as num_samples."""
    return iter(speech_run(session, encoder, samples, mode=mode, context_seconds=context_seconds,
                           num_samples=num_samples))


def _chained(first: np.ndarray, pieces: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from pieces
