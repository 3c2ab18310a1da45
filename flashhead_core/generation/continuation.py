"""Continuing a video: the state a stream-mode run ends in, and a run that starts from one.

    run = ContinuableRun(session, encoder, first_half)          # session with its identity added, or:
    frames = torch.cat(list(run)); state = run.state             # a ContinuationState (CPU tensors, immutable)
    session2 = StreamingSession(model, vae, height=H, width=W)   # a fresh session (the seed is not used)
    resume(session2, state, image)                               # the state's identity, motion, noise and VAE RNGs
    run2 = ContinuableRun(session2, encoder, second_half, state=state)
    torch.cat([frames, *run2]) == frames of one run over first_half + second_half    (bit for bit)

What is carried (everything that lives across chunks): the motion latents, the noise generator's and the VAE
generator's states (torch.Generator.get_state()), the chunk index, the active identity itself (its colour reference
and ref latent, so the second run needs no VAE encode and can run in another process), the Temporal Audio Context
Cache's buffer, and the frame/chunk counters.

The split point. A stream-mode chunk consumes one slice of new_frames * 640 samples (0.96 s Lite, 1.12 s Pro). When
the first run's audio is a whole number of slices the state is at that boundary and the continuation is bit-exact.
Otherwise the state is the one *before* the last, partial chunk and carries that chunk's real samples (`leftover`):
the next run plays them again before its own audio and drops the frames the first run already showed. Its frames are
then exactly the long run's; only the few frames the first run made from its zero-padded last slice (fewer than
new_frames) differ from the long run's.

Once mode encodes the whole track in one pass (every window sees the whole track's normalisation), so a continuation
can never equal one long run: a once-mode run gives a state that refuses to continue (ContinuationError, naming
stream mode as the fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from ..audio import DEFAULT_CONTEXT_SECONDS, AudioContextCache, Wav2Vec2FrameEncoder
from ..media.sample_reader import SampleReader
from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from ..errors import AudioInputError, ContinuationError
from ..media.frames import video_to_images
from ..media.image import reference_tensor
from .session import Identity, StreamingSession
from .chunks import check_encoder_fits, stream_talking_head, video_frame_count

STATE_VERSION = 1


@dataclass(frozen=True, eq=False)
class ContinuationState:
    """Where a run stopped, on the CPU; immutable (ComfyUI caches node outputs and hands them to later runs)."""

    variant: str
    height: int
    width: int
    chunk_frames: int
    new_frames: int
    dtype: str
    mode: str  # "stream"; "once" states exist only to refuse continuing (see `problem`)
    context_seconds: float
    chunk_index: int  # whole chunks generated so far, over all runs
    frames_emitted: int  # video frames output so far, over all runs
    motion_latents: torch.Tensor | None  # [1, C, M, h, w], the next chunk's
    noise_state: torch.Tensor | None  # torch.Generator.get_state() (uint8)
    vae_state: torch.Tensor | None
    identity_name: str | None
    color_reference: torch.Tensor | None  # [1, 3, 1, H, W] float32 in [-1, 1]
    ref_latent: torch.Tensor | None  # [1, C, T, h, w]
    audio_buffer: np.ndarray | None  # the context cache's FIFO [capacity] float32
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples past the last whole chunk
    problem: str = ""  # why this state cannot be continued ("" when it can)
    version: int = STATE_VERSION

    @property
    def identity(self) -> Identity:
        return Identity(self.color_reference, self.ref_latent)

    @property
    def skip_frames(self) -> int:
        """Frames of the leftover's chunk the previous run already showed (dropped when the chunk is redone)."""
        return self.frames_emitted - self.chunk_index * self.new_frames

    @property
    def samples_consumed(self) -> int:
        """16 kHz samples of all previous runs' audio (whole chunks plus the leftover)."""
        return self.chunk_index * self.new_frames * SAMPLES_PER_FRAME + len(self.leftover)

    def describe(self) -> str:
        return (f"FlashHead {self.variant} {self.width}x{self.height}, {self.mode} mode, {self.frames_emitted} frames "
                f"({self.samples_consumed / AUDIO_SAMPLE_RATE:.2f} s) so far")


