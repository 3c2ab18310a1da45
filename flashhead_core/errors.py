"""User errors: every one names the problem and the fix in its message.

`FlashHeadError` is the one base class: the CLI prints it as one line, the ComfyUI nodes show it as the node's
error, and library users catch it in one clause. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import numbers


class FlashHeadError(ValueError):
    """Something the user gave (a file, a setting, an input) cannot be used; the message says what to do."""


class InputError(FlashHeadError):
    """A setting is not a number, not finite or out of its range (seed, strength, context seconds, mode, ...)."""


class SizeError(InputError):
    """A video size the model cannot produce."""


class ImageError(FlashHeadError):
    """An image input that cannot be used as a reference."""


class AudioInputError(FlashHeadError):
    """Audio that cannot be voiced: empty, NaN/inf, several tracks at once, or an unreadable file."""


class AudioTooLong(AudioInputError):
    """Audio longer than a limit (a speech upload to `flashhead serve`): refused from its header, or as soon as
    decoding passes the limit."""


class CheckpointError(FlashHeadError):
    """A checkpoint is missing, unreadable, foreign or does not match what was asked for."""


class AttentionBackendError(FlashHeadError):
    """An attention backend was asked for that does not exist or cannot run here."""


class VideoWriteError(FlashHeadError, OSError):
    """The video file could not be written (disk full, folder not writable, ...). Nothing was left behind."""


class DownloadError(FlashHeadError):
    """The weights could not be downloaded; the message carries the commands to fetch them by hand."""


class ContinuationError(FlashHeadError):
    """A continuation state that cannot continue this run: another variant, size, dtype or audio context, or a state
    from once mode (which cannot continue exactly)."""


class BatchError(InputError):
    """Batched streams that do not pair up: unequal counts of portraits and audio tracks, or no stream at all."""


class UploadError(InputError):
    """An upload to `flashhead serve` that is not what its field takes: not an image, not audio, damaged."""


class UploadTooLarge(UploadError):
    """An upload, speech or request body above the server's configured limit."""


class RequestTimeout(UploadError):
    """A request to `flashhead serve` whose body did not arrive within the server's read deadline."""


class LiveStreamError(FlashHeadError):
    """A live stream a client cannot read on: unknown or gone, a segment dropped before it was read, a refusal."""


class ControlMessageError(InputError):
    """A text message on a `flashhead serve` audio socket that is not a control message (refused; the socket stays
    open)."""


class ServerBusy(FlashHeadError):
    """`flashhead serve` already runs as many live sessions as it was configured to take."""


class SpeechBacklogError(InputError):
    """Speech pushed to a live session so far ahead of the generation that its backlog limit is reached."""


class FaceError(FlashHeadError):
    """A face crop that cannot be made: no face or several in the portrait, a face box outside it, an empty mask."""


def check_range(value, name: str, low: float, high: float, fix: str = "") -> float:
    """A finite real number in [low, high], else InputError naming `name`, the value and the range (+ `fix`)."""
    hint = f" ({fix})" if fix else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}{hint}")
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}: use a value between {low:g} and {high:g}"
                         f"{hint}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value:g}{hint}")
    return value
