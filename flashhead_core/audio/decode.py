"""Audio input: any source (file, array, ComfyUI's waveform) -> float32 samples, mono, at 16 kHz.

    samples = load_audio(source)                           # np.ndarray [N] float32, mono, 16 kHz
    channels, rate = read_audio(source)                    # [C, T] float32 as stored (e.g. to mux the original)
    track = probe_audio_file(path)                         # a file checked in one decoding pass, nothing kept
    for piece in mono_16k_pieces(decode_pieces(track), track.sample_rate): ...   # [t] float32, 16 kHz, streamed
    samples = read_mono_16k(file, max_seconds=600, formats="wav,flac")   # one pass, bounded memory (uploads)
"""

from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import torch

from ..config import AUDIO_SAMPLE_RATE
from ..errors import AudioInputError, AudioTooLong

RESAMPLE_QUALITY = "soxr_hq"  # librosa.load's default resampler
DECODE_FRAME = 1 << 18  # samples per decoded piece, all channels together (1 MB of float32)
MIN_PIECE = 1024  # samples per channel in a piece, however many channels a file has
HEADER_SLACK = 1.5  # a duration in a header may be an estimate (MP3 from its bitrate): refused from it beyond this


def load_audio(source, sample_rate: float | None = None) -> np.ndarray:
    """Any audio `read_audio` takes -> mono float32 samples at 16 kHz, shape [N] (what `librosa.load(sr=16000)`
    returns): channels averaged, resampled with soxr 'HQ', cut/zero-padded to ceil(T * 16000 / rate) as librosa does.
    """
    return to_mono_16k(*read_audio(source, sample_rate))


def read_audio(source, sample_rate: float | None = None) -> tuple[np.ndarray, float]:
    """Any supported audio -> (channels [C, T] float32, sample rate), as stored: no mixdown, no resampling.

    source: a ComfyUI AUDIO dict {"waveform": Tensor [1, C, T] float, "sample_rate": int}; a float numpy array or
    tensor, [T] mono or [C, T], with `sample_rate` given; or the path of a file PyAV decodes (wav, mp3, flac, m4a...).
    Silence is valid; empty or non-finite audio, several tracks or an unreadable file raise AudioInputError.
    """
    if isinstance(source, dict):
        channels, rate = _comfy_audio_channels(source)
    elif isinstance(source, (str, os.PathLike)):
        channels, rate = _decode_file(Path(source))
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        if sample_rate is None:
            raise AudioInputError("an audio array needs its sample rate: load_audio(array, sample_rate=44100)")
        channels, rate = _as_channels(source, "audio array"), sample_rate
    else:
        raise AudioInputError(f"cannot read audio from a {type(source).__name__}: pass a ComfyUI AUDIO dict, a file "
                              f"path, or a numpy array / tensor with its sample rate")
    if not rate or rate <= 0:
        raise AudioInputError(f"sample rate must be positive, got {rate}")
    return channels, rate


def _comfy_audio_channels(audio: dict) -> tuple[np.ndarray, float]:
    """ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate"} with B = 1 -> ([C, T] float32, rate)."""
    if "waveform" not in audio or "sample_rate" not in audio:
        raise AudioInputError(f"an AUDIO dict needs 'waveform' and 'sample_rate', got keys {sorted(audio)}")
    waveform = audio["waveform"]
    if waveform.ndim != 3:
        raise AudioInputError(f"AUDIO waveform must be [batch, channels, samples], got shape {list(waveform.shape)}")
    if waveform.shape[0] != 1:
        raise AudioInputError(f"AUDIO holds a batch of {waveform.shape[0]} tracks; FlashHead voices one track per "
                              f"video: split the batch and connect a single track")
    return _as_channels(waveform[0], "AUDIO waveform"), audio["sample_rate"]


