"""What `flashhead serve` accepts as an upload: portraits and speech files, checked before anything uses them.

    image = read_portrait(data, "anna.png", (512, 512))       # an RGB PIL image of that size, or UploadError / ...
    samples = read_speech(data, "hello.mp3", max_seconds=600)  # [N] float32, mono, 16 kHz

Portraits: only PNG, JPEG, WebP, BMP and GIF are opened (Pillow's other plugins, EPS with its Ghostscript call
among them, are never reached), the size is checked from the header before decoding (at most
MAX_PORTRAIT_PIXELS, at least MIN_SIDE per side), the file is verified (checksums, truncation), decoded, and at once resized and cropped to the
session's size (the official resize: the session then uses it as it is), so that a portrait holds a few hundred KB
once read, whatever its file. Speech: FFmpeg may only use the audio demuxers in SPEECH_FORMATS (no playlist, concat
or image demuxer, so no upload can make FFmpeg open another file or a URL), reads the bytes from memory (nothing
goes to disk) and decodes them in one pass straight to 16 kHz mono (`audio.decode.read_mono_16k`): a file is
refused from its header when that already declares more than the limit, else as soon as its decoded length passes
it; memory is the 16 kHz result and one decoded piece, whatever the file's rate and channel count. After each decode
the freed heap goes back to the system. Byte limits are the server's (it stops reading a body at its limit); every
error names the upload and the fix.
"""

from __future__ import annotations

import ctypes
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..audio.decode import read_mono_16k
from ..errors import AudioInputError, AudioTooLong, FlashHeadError, UploadError, UploadTooLarge
from ..media.image import LARGE_IMAGE_PIXELS, MIN_SIDE, load_image, resize_and_centercrop

PORTRAIT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# 16.8 MP (4096 x 4096; a 12 MP phone photo fits): up to here the official resize is exact (media/image.py). Its
# decode takes at most 67 MB (RGBA); the portrait is then cut to the session's size.
MAX_PORTRAIT_PIXELS = LARGE_IMAGE_PIXELS
# FFmpeg demuxer names (AVFormatContext.format_whitelist): WAV, MP3, FLAC, Ogg (Vorbis/Opus), MP4/M4A/MOV,
# Matroska/WebM, raw AAC, AIFF, CAF.
SPEECH_FORMATS = "wav,w64,mp3,flac,ogg,mov,matroska,webm,aac,aiff,caf"


def read_portrait(data: bytes, name: str, size: tuple[int, int]) -> Image.Image:
    """An uploaded portrait file -> RGB PIL image of `size` (height, width): EXIF rotation applied, then the official
    resize and centre crop (`media.image.resize_and_centercrop`, which leaves an image of that size as it is). Or
    UploadError (not an image, damaged), UploadTooLarge (more than MAX_PORTRAIT_PIXELS) or ImageError (smaller than
    a reference needs)."""
    try:
        with Image.open(io.BytesIO(data), formats=PORTRAIT_FORMATS) as probe:
            width, height = probe.size
            if min(width, height) < MIN_SIDE:
                raise UploadError(f"portrait {name!r} is {width}x{height} pixels; a portrait needs at least "
                                  f"{MIN_SIDE} pixels per side (ideally the video's size)")
            if width * height > MAX_PORTRAIT_PIXELS:
                raise UploadTooLarge(f"portrait {name!r} is {width}x{height} pixels, more than the "
                                     f"{MAX_PORTRAIT_PIXELS / 1e6:.1f} MP this server decodes: downscale it (a "
                                     f"portrait needs no more than a few thousand pixels per side)")
            probe.verify()
        with Image.open(io.BytesIO(data), formats=PORTRAIT_FORMATS) as image:
            image.load()
            image = load_image(ImageOps.exif_transpose(image))
    except FlashHeadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(f"{name!r} is not an image this server takes: upload the portrait as PNG, JPEG, WebP, "
                          f"BMP or GIF") from None
    except Image.DecompressionBombError as e:
        raise UploadTooLarge(f"portrait {name!r} is too large to decode safely ({e}): downscale it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UploadError(f"portrait {name!r} is damaged or truncated ({e}): export or download it again") from None
    pixels = resize_and_centercrop(image, *size)  # [1, 3, 1, H, W] uint8
    del image
    return_freed_memory()
    return Image.fromarray(pixels[0, :, 0].permute(1, 2, 0).numpy())


def read_speech(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """An uploaded speech file -> [N] float32 mono 16 kHz samples, or UploadError (not audio, no audio stream,
    empty, NaN/inf) or UploadTooLarge (longer than max_seconds)."""
    _check_demuxer(data, name)
    try:
        return read_mono_16k(io.BytesIO(data), max_seconds, SPEECH_FORMATS, what=f"speech {name!r}")
    except AudioTooLong as e:
        raise UploadTooLarge(f"{e}, the longest this server takes in one file: split it, or push it as it is "
                             f"spoken over the session's audio WebSocket") from None
    except AudioInputError as e:
        raise UploadError(str(e)) from None
    finally:
        return_freed_memory()


def return_freed_memory() -> None:
    """Hand the heap freed by a decode back to the system (glibc's malloc_trim; elsewhere nothing). Without it, the
    buffers of a large image or of FFmpeg stay resident in the arena of the thread that decoded them: a server's
    memory would stay at its highest point after the upload has gone."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


_LIBC = ctypes.CDLL(None)


def _check_demuxer(data: bytes, name: str) -> None:
    """Open the bytes with FFmpeg restricted to SPEECH_FORMATS (the header only); else not a speech file here."""
    import av

    try:
        with av.open(io.BytesIO(data), options={"format_whitelist": SPEECH_FORMATS}):
            pass
    except av.FFmpegError:
        raise UploadError(f"{name!r} is not an audio file this server takes: upload the speech as WAV, MP3, FLAC, "
                          f"Ogg/Opus, M4A/MP4, WebM, AAC, AIFF or CAF") from None
