"""Video files with PyAV (no ffmpeg subprocess): an incremental MP4 writer, and file facts.

    with VideoWriter("out.mp4", width=512, height=512, audio=(samples, 16000)) as writer:   # or audio=AudioStream
        for chunk in stream_of_chunks:          # [n, H, W, 3] uint8, or float 0..1
            writer.write(chunk)                 # encoded at once: memory does not grow with the video's length
    info = read_video_info("out.mp4")           # frames, fps, size, audio duration/rate/channels
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from ..config import FPS
from .sample_reader import SampleReader
from ..errors import AudioInputError, FlashHeadError, SizeError, VideoWriteError
from .frames import images_to_uint8

AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def aac_can_store(sample_rate: float, channels: int) -> bool:
    """Whether the MP4's AAC track can carry audio as it is (a standard rate, mono or stereo); callers fall back to
    the 16 kHz mono track the model heard."""
    return sample_rate in AAC_SAMPLE_RATES and channels in (1, 2)


# libx264's output depends on its thread count (slices, and what frame threads may reference), which by default
# follows the CPUs the process may use: a fixed count makes the same frames the same bytes with any CPU count.
X264_THREADS = 4
_BT709 = 1  # AVCOL_PRI/TRC/SPC_BT709: the tag matches the RGB -> YUV matrix we convert with
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


# --- writing -------------------------------------------------------------------------------------------------------

class VideoWriter:
    """Incremental H.264 (libx264, yuv420p, BT.709) MP4 with optional AAC audio; use it as a context manager. The
    same frames and audio give the same bytes however many CPUs encode them (X264_THREADS).

    The file is written as `.<name>.<random>.partial` in the target folder and renamed to `path` (replacing an
    existing file) only by a successful `close()`. An exception inside the `with` block (KeyboardInterrupt
    included), a failing `write()`/`close()` or `abort()` removes the partial file.

    audio: (samples, sample_rate) with samples float [N] (mono), [N, C] or [C, N] (C = 1 or 2), numpy or a CPU
    tensor, or an `AudioStream` that yields the track in pieces. The array is referenced, not copied, and a stream
    is read only as far as needed: each `write()` encodes the audio up to the video written so far, so the file is
    interleaved and memory stays flat. At close the audio is cut (or padded with silence) to exactly the video's
    duration, frames / fps.

    live: a tee (`live.LiveSink`) that gets the video as it is muxed: start(width, height, fps, sample_rate | None,
    channels | None) once here, write(frames uint8 [n, H, W, 3], audio float32 [t, C] | None: exactly the samples
    muxed with them) after each write(), close() once the file is complete or close(error=why) when it is not.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int = FPS,
                 audio: tuple[np.ndarray | torch.Tensor, int] | AudioStream | None = None, crf: int = 18,
                 live=None):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise SizeError(f"video size {width}x{height}: H.264 (yuv420p) needs positive even sizes; use even "
                             f"sizes (the model produces multiples of 16 or 32)")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise VideoWriteError(f"cannot write {self.path}: the folder {self.path.parent} does not exist")
        self.width, self.height, self.fps = width, height, Fraction(fps)
        soundtrack = _audio_stream(audio) if audio is not None else None
        self._audio = SampleReader(soundtrack.pieces) if soundtrack else None
        self._sample_rate = soundtrack.sample_rate if soundtrack else 0
        self.partial_path = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.partial")
        self.frames_written = 0
        self._audio_written = 0  # samples
        self._container = None
        self._closed = False
        self._live = live
        with self._removing_partial_on_error():
            self._container = av.open(str(self.partial_path), mode="w", format="mp4")
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
            self._video.options = {"crf": str(crf)}
            self._video.codec_context.thread_type, self._video.codec_context.thread_count = "FRAME", X264_THREADS
            tag_bt709(self._video.codec_context)
            self._reformatter = VideoReformatter()
            if self._audio is not None:
                self._audio_channels = soundtrack.channels
                self._audio_layout = "mono" if soundtrack.channels == 1 else "stereo"
                self._audio_stream = self._container.add_stream("aac", rate=self._sample_rate,
                                                                layout=self._audio_layout)
            if live is not None:
                live.start(width, height, fps, soundtrack.sample_rate if soundtrack else None,
                           soundtrack.channels if soundtrack else None)

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Encode frames [T, H, W, 3] (uint8, or float 0..1) now; nothing is kept."""
        if self._closed:
            raise RuntimeError(f"the writer of {self.path} is already closed")
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (self.height, self.width, 3):
            raise ValueError(f"frames must be [T, {self.height}, {self.width}, 3] for this video, "
                             f"got {list(frames.shape)}")
        pixels = images_to_uint8(frames)
        with self._removing_partial_on_error():
            for rgb in pixels:
                frame = yuv_frame(rgb, self.frames_written, self.fps, self._reformatter)
                self._container.mux(self._video.encode(frame))
                self.frames_written += 1
            audio = self._write_audio_until(self._audio_samples_for(self.frames_written))
        if self._live is not None:
            self._live.write(pixels, None if audio is None else audio.T)

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to `path`. Idempotent; a no-op after abort()."""
        if self._closed:
            return
        with self._removing_partial_on_error():
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._write_audio_until(self._audio_samples_for(self.frames_written))
                self._container.mux(self._audio_stream.encode(None))
            self._container.close()
            os.replace(self.partial_path, self.path)
            self._closed = True
        if self._live is not None:
            self._live.close()

    def abort(self, reason: str = "the video was not finished") -> None:
        """Stop and remove the partial file; `path` is not touched. The live tee ends with `reason`."""
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            self._live.close(error=reason)
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is deleted next; its trailer does not matter
                pass
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(stop_reason(exc))

    @contextmanager
    def _removing_partial_on_error(self):
        """Any exception inside aborts the writer (removing the partial file); OSError becomes VideoWriteError."""
        try:
            yield
        except OSError as e:
            self.abort(stop_reason(e))
            if isinstance(e, VideoWriteError):
                raise
            raise VideoWriteError(f"could not write {self.path}: {e}. Is the disk full or the folder read-only? "
                                  f"Free space or choose another folder; no partial file was left") from e
        except BaseException as e:
            self.abort(stop_reason(e))
            raise

    def _audio_samples_for(self, frames: int) -> int:
        return round(frames * self._sample_rate / self.fps)

    def _write_audio_until(self, end: int) -> np.ndarray | None:
        """Encode audio samples [written, end): the caller's samples, then silence past their end. Returns them,
        float32 [C, n] (n may be 0), or None for a video without audio."""
        if self._audio is None:
            return None
        if end <= self._audio_written:
            return np.zeros((self._audio_channels, 0), dtype=np.float32)
        start = self._audio_written
        block = np.zeros((self._audio_channels, end - start), dtype=np.float32)
        available = self._audio.read(end - start)  # [n] or [n, C], n <= end - start
        block[:, :len(available)] = available.reshape(len(available), -1).T
        if not np.isfinite(block).all():
            raise AudioInputError(f"the audio contains NaN or infinite samples between {start} and {end}")
        self._container.mux(self._audio_stream.encode(audio_frame(block, start, self._sample_rate)))
        self._audio_written = end
        return block