def once_mode_state(session: StreamingSession, frames_emitted: int) -> ContinuationState:
    """The state a once-mode run leaves: it only says why it cannot be continued."""
    return ContinuationState(
        session.config.variant, session.height, session.width, session.chunk_frames, session.config.new_frames,
        str(session.dtype).removeprefix("torch."), "once", 0.0, session.chunk_index, frames_emitted, None, None, None,
        None, None, None, None,
        problem=("it was made in once mode, which encodes the whole track in one pass, so no continuation can equal "
                 "one long run: generate the first part in stream mode"))


def check_state(state, session: StreamingSession, context_seconds: float | None = None) -> ContinuationState:
    """A state that can continue `session` (same variant, size, chunk, dtype and audio context), else
    ContinuationError naming the difference and the fix. Cheap: call it before anything is generated."""
    if not isinstance(state, ContinuationState):
        raise ContinuationError(f"expected a FlashHead continuation state, got {type(state).__name__}: connect the "
                                f"state output of a FlashHead Sampler or Talking Video")
    if state.version != STATE_VERSION:
        raise ContinuationError(f"this continuation state has format {state.version}, this version reads "
                                f"{STATE_VERSION}: generate the first part again with this version")
    if state.problem:
        raise ContinuationError(f"this continuation state ({state.describe()}) cannot be continued: {state.problem}")
    config = session.config
    wanted = {"variant": (state.variant, config.variant),
              "size": (f"{state.width}x{state.height}", f"{session.width}x{session.height}"),
              "chunk frames": (state.chunk_frames, session.chunk_frames),
              "dtype": (state.dtype, str(session.dtype).removeprefix("torch."))}
    if context_seconds is not None:
        wanted["context_seconds"] = (f"{state.context_seconds:g}", f"{context_seconds:g}")
    for name, (theirs, ours) in wanted.items():
        if theirs != ours:
            raise ContinuationError(f"the continuation state is for {name} {theirs} but this run has {name} {ours} "
                                    f"({state.describe()}): continue with the same model, VAE, size, dtype and audio "
                                    f"context as the first part, or start without the state")
    if state.ref_latent.shape[1] != config.out_dim or state.motion_latents.shape[-2:] != session.latent_shape[-2:]:
        raise ContinuationError(f"the continuation state's latents {list(state.ref_latent.shape)} do not fit this "
                                f"model's {list(session.latent_shape)}: continue with the model of the first part")
    return state


def capture(session: StreamingSession, cache: AudioContextCache | None, frames_emitted: int, context_seconds: float,
            leftover: np.ndarray) -> ContinuationState:
    """The session's state now (between chunks), on the CPU."""
    identity = session.identities[session.active]
    return ContinuationState(
        session.config.variant, session.height, session.width, session.chunk_frames, session.config.new_frames,
        str(session.dtype).removeprefix("torch."), "stream", float(context_seconds), session.chunk_index,
        frames_emitted, session.motion_latents.detach().to("cpu", copy=True),
        session.noise_generator.get_state(), session.vae_generator.get_state(), session.active,
        identity.color_reference.detach().to("cpu", copy=True), identity.ref_latent.detach().to("cpu", copy=True),
        None if cache is None else cache.buffer, np.array(leftover, dtype=np.float32, copy=True))


def resume(session: StreamingSession, state: ContinuationState, image=None, context_seconds: float | None = None
           ) -> None:
    """Put `state` into a fresh session: identity, motion latents, both generators, chunk index. With an `image`
    whose prepared reference differs from the state's identity, that portrait is added and switched to (the clean cut
    of `use_identity`); the same portrait (or none) continues exactly."""
    check_state(state, session, context_seconds)
    session.identities[state.identity_name] = Identity(state.color_reference.to(session.device),
                                                       state.ref_latent.to(session.device, session.dtype))
    session.active = state.identity_name
    session.motion_latents = state.motion_latents.to(session.device, session.dtype)
    session.noise_generator.set_state(state.noise_state)
    session.vae_generator.set_state(state.vae_state)
    session.chunk_index = state.chunk_index
    if image is not None:
        reference = reference_tensor(image, session.height, session.width)
        if not torch.equal(reference, state.color_reference):
            name = f"{state.identity_name}+{state.chunk_index}"
            session.add_identity(name, image)
            session.use_identity(name)