def _as_channels(array: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """[T] or [C, T] float array/tensor -> [C, T] float32 numpy, checked for emptiness and NaN/inf."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioInputError(f"{what} has dtype {array.dtype}; convert it to float in [-1, 1] first "
                              f"(int16 PCM: x / 32768)")
    channels = np.asarray(array, dtype=np.float32)
    if channels.ndim == 1:
        channels = channels[None]
    if channels.ndim != 2:
        raise AudioInputError(f"{what} must be [samples] or [channels, samples], got shape {list(channels.shape)}")
    _check_track(what, *channels.shape, non_finite=int(np.count_nonzero(~np.isfinite(channels))))
    return channels


def _check_track(what: str, channels: int, length: int, non_finite: int) -> None:
    """Refuse a track of `channels` x `length` samples that is empty, looks transposed or holds NaN/inf samples."""
    if channels * length == 0:
        raise AudioInputError(f"{what} is empty (0 samples); connect audio with some duration (silence is fine)")
    if channels > length:
        raise AudioInputError(f"{what} of shape {[channels, length]} has more channels than samples; it looks like "
                              f"[samples, channels]: pass it transposed")
    if non_finite:
        raise AudioInputError(f"{what} contains {non_finite} NaN or infinite samples; fix or re-export the audio "
                              f"upstream")


def _decode_file(path: Path) -> tuple[np.ndarray, float]:
    """Decode the first audio stream of a file with PyAV -> ([C, T] float32, its sample rate)."""
    with _opened_audio(path) as (container, stream):
        pieces, rate = list(_decoded_pieces(container, stream)), stream.rate
    if not pieces:
        raise AudioInputError(f"{path} decodes to no samples; choose a file with some duration")
    return _as_channels(np.concatenate([piece.T for piece in pieces]).T, str(path)), rate  # interleaved, as decoded


@dataclass(frozen=True)
class AudioFile:
    """An audio file checked by a decoding pass (not empty, no NaN/inf): its first audio stream's sample rate,
    channel count and length in samples per channel."""

    path: Path
    sample_rate: int
    channels: int
    length: int

    @property
    def length_16k(self) -> int:
        """Samples of its 16 kHz mono version (`mono_16k_pieces`): ceil(length * 16000 / rate)."""
        return _length_16k(self.length, self.sample_rate)


def probe_audio_file(path: str | os.PathLike) -> AudioFile:
    """First pass over a file: decode it without keeping the samples, count them and check them as `read_audio`
    does (same errors), so that a long file can then be decoded as a stream (`decode_pieces`) in constant memory."""
    path = Path(path)
    length = non_finite = channels = 0
    with _opened_audio(path) as (container, stream):
        for piece in _decoded_pieces(container, stream):
            channels, length = piece.shape[0], length + piece.shape[1]
            non_finite += int(np.count_nonzero(~np.isfinite(piece)))
        rate = stream.rate
    if not length:
        raise AudioInputError(f"{path} decodes to no samples; choose a file with some duration")
    _check_track(str(path), channels, length, non_finite)
    return AudioFile(path, rate, channels, length)


def decode_pieces(audio: AudioFile) -> Iterator[np.ndarray]:
    """Decode a probed file again, lazily: pieces [C, t] float32 at its own rate, DECODE_FRAME samples each
    (the last shorter), as stored (no mixdown, no resampling)."""
    with _opened_audio(audio.path) as (container, stream):
        yield from _decoded_pieces(container, stream)


@contextmanager
def _opened_audio(source: Path | BinaryIO, what: str | None = None, formats: str | None = None) -> Iterator[tuple]:
    """(container, its first audio stream) of a file (a path, or a binary file object named `what` in messages)
    opened with PyAV, restricted to the demuxers in `formats` when given; a missing file, no audio stream or a PyAV
    error (while opening or decoding inside the block) raises AudioInputError."""
    import av

    if isinstance(source, Path):
        what = what or str(source)
        if not source.is_file():
            raise AudioInputError(f"audio file not found: {what}")
        source = str(source)
    try:
        with av.open(source, options={"format_whitelist": formats} if formats else {}) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{what} has no audio stream; choose a file with sound")
            yield container, container.streams.audio[0]
    except av.FFmpegError as e:
        raise AudioInputError(f"cannot decode {what}: {e}. Re-export it as WAV, FLAC or MP3") from e


def _decoded_pieces(container, stream) -> Iterator[np.ndarray]:
    """Decode `stream` -> pieces [C, t] float32 at its rate (views of interleaved [t, C] frames)."""
    import av

    # Interleaved float32 in the same layout and rate, [samples, channels] per frame. Not planar: PyAV (18.1)
    # lists one plane too many for 8 channels and crashes the process reading it. Frames of DECODE_FRAME samples
    # in all: freed pieces that large go back to the system, small ones would stay resident as heap; and a file
    # with many channels costs no more per piece.
    channels = max(1, stream.codec_context.channels)
    packed_float = av.AudioResampler(format="flt", frame_size=max(MIN_PIECE, DECODE_FRAME // channels))
    for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
        for f in packed_float.resample(frame):
            yield f.to_ndarray().reshape(-1, len(f.layout.channels)).T


def read_mono_16k(source: str | os.PathLike | BinaryIO, max_seconds: float | None = None, formats: str | None = None,
                  what: str | None = None) -> np.ndarray:
    """A file (a path, or a binary file object named `what` in messages) -> [N] float32 mono 16 kHz: what
    `load_audio` gives (same checks, same samples), in one decoding pass that holds one piece at the file's own rate
    and channel count at a time (DECODE_FRAME samples) besides the 16 kHz result.

    max_seconds: AudioTooLong when the header declares more than HEADER_SLACK x max_seconds (nothing is decoded),
    else as soon as the samples decoded so far make more (before the piece that would is resampled: a file at 1 Hz
    is never upsampled). formats: the FFmpeg demuxers it may be opened with (format_whitelist), e.g. "wav,flac"."""
    source = Path(source) if isinstance(source, (str, os.PathLike)) else source
    what = what or str(source)
    with _opened_audio(source, what, formats) as (container, stream):
        rate = stream.rate
        if not rate or rate <= 0:
            raise AudioInputError(f"{what} declares a sample rate of {rate}; re-export it (16000 Hz or more)")
        if max_seconds is not None:
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > HEADER_SLACK * max_seconds:
                raise AudioTooLong(f"{what} lasts {declared:.0f} s (its header says so), more than {max_seconds:g} s")
        limit = None if max_seconds is None else max_seconds * AUDIO_SAMPLE_RATE
        pieces = list(mono_16k_pieces(_checked_pieces(_decoded_pieces(container, stream), what, rate, limit), rate))
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if not len(samples):
        raise AudioInputError(f"{what} decodes to no samples; choose a file with some duration")
    return samples


def _checked_pieces(pieces: Iterator[np.ndarray], what: str, rate: int, limit: float | None) -> Iterator[np.ndarray]:
    """Pieces [C, t] passed on once checked: no NaN/inf, and (with `limit`) at most `limit` samples at 16 kHz so far
    (AudioTooLong otherwise, before the piece goes on)."""
    length = 0
    for piece in pieces:
        length += piece.shape[1]
        if limit is not None and _length_16k(length, rate) > limit:
            raise AudioTooLong(f"{what} lasts more than {limit / AUDIO_SAMPLE_RATE:g} s")
        _check_track(what, 1, piece.shape[1], int(np.count_nonzero(~np.isfinite(piece))))
        yield piece


def _declared_seconds(container, stream) -> float | None:
    """The duration a file's header declares (its audio stream's, else the container's), None when it declares none."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration is not None else None  # AV_TIME_BASE


def to_mono_16k(channels: np.ndarray, sample_rate: float) -> np.ndarray:
    """[C, T] float32 at `sample_rate` -> [N] float32 at 16 kHz: `mono_16k_pieces` of the whole track, joined.
    Mono 16 kHz input comes back as a view of `channels` (no copy: an hour of audio is 220 MB)."""
    pieces = [piece for piece in mono_16k_pieces([channels], sample_rate) if len(piece)]
    return np.ascontiguousarray(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces)


def mono_16k_pieces(pieces: Iterable[np.ndarray], sample_rate: float) -> Iterator[np.ndarray]:
    """Pieces [C, t] float32 at `sample_rate` -> pieces [t'] float32, mono at 16 kHz, as `librosa.load(sr=16000)`
    gives the whole track: mean of the channels, soxr 'HQ' (a streaming resampler, bit-identical to the one-shot
    `soxr.resample`), cut/zero-padded at the end to ceil(T * 16000 / rate) samples in all (librosa's fix_length).
    16 kHz pieces pass through (mono ones as views)."""
    import soxr

    mono = (piece[0] if piece.shape[0] == 1 else piece.mean(axis=0) for piece in pieces)
    if sample_rate == AUDIO_SAMPLE_RATE:
        yield from mono
        return
    resampler = soxr.ResampleStream(sample_rate, AUDIO_SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    consumed = emitted = 0
    for piece in mono:
        resampled = resampler.resample_chunk(piece)
        consumed, emitted = consumed + len(piece), emitted + len(resampled)
        yield resampled
    missing = _length_16k(consumed, sample_rate) - emitted  # soxr's delayed tail, then padding
    tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)[:missing]
    yield np.pad(tail, (0, missing - len(tail)))


def _length_16k(length: int, sample_rate: float) -> int:
    """ceil(length * 16000 / rate): the samples librosa keeps after resampling to 16 kHz."""
    return int(np.ceil(length * (float(AUDIO_SAMPLE_RATE) / sample_rate)))