def stop_reason(error: BaseException) -> str:
    """Why a video stopped, in one line (for the live tee): the error's first line; for an error without text, that
    of the error it replaced (ComfyUI's interrupt, raised while handling a GenerationCancelled, carries none: the
    cancel says at which chunk), else the error's type."""
    cause = error
    while cause is not None and not str(cause).strip():
        cause = cause.__cause__ or cause.__context__
    return str(cause).strip().splitlines()[0] if cause is not None else type(error).__name__


def tag_bt709(codec: av.codec.context.CodecContext) -> None:
    """Tag an H.264 encoder's output as BT.709, limited range: what `yuv_frame` converts to."""
    codec.color_primaries = codec.color_trc = codec.colorspace = _BT709
    codec.color_range = _LIMITED_RANGE


def yuv_frame(rgb: np.ndarray, pts: int, fps: Fraction, reformatter: VideoReformatter) -> av.VideoFrame:
    """One uint8 RGB frame [H, W, 3] -> a yuv420p (BT.709, limited range) frame at `pts` in units of 1/fps.
    reformatter: the caller's own (it keeps its conversion context from frame to frame; one per thread)."""
    frame = reformatter.reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuv420p",
                                 dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
    frame.pts, frame.time_base = pts, 1 / Fraction(fps)
    return frame


