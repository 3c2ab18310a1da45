"""Reading what a request of `flashhead serve` carries, within limits: multipart forms, raw bodies, JSON, numbers.

    form = await read_form(request, FormLimits(files={"portrait": 8, "audio": 1}, texts={"seed"}, ...))
    body = await read_body(request, limit, deadline, "send the speech in smaller pieces")
    message = parse_json(text, 'send JSON {"name": "<identity>"}')       # a dict, or InputError
    seed = parse_integer(text, "seed")                                    # ASCII digits only: no "1_0", no "١٢"

Every read has a deadline (RequestTimeout, 408, when the body has not arrived by then) and byte limits
(UploadTooLarge, 413, as soon as they are passed: nothing more is read). A form takes each text field at most once
and each file field at most its count; a part that is not a plain field (a nested multipart), a form aiohttp cannot
parse (no boundary, no closing boundary, a bad part header) and JSON nested too deep are 400 with one line saying
so. Nothing here holds a server resource: the handlers take a session slot only once the request is read.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import FlashHeadError, InputError, RequestTimeout, UploadError, UploadTooLarge

FIELD_LIMIT = 64  # bytes of a text field (width, height, seed)
CHUNK = 1 << 16
INTEGER = re.compile(r"[+-]?[0-9]{1,18}")  # what a number field or query value may be: ASCII digits, no "_"
# aiohttp's multipart parser refuses bad input with these (no boundary: KeyError; a bad boundary line, missing closing
# boundary, undecodable part: ValueError/RuntimeError/TypeError; a part header too long or with a NUL: its
# HttpProcessingError).
MALFORMED = (ValueError, KeyError, RuntimeError, TypeError, HttpProcessingError)


@dataclass(frozen=True)
class FormLimits:
    """What one form may hold. files: file field -> most files in it; texts: the text fields (each at most once,
    FIELD_LIMIT bytes); part_bytes: most bytes of one file; total_bytes: of the whole form's contents; deadline:
    seconds to read it all."""

    files: dict[str, int]
    texts: frozenset[str] = field(default_factory=frozenset)
    part_bytes: int = 20 * 2**20
    total_bytes: int = 40 * 2**20
    deadline: float = 30.0


async def read_form(request: web.Request, limits: FormLimits) -> dict[str, list]:
    """multipart/form-data -> {field: [(filename, bytes)] for files, [text] for text fields}, within `limits`:
    UploadError (not multipart, malformed, unknown field, a field repeated or too many files), UploadTooLarge (a
    file, a text field or the form above its bytes), RequestTimeout (not all there by the deadline)."""
    if not request.content_type.startswith("multipart/"):
        raise UploadError(f"send multipart/form-data (a form with the files), not "
                          f"{request.content_type or 'no content type'}")
    if request.content_length is not None and request.content_length > limits.total_bytes + CHUNK:
        raise UploadTooLarge(f"the form of {request.content_length} bytes is larger than this server's "
                             f"{readable_size(limits.total_bytes)} limit: send fewer or smaller files")
    try:
        async with asyncio.timeout(limits.deadline):
            return await _read_parts(await request.multipart(), limits)
    except FlashHeadError:  # a ValueError too: ours, already saying what is wrong
        raise
    except TimeoutError:
        raise RequestTimeout(f"the form did not arrive within {limits.deadline:g} s: send it at once (this server "
                             f"stops waiting for a request's body after that)") from None
    except MALFORMED as e:
        raise UploadError(f"the form is malformed ({_one_line(e)}): send multipart/form-data as a browser or "
                          f"curl -F makes it") from None


async def _read_parts(reader, limits: FormLimits) -> dict[str, list]:
    form: dict[str, list] = {}
    total = 0
    fields = sorted(set(limits.files) | limits.texts)
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise UploadError("a form part is itself a multipart: send each file as a part of the form")
        name = part.name or ""
        if name not in limits.files and name not in limits.texts:
            raise UploadError(f"unknown form field {name[:40]!r}: this request takes {', '.join(fields)}")
        given = form.setdefault(name, [])
        if name in limits.texts:
            if given:
                raise UploadError(f"the field {name!r} is given twice: send it once")
            data = await _read_stream(_part_chunks(part), FIELD_LIMIT, (
                f"the field {name!r} is longer than {FIELD_LIMIT} bytes: it takes a number"))
            given.append(data.decode("utf-8", "replace"))
        else:
            if part.filename is None or len(given) >= limits.files[name]:
                many = limits.files[name]
                raise UploadError(f"the field {name!r} takes {'one file' if many == 1 else f'at most {many} files'}"
                                  f"{'' if part.filename is not None else ' (send it as a file, with a filename)'}")
            data = await _read_stream(_part_chunks(part), limits.part_bytes, (
                f"{part.filename[:80]!r} is larger than this server's {readable_size(limits.part_bytes)} limit: send a "
                f"smaller file (or start the server with a larger --max-upload-mb)"))
            given.append((part.filename, data))
        total += len(data)
        if total > limits.total_bytes:
            raise UploadTooLarge(f"the form's files together exceed this server's {readable_size(limits.total_bytes)}"
                                 f" limit: send fewer or smaller files")
    return form


async def read_body(request: web.Request, limit: int, deadline: float, fix: str) -> bytes:
    """The request's body, at most `limit` bytes (UploadTooLarge naming the limit, then `fix`: what to send
    instead), all there within `deadline` seconds (RequestTimeout)."""
    too_large = f"the request body is larger than this server's {readable_size(limit)} limit: {fix}"
    if request.content_length is not None and request.content_length > limit:
        raise UploadTooLarge(too_large)
    try:
        async with asyncio.timeout(deadline):
            return await _read_stream(request.content.iter_chunked(CHUNK), limit, too_large)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {deadline:g} s: send it at once (this server "
                             f"stops waiting for a request's body after that)") from None


async def _read_stream(chunks, limit: int, too_large: str) -> bytes:
    """The bytes of an async iterator of chunks, or UploadTooLarge(too_large) as soon as they pass `limit`."""
    pieces, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(too_large)
        pieces.append(chunk)
    return b"".join(pieces)


async def _part_chunks(part: BodyPartReader):
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


def parse_json(text: str | bytes, expected: str):
    """JSON text -> its value, or InputError(`expected`: what to send) for text that is not JSON or nests too deep."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InputError(f"{expected}; got something that is not JSON (or nests too deep)") from None


def parse_integer(text: str, name: str) -> int:
    """A whole number written in ASCII digits (an optional sign), else InputError naming `name` and the text."""
    text = text.strip()
    if not INTEGER.fullmatch(text):
        raise InputError(f"{name} must be a whole number in ASCII digits, got {text[:40]!r}")
    return int(text)


def readable_size(limit: int) -> str:
    """A byte limit as people read it: '20 MB', '256 KB', '64 bytes'."""
    if limit >= 2**20:
        return f"{limit / 2**20:g} MB"
    return f"{limit / 2**10:g} KB" if limit >= 2**10 else f"{limit} bytes"


def _one_line(error: Exception) -> str:
    """An exception's message as at most 80 printable ASCII characters (it may quote bytes the client sent)."""
    text = str(error) or type(error).__name__
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:80]
