"""The Python client of the live stream protocol (live/http.py): what a script or a test reads a stream with, as
the browser's player (static/player.js) does.

    stream = StreamClient(http, "/api/live/<id>")       # http: an aiohttp ClientSession (base_url) or TestClient
    init_video, init_audio = await stream.init("video"), await stream.init("audio")
    async for segment in stream.segments():             # StreamSegment: index, video, video_start, audio, ...
        ...
    stream.error                                        # why the stream ended early (None when it ended normally)

`init` asks again while the server answers 204 (no chunk encoded yet); `segments` asks for segment 0, 1, ... and
asks again on a 204 that says the stream goes on (the server already waited for it), until one says it ended
(X-FlashHead-Ended: 1). Any other answer (404 unknown stream, 410 a segment dropped because this reader fell more
than the channel's window behind, a refusal) raises LiveStreamError with the server's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from ..errors import LiveStreamError

TRACKS = ("video", "audio")


@dataclass(frozen=True)
class StreamSegment:
    """Segment `index` of a stream: each track's fMP4 media segment (b"" when it had no packet) and start (seconds,
    where a player places it), and media_end (seconds of video up to the end of this segment)."""

    index: int
    video: bytes
    video_start: float
    audio: bytes
    audio_start: float
    media_end: float


class StreamClient:
    """Reads one stream at `prefix` (the `stream` of a `flashhead serve` session, or ComfyUI's /flashhead/live/<id>)
    through `http`: anything with an aiohttp-style `get(url)` (ClientSession with a base_url, or TestClient)."""

    def __init__(self, http, prefix: str):
        self.http, self.prefix = http, prefix.rstrip("/")
        self.error: str | None = None

    async def init(self, track: str) -> bytes:
        """The init segment of 'video' or 'audio', once the server has one."""
        while True:
            async with self.http.get(f"{self.prefix}/init/{track}") as answer:
                if answer.status == 200:
                    return await answer.read()
                if answer.status != 204:
                    raise await _unexpected(answer, f"the {track} init segment")

    async def segments(self, start: int = 0) -> AsyncIterator[StreamSegment]:
        """Segments start, start + 1, ... until the stream ends (then `error` says why, if it ended early)."""
        index = start
        while True:
            async with self.http.get(f"{self.prefix}/segments/{index}/video") as answer:
                if answer.status == 204:
                    if answer.headers.get("X-FlashHead-Ended") == "1":
                        self.error = answer.headers.get("X-FlashHead-Error")
                        return
                    continue  # not published within the server's wait: ask again
                if answer.status != 200:
                    raise await _unexpected(answer, f"segment {index}")
                video, video_start = await answer.read(), float(answer.headers["X-FlashHead-Start"])
                media_end = float(answer.headers["X-FlashHead-Media-End"])
            async with self.http.get(f"{self.prefix}/segments/{index}/audio") as answer:
                if answer.status != 200:
                    raise await _unexpected(answer, f"segment {index}'s audio")
                audio, audio_start = await answer.read(), float(answer.headers["X-FlashHead-Start"])
            yield StreamSegment(index, video, video_start, audio, audio_start, media_end)
            index += 1


async def _unexpected(answer, what: str) -> LiveStreamError:
    text = " ".join((await answer.text()).split())[:200]
    return LiveStreamError(f"{what} of the live stream answered {answer.status}: {text}")