def audio_frame(block: np.ndarray, start: int, sample_rate: int) -> av.AudioFrame:
    """Float samples [C, n] (C = 1 or 2) starting at sample `start` -> a planar float frame."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, dtype=np.float32), format="fltp",
                                       layout="mono" if block.shape[0] == 1 else "stereo")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
    return frame


@dataclass(frozen=True)
class AudioStream:
    """A soundtrack read lazily: `pieces` yields float arrays [t] (mono) or [t, channels], any t, at `sample_rate`
    (one of AAC_SAMPLE_RATES); channels is 1 or 2."""

    pieces: Iterable[np.ndarray]
    sample_rate: int
    channels: int


def _audio_stream(audio: tuple[np.ndarray | torch.Tensor, int] | AudioStream) -> AudioStream:
    """The writer's audio argument, validated, as an AudioStream (an array becomes one piece: a [N, C] view of the
    caller's samples, no copy)."""
    if isinstance(audio, AudioStream):
        _check_aac_rate(audio.sample_rate)
        if audio.channels not in (1, 2):
            raise AudioInputError(f"audio must have 1 or 2 channels, got {audio.channels}")
        return audio
    samples, sample_rate = audio
    _check_aac_rate(sample_rate)
    samples = np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[:, None]
    elif samples.ndim == 2 and samples.shape[0] in (1, 2) and samples.shape[1] > 2:
        samples = samples.T  # channels first -> [N, C]
    if samples.ndim != 2 or samples.shape[1] not in (1, 2) or not np.issubdtype(samples.dtype, np.floating):
        raise AudioInputError(f"audio must be float samples [N] (mono) or [N, C] / [C, N] with 1 or 2 channels, got "
                         f"{samples.dtype} {list(samples.shape)}")
    return AudioStream([samples], int(sample_rate), samples.shape[1])


def _check_aac_rate(sample_rate: int) -> None:
    if sample_rate not in AAC_SAMPLE_RATES:
        raise AudioInputError(f"audio sample rate {sample_rate} Hz cannot be stored as AAC; resample to one of "
                         f"{', '.join(map(str, AAC_SAMPLE_RATES))} (16000 is the model's rate)")


# --- reading -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """Facts of a video file. audio_* are None without an audio stream; audio_duration is the duration the
    container declares (the AAC encoder delay and the last frame's padding excluded), as players honour it, or None
    when it declares none."""

    frames: int
    fps: float
    width: int
    height: int
    duration: float  # frames / fps
    audio_duration: float | None
    audio_sample_rate: int | None
    audio_channels: int | None


def read_video_info(path: str | Path) -> VideoInfo:
    """Frame count, fps, size and audio facts of a video file (first video and first audio stream)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FlashHeadError(f"{path} has no video stream")
            video = container.streams.video[0]
            fps = video.average_rate or video.guessed_rate
            frames = video.frames or sum(1 for packet in container.demux(video) if packet.size)
            info = dict(frames=frames, fps=float(fps), width=video.width, height=video.height,
                        duration=float(frames / fps), audio_duration=None, audio_sample_rate=None,
                        audio_channels=None)
            if container.streams.audio:
                audio = container.streams.audio[0]
                info.update(audio_duration=float(audio.duration * audio.time_base) if audio.duration else None,
                            audio_sample_rate=audio.sample_rate, audio_channels=audio.channels)
            return VideoInfo(**info)
    except av.FFmpegError as e:
        raise FlashHeadError(f"cannot read {path} as a video: {e}") from e