class ContinuableRun:
    """Stream-mode speech -> frames ([n, H, W, 3] float32 0..1 on the CPU, chunk by chunk, as `stream_talking_head`
    yields them, and equal to them without a state), with a state in (`state`, put in the session here unless
    `resumed`) and out (`self.state`, after the last frame).

    total_frames: the frames this run yields: round(all runs' seconds x 25) minus the frames already emitted."""

    def __init__(self, session: StreamingSession, encoder: Wav2Vec2FrameEncoder,
                 samples: np.ndarray | Iterable[np.ndarray], *, state: ContinuationState | None = None,
                 context_seconds: float = DEFAULT_CONTEXT_SECONDS, num_samples: int | None = None,
                 resumed: bool = False):
        check_encoder_fits(encoder, session.config)
        self.session, self.context_seconds = session, context_seconds
        self.cache = AudioContextCache(encoder, context_seconds,
                                       None if state is None else state.audio_buffer)  # as the previous run left it
        length = len(samples) if num_samples is None else num_samples
        if state is not None:
            check_state(state, session, context_seconds)
            if not resumed:
                resume(session, state, context_seconds=context_seconds)
            self._leftover, self._before = state.leftover, state.frames_emitted
            self._skip = state.skip_frames
        else:
            self._leftover, self._before, self._skip = np.zeros(0, np.float32), 0, 0
        chunks = session.chunk_index if state is None else state.chunk_index
        whole_samples = chunks * session.config.new_frames * SAMPLES_PER_FRAME
        all_frames = round((whole_samples + len(self._leftover) + length) * FPS / AUDIO_SAMPLE_RATE)
        self.total_frames = all_frames - self._before
        if self.total_frames < 1:
            raise AudioInputError(f"{length} samples ({length / AUDIO_SAMPLE_RATE * 1000:.1f} ms) add no video frame "
                                  f"to the {self._before} already made: continue with a longer track")
        self._samples = samples
        self.state: ContinuationState | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        session, step = self.session, self.session.config.new_frames * SAMPLES_PER_FRAME
        pieces = [self._samples] if isinstance(self._samples, np.ndarray) else self._samples
        reader = SampleReader(_chained(self._leftover, pieces))
        motion, skip, emitted, pending = session.config.motion_frames, self._skip, 0, None
        while emitted < self.total_frames:
            piece = np.asarray(reader.read(step), dtype=np.float32)
            if len(piece) < step:  # the last, partial slice: the state stays before it and keeps its samples
                pending = capture(session, self.cache, 0, self.context_seconds, piece)
            frames = session.generate_chunk(self.cache.push(np.pad(piece, (0, step - len(piece)))))
            kept = frames[:, :, motion + skip:][:, :, :self.total_frames - emitted]
            skip = 0
            images = video_to_images(kept)
            emitted += images.shape[0]
            yield images
        frames_emitted = self._before + emitted
        if pending is None:  # the audio ended on (or within half a frame of) a chunk boundary
            rest = np.asarray(reader.read(step), dtype=np.float32)
            pending = capture(session, self.cache, 0, self.context_seconds, rest)
        self.state = _with_frames(pending, frames_emitted)


def check_continuation(state, session: StreamingSession, mode: str, context_seconds: float) -> None:
    """What `write_talking_video` checks before anything runs when it continues a state."""
    if mode != "stream":
        raise ContinuationError(f"continuing a video needs stream mode, not {mode!r}: once mode encodes the whole "
                                f"track in one pass, so a continuation could never equal one long run")
    check_state(state, session, context_seconds)


class _PlainRun:
    """A once-mode run seen as a ContinuableRun without a state."""

    def __init__(self, frames: Iterator[torch.Tensor], total_frames: int):
        self._frames, self.total_frames, self.state = frames, total_frames, None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._frames)


def continuation_run(session: StreamingSession, encoder: Wav2Vec2FrameEncoder, speech, mode: str,
                     context_seconds: float, num_samples: int, state: ContinuationState | None, image=None):
    """The run `write_talking_video` iterates when a state goes in or out (the session is resumed by the caller)."""
    if mode == "once":
        return _PlainRun(stream_talking_head(session, encoder, speech, mode, context_seconds, num_samples),
                         video_frame_count(num_samples))
    return ContinuableRun(session, encoder, speech, state=state, context_seconds=context_seconds,
                          num_samples=num_samples, resumed=True)


def _chained(first: np.ndarray, pieces: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from pieces


def _with_frames(state: ContinuationState, frames_emitted: int) -> ContinuationState:
    from dataclasses import replace

    return replace(state, frames_emitted=frames_emitted)
