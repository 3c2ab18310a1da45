"""Continuing a video: the state a stream-mode run ends in, and a run that starts from one.

    run = speech_run(session, encoder, first_half, portraits=image, keep_state=True)    # generation/run.py
    frames = torch.cat(list(run)); state = run.state             # a ContinuationState (CPU tensors, immutable)
    session2 = StreamingSession(model, vae, height=H, width=W)   # a fresh session (the seed is not used)
    run2 = speech_run(session2, encoder, second_half, state=state)    # the state's identity, motion, RNGs, audio
    torch.cat([frames, *run2]) == frames of one run over first_half + second_half    (bit for bit)

What is carried (everything that lives across chunks): the motion latents, the noise generator's and the VAE
generator's states (torch.Generator.get_state()), the chunk index, the active identity itself (its colour reference
and ref latent, so the second run needs no VAE encode and can run in another process): the session's `snapshot()`;
then the Temporal Audio Context Cache's buffer, the frame counter, and a fingerprint of the DiT's weights (a state
made with one checkpoint is refused by another of the same variant and size).

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

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME
from ..errors import ContinuationError
from .session import SessionState, StreamingSession

STATE_VERSION = 2
FINGERPRINT_WEIGHTS = ("patch_embedding.weight", "head.head.weight", "audio_proj.norm.weight")  # outside the blocks


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of three small weight tensors outside the blocks (as float32 bytes): two checkpoints of the same
    variant and size differ here, and fp8 block storage or a LoRA hook does not change it."""
    parameters = dict(model.named_parameters())
    digest = hashlib.sha256()
    for name in FINGERPRINT_WEIGHTS:
        digest.update(parameters[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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
    frames_emitted: int  # video frames output so far, over all runs
    session: SessionState | None  # identity, motion latents, both generators, chunk index
    audio_buffer: np.ndarray | None  # the context cache's FIFO [capacity] float32
    model: str = ""  # model_fingerprint of the DiT that made it
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples past the last whole chunk
    problem: str = ""  # why this state cannot be continued ("" when it can)
    version: int = STATE_VERSION

    @property
    def chunk_index(self) -> int:
        """Whole chunks generated so far, over all runs."""
        return self.session.chunk_index if self.session is not None else 0

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


def _geometry(session: StreamingSession) -> dict:
    return {"variant": session.config.variant, "height": session.height, "width": session.width,
            "chunk_frames": session.chunk_frames, "new_frames": session.config.new_frames,
            "dtype": str(session.dtype).removeprefix("torch.")}


def stream_state(session: StreamingSession, snapshot: SessionState, audio_buffer: np.ndarray, frames_emitted: int,
                 context_seconds: float, leftover: np.ndarray) -> ContinuationState:
    """The state of a stream-mode run at a chunk boundary (`snapshot` taken there), on the CPU."""
    return ContinuationState(**_geometry(session), mode="stream", context_seconds=float(context_seconds),
                             frames_emitted=frames_emitted, session=snapshot, audio_buffer=audio_buffer,
                             model=model_fingerprint(session.model),
                             leftover=np.array(leftover, dtype=np.float32, copy=True))


def once_mode_state(session: StreamingSession, frames_emitted: int) -> ContinuationState:
    """The state a once-mode run leaves: it only says why it cannot be continued."""
    return ContinuationState(
        **_geometry(session), mode="once", context_seconds=0.0, frames_emitted=frames_emitted, session=None,
        audio_buffer=None,
        problem=("it was made in once mode, which encodes the whole track in one pass, so no continuation can equal "
                 "one long run: generate the first part in stream mode"))


def check_state(state, session: StreamingSession, context_seconds: float | None = None) -> ContinuationState:
    """A state that can continue `session` (same checkpoint, variant, size, chunk, dtype and audio context), else
    ContinuationError naming the difference and the fix. Cheap: call it before anything is generated."""
    if not isinstance(state, ContinuationState):
        raise ContinuationError(f"expected a FlashHead continuation state, got {type(state).__name__}: connect the "
                                f"state output of a FlashHead Sampler or Talking Video")
    if state.version != STATE_VERSION:
        raise ContinuationError(f"this continuation state has format {state.version}, this version reads "
                                f"{STATE_VERSION}: generate the first part again with this version")
    if state.problem:
        raise ContinuationError(f"this continuation state ({state.describe()}) cannot be continued: {state.problem}")
    ours = _geometry(session)
    wanted = {"variant": (state.variant, ours["variant"]),
              "size": (f"{state.width}x{state.height}", f"{session.width}x{session.height}"),
              "chunk frames": (state.chunk_frames, ours["chunk_frames"]), "dtype": (state.dtype, ours["dtype"])}
    if context_seconds is not None:
        wanted["context_seconds"] = (f"{state.context_seconds:g}", f"{context_seconds:g}")
    for name, (theirs, mine) in wanted.items():
        if theirs != mine:
            raise ContinuationError(f"the continuation state is for {name} {theirs} but this run has {name} {mine} "
                                    f"({state.describe()}): continue with the same model, VAE, size, dtype and audio "
                                    f"context as the first part, or start without the state")
    if state.model != model_fingerprint(session.model):
        raise ContinuationError(f"the continuation state ({state.describe()}) was made with other model weights than "
                                f"this run's (another checkpoint of the same variant): continue with the model file of "
                                f"the first part, or start without the state")
    latent_shape = session.latent_shape
    if state.session.ref_latent.shape[1] != latent_shape[1] or \
            state.session.motion_latents.shape[-2:] != latent_shape[-2:]:
        raise ContinuationError(f"the continuation state's latents {list(state.session.ref_latent.shape)} do not fit "
                                f"this model's {list(latent_shape)}: continue with the model of the first part")
    return state


def check_continuation(state, session: StreamingSession, mode: str, context_seconds: float) -> ContinuationState:
    """What a run checks before anything runs when it continues a state."""
    if mode != "stream":
        raise ContinuationError(f"continuing a video needs stream mode, not {mode!r}: once mode encodes the whole "
                                f"track in one pass, so a continuation could never equal one long run")
    return check_state(state, session, context_seconds)
