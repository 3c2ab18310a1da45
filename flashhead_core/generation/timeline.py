"""The identity timeline: several portraits in one run, each taking over at a given time.

    timeline = parse_timeline("anna.png@0,ben.png@4.5")            # the CLI's --timeline
    timeline = Timeline.of([(anna_image, 0.0), (ben_image, 4.5)])    # any inputs `image.load_image` takes
    schedule, takeovers = portrait_schedule(timeline, total_frames, "stream", new_frames)   # {chunk: (name, image)}
    run = speech_run(session, encoder, speech, portraits=schedule)                      # generation/run.py

Switch policy: a clean cut at a chunk boundary. Before the chunk that switches, the session's identity changes
(`StreamingSession.use_identity`): the new portrait's reference latent and colour reference drive the chunk, and the
motion restarts from that reference (its first latent frame, as in chunk 0), so nothing of the previous face carries
over. The noise RNG and the audio go on as in a single-portrait run.

Rounding: a time t becomes the frame f = round(t * 25) (Python rounding; frame f starts at f / 25 s). The portrait
takes over at the chunk whose new frames contain frame f, i.e. from that chunk's first new frame: the cut comes at
most new_frames - 1 frames early (23 frames, 0.92 s, Lite; 27, 1.08 s, Pro; in once mode chunk 0 holds frames 0-32).

Refused before anything is generated (TimelineError): no entry, a first time other than 0, times out of order, not
finite or negative, a time at or past the end of the audio (f >= the video's frame count), and two portraits in the
same chunk (the earlier one would never be seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ..config import CHUNK_FRAMES, FPS
from ..errors import InputError


class TimelineError(InputError):
    """An identity timeline that cannot be followed: times out of order, past the audio, too close, ..."""


@dataclass(frozen=True)
class TimelineEntry:
    image: object  # a path, PIL image, array or tensor: anything `image.load_image` takes
    start: float  # seconds
    label: str = ""  # for messages (the file name, 'portrait 2', ...)


@dataclass(frozen=True)
class Timeline:
    entries: tuple[TimelineEntry, ...]

    @classmethod
    def of(cls, items: Iterable[tuple[object, float]], labels: Iterable[str] | None = None) -> "Timeline":
        items = list(items)
        labels = list(labels) if labels is not None else [f"portrait {i + 1}" for i in range(len(items))]
        return cls(tuple(TimelineEntry(image, start, label) for (image, start), label in zip(items, labels)))

    def __len__(self) -> int:
        return len(self.entries)


def parse_times(text: str, what: str = "start times") -> list[float]:
    """'0, 4.5, 9' (commas or spaces) -> [0.0, 4.5, 9.0]."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise TimelineError(f"{what} must be numbers in seconds separated by commas, like '4.5, 9', got "
                            f"{text!r}") from None


def parse_timeline(text: str) -> Timeline:
    """The CLI's --timeline: 'IMAGE@SECONDS,IMAGE@SECONDS,...' (the first at 0), e.g. 'anna.png@0,ben.png@4.5'."""
    items = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        image, sep, start = part.rpartition("@")
        if not sep or not image:
            raise TimelineError(f"timeline entry {part!r} is not IMAGE@SECONDS: write e.g. "
                                f"'anna.png@0,ben.png@4.5'")
        try:
            items.append((image, float(start)))
        except ValueError:
            raise TimelineError(f"timeline entry {part!r}: {start!r} is not a time in seconds") from None
    return Timeline.of(items, [image for image, _ in items])


def first_new_frame(chunk: int, mode: str, new_frames: int) -> int:
    """The video frame where chunk `chunk`'s new frames start (docs/algorithm.md#chunks)."""
    if mode == "once":
        return 0 if chunk == 0 else CHUNK_FRAMES + (chunk - 1) * new_frames
    return chunk * new_frames


def chunk_of_frame(frame: int, mode: str, new_frames: int) -> int:
    """The chunk whose new frames contain video frame `frame`."""
    if mode == "once":
        return 0 if frame < CHUNK_FRAMES else 1 + (frame - CHUNK_FRAMES) // new_frames
    return frame // new_frames


def switch_plan(timeline: Timeline, total_frames: int, mode: str, new_frames: int) -> dict[int, int]:
    """Check the timeline against a video of `total_frames` frames -> {chunk index: entry index} (chunk 0 -> 0)."""
    entries = timeline.entries
    if not entries:
        raise TimelineError("the timeline is empty: give at least one portrait (the first at 0 s)")
    seconds = total_frames / FPS
    plan: dict[int, int] = {}
    previous = None
    for index, entry in enumerate(entries):
        start = entry.start
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) or start < 0:
            raise TimelineError(f"{entry.label}: start time {start!r} is not a time in seconds (finite, >= 0)")
        if index == 0 and start != 0:
            raise TimelineError(f"the first portrait ({entry.label}) must start at 0 s, not {start:g} s: the video "
                                f"needs a face from its first frame")
        if previous is not None and start <= previous.start:
            raise TimelineError(f"the timeline is out of order: {entry.label} starts at {start:g} s, not after "
                                f"{previous.label} at {previous.start:g} s; list the portraits by start time")
        frame = round(start * FPS)
        if frame >= total_frames:
            raise TimelineError(f"{entry.label} starts at {start:g} s, past the end of the audio ({seconds:.2f} s, "
                                f"{total_frames} frames): drop it or use a time before the end")
        chunk = chunk_of_frame(frame, mode, new_frames)
        if chunk in plan:
            other = entries[plan[chunk]]
            step = new_frames / FPS
            raise TimelineError(f"{other.label} ({other.start:g} s) and {entry.label} ({start:g} s) fall in the same "
                                f"chunk (frames {first_new_frame(chunk, mode, new_frames)}-"
                                f"{first_new_frame(chunk + 1, mode, new_frames) - 1}): portraits switch only between "
                                f"chunks, so space them at least {step:.2f} s apart")
        plan[chunk] = index
        previous = entry
    return plan


def identity_name(index: int) -> str:
    return f"timeline-{index}"


def portrait_schedule(portraits, total_frames: int, mode: str, new_frames: int
                      ) -> tuple[dict[int, tuple[str, object]], list[dict] | None]:
    """The run's portraits, one image or a Timeline, as an identity schedule {chunk: (identity name, image)} (a
    timeline is checked against the video's `total_frames` first), and for a timeline where each portrait takes over
    ([{portrait, start, chunk, frame}], for the run's summary; None for one image)."""
    if not isinstance(portraits, Timeline):
        return {0: ("reference", portraits)}, None
    plan = switch_plan(portraits, total_frames, mode, new_frames)
    takeovers = [{"portrait": portraits.entries[i].label, "start": portraits.entries[i].start, "chunk": chunk,
                  "frame": first_new_frame(chunk, mode, new_frames)} for chunk, i in sorted(plan.items())]
    return {chunk: (identity_name(i), portraits.entries[i].image) for chunk, i in plan.items()}, takeovers
