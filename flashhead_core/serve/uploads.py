"""What `flashhead serve` accepts as an upload: portraits and speech files, checked before anything uses them.

    image = read_portrait(data, "anna.png")                 # an RGB PIL image, or UploadError / UploadTooLarge
    samples = read_speech(data, "hello.mp3", max_seconds=600)  # [N] float32, mono, 16 kHz

Portraits: only PNG, JPEG, WebP, BMP and GIF are opened (Pillow's other plugins, EPS with its Ghostscript call
among them, are never reached), the pixel count is checked from the header before decoding, the file is verified
(checksums, truncation) and then decoded whole. Speech: FFmpeg may only use the audio demuxers in SPEECH_FORMATS
(no playlist, concat or image demuxer, so no upload can make FFmpeg open another file or a URL), then the usual
checks (an audio stream, some samples, no NaN/inf) and the duration limit before it is decoded to memory.
Byte limits are the server's (it stops reading a body at its limit); every error names the upload and the fix.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..audio import probe_audio_file, read_audio, to_mono_16k
from ..config import AUDIO_SAMPLE_RATE
from ..errors import AudioInputError, FlashHeadError, UploadError, UploadTooLarge
from ..media.image import load_image

PORTRAIT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_PORTRAIT_PIXELS = 50_000_000  # a 50 MP photo (8660 x 5773); its RGB decode takes 150 MB
# FFmpeg demuxer names (AVFormatContext.format_whitelist): WAV, MP3, FLAC, Ogg (Vorbis/Opus), MP4/M4A/MOV,
# Matroska/WebM, raw AAC, AIFF, CAF.
SPEECH_FORMATS = "wav,w64,mp3,flac,ogg,mov,matroska,webm,aac,aiff,caf"


def read_portrait(data: bytes, name: str) -> Image.Image:
    """An uploaded portrait file -> RGB PIL image (EXIF rotation applied), or UploadError (not an image, damaged),
    UploadTooLarge (more than MAX_PORTRAIT_PIXELS) or ImageError (smaller than a reference needs)."""
    try:
        with Image.open(io.BytesIO(data), formats=PORTRAIT_FORMATS) as probe:
            width, height = probe.size
            if width * height > MAX_PORTRAIT_PIXELS:
                raise UploadTooLarge(f"portrait {name!r} is {width}x{height} pixels, more than the "
                                     f"{MAX_PORTRAIT_PIXELS / 1e6:.0f} MP this server decodes: downscale it (a "
                                     f"portrait needs no more than a few thousand pixels per side)")
            probe.verify()
        with Image.open(io.BytesIO(data), formats=PORTRAIT_FORMATS) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except FlashHeadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(f"{name!r} is not an image this server takes: upload the portrait as PNG, JPEG, WebP, "
                          f"BMP or GIF") from None
    except Image.DecompressionBombError as e:
        raise UploadTooLarge(f"portrait {name!r} is too large to decode safely ({e}): downscale it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UploadError(f"portrait {name!r} is damaged or truncated ({e}): export or download it again") from None
    return load_image(image)


def read_speech(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """An uploaded speech file -> [N] float32 mono 16 kHz samples, or UploadError (not audio, no audio stream,
    empty, NaN/inf) or UploadTooLarge (longer than max_seconds). The bytes go to a private temporary folder for
    FFmpeg (removed before this returns); messages name the upload, never that folder."""
    with tempfile.TemporaryDirectory(prefix="flashhead-upload-") as folder:
        path = Path(folder) / "speech"
        path.write_bytes(data)
        try:
            _check_demuxer(path, name)
            track = probe_audio_file(path)
            seconds = track.length_16k / AUDIO_SAMPLE_RATE
            if seconds > max_seconds:
                raise UploadTooLarge(f"speech {name!r} lasts {seconds:.0f} s, more than the {max_seconds:.0f} s this "
                                     f"server takes in one file: split it, or push it as it is spoken over the "
                                     f"session's audio WebSocket")
            return to_mono_16k(*read_audio(path))
        except AudioInputError as e:
            if isinstance(e, UploadError):
                raise
            raise UploadError(str(e).replace(str(path), repr(name))) from None


def _check_demuxer(path: Path, name: str) -> None:
    """Open the file with FFmpeg restricted to SPEECH_FORMATS; anything else is not a speech file here."""
    import av

    try:
        with av.open(str(path), options={"format_whitelist": SPEECH_FORMATS}):
            pass
    except av.FFmpegError:
        raise UploadError(f"{name!r} is not an audio file this server takes: upload the speech as WAV, MP3, FLAC, "
                          f"Ogg/Opus, M4A/MP4, WebM, AAC, AIFF or CAF") from None
