"""The live stream protocol over HTTP (aiohttp), the same for every server that streams (ComfyUI's, `flashhead
serve`): routes under a prefix that read a LiveRegistry's channels. The player (static/player.js) speaks it.

    add_stream_routes(app.router, "/api/live", registry, check=None)      # or a RouteTableDef (ComfyUI's routes)

    GET {prefix}/{id}                          JSON channel.info()
    GET {prefix}/{id}/init/video|audio         the track's init segment (video/mp4 | audio/mp4); waits up to
                                               INIT_WAIT_SECONDS for it (204 + X-FlashHead-Ended: 0: ask again;
                                               404 once the stream ended without one)
    GET {prefix}/{id}/segments/{n}/video|audio the track's media segment n (b"" when that track had no packet in it),
                                               headers X-FlashHead-Start (seconds: where the player places it) and
                                               X-FlashHead-Media-End; waits up to WAIT_SECONDS for n to be published.
        204 + X-FlashHead-Ended: 1   the stream ended before n (X-FlashHead-Error: why, when it ended early)
        204 + X-FlashHead-Ended: 0   n is not published yet after the wait: ask again
        410  n was dropped (the channel keeps only its latest segments): re-join at info()['next'] - 1
        400  n is not a non-negative integer of at most 9 ASCII digits, or lies more than `keep` segments past the
             live edge (nothing to wait for)
        404  unknown id (and, through `check`, a channel the request may not see: no oracle)

`check(request, channel)` runs on every route before anything is read; it raises an aiohttp HTTPException (e.g.
HTTPForbidden for a missing token, HTTPNotFound for a foreign channel) to refuse. No route takes a file path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aiohttp import web

from .channel import LiveChannel, LiveRegistry

WAIT_SECONDS = 10.0
INIT_WAIT_SECONDS = 10.0
CONTENT_TYPES = {"video": "video/mp4", "audio": "audio/mp4"}
NO_STORE = {"Cache-Control": "no-store"}
MAX_DIGITS = 9  # segment numbers: a second of video each, 30 years of them
PLAYER_JS = Path(__file__).parent / "static" / "player.js"  # the browser side of this protocol, served by both hosts


def add_stream_routes(routes: web.UrlDispatcher | web.RouteTableDef, prefix: str, registry: LiveRegistry,
                      check: Callable[[web.Request, LiveChannel], None] | None = None) -> None:
    """Register the stream routes under `prefix` (no trailing slash) on an app's router or a RouteTableDef."""
    prefix = prefix.rstrip("/")

    def channel_of(request: web.Request) -> LiveChannel:
        channel = registry.get(request.match_info["id"])
        if channel is None:
            raise web.HTTPNotFound(text="no such live stream", headers=NO_STORE)
        if check is not None:
            check(request, channel)
        return channel

    async def info(request: web.Request) -> web.Response:
        return web.json_response(channel_of(request).info(), headers=NO_STORE)

    async def init(request: web.Request) -> web.Response:
        channel, track = channel_of(request), request.match_info["track"]
        if not await channel.wait_init(INIT_WAIT_SECONDS):
            if channel.ended:
                raise web.HTTPNotFound(text="this live stream has no init segment (it ended before its first chunk)",
                                       headers=NO_STORE)
            return web.Response(status=204, headers={**NO_STORE, "X-FlashHead-Ended": "0"})  # not yet: ask again
        return web.Response(body=channel.init_segment(track), content_type=CONTENT_TYPES[track], headers=NO_STORE)

    async def segment(request: web.Request) -> web.Response:
        channel, track = channel_of(request), request.match_info["track"]
        n = _segment_number(request.match_info["n"], channel)
        try:
            found = await channel.segment(n, WAIT_SECONDS)
        except KeyError:
            raise web.HTTPGone(text=f"segment {n} was dropped: re-join at the live edge (info: next - 1)",
                               headers=NO_STORE) from None
        if found is None:
            ended = channel.ended
            headers = {**NO_STORE, "X-FlashHead-Ended": "1" if ended else "0"}
            error = channel.info()["error"] if ended else None
            if error:  # one printable ASCII line: a header value
                headers["X-FlashHead-Error"] = " ".join(error.encode("ascii", "replace").decode().split())[:200]
            return web.Response(status=204, headers=headers)
        body, start = (found.video, found.video_start) if track == "video" else (found.audio, found.audio_start)
        return web.Response(body=body, content_type=CONTENT_TYPES[track], headers={
            **NO_STORE, "X-FlashHead-Start": repr(start), "X-FlashHead-Media-End": repr(found.media_end)})

    table = [(f"{prefix}/{{id}}", info), (f"{prefix}/{{id}}/init/{{track:video|audio}}", init),
             (f"{prefix}/{{id}}/segments/{{n}}/{{track:video|audio}}", segment)]
    for path, handler in table:
        if isinstance(routes, web.RouteTableDef):
            routes.get(path)(handler)
        else:
            routes.add_get(path, handler)


def _segment_number(text: str, channel: LiveChannel) -> int:
    """A segment number of the URL: ASCII digits, at most MAX_DIGITS, at most the channel's `keep` segments past
    the live edge (a player asks for the next one); else 400 with the reason."""
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS):
        raise web.HTTPBadRequest(text=f"segment number must be a non-negative integer of at most {MAX_DIGITS} digits, "
                                      f"got {text[:20]!r}", headers=NO_STORE)
    n, edge = int(text), channel.info()["next"]
    if n > edge + channel.keep:
        raise web.HTTPBadRequest(text=f"segment {n} is far beyond the live edge (the next one is {edge}): ask for "
                                      f"info()['next']", headers=NO_STORE)
    return n


@web.middleware
async def blob_media_policy(request: web.Request, handler) -> web.StreamResponse:
    """For a server whose responses carry a Content-Security-Policy without media-src (ComfyUI 0.33 started with
    --disable-api-nodes sends "default-src 'self'; ..."): adds "media-src 'self' blob:", which the player needs (its
    MediaSource reaches the <video> as a blob: URL that the page's own script makes; Chrome checks a worker's
    MediaSourceHandle the same way). It allows nothing from any other origin. Install it as the outermost
    middleware, so it sees the header the server's own middleware set."""
    response = await handler(request)
    policy = response.headers.get("Content-Security-Policy")
    if policy and "media-src" not in policy and not response.prepared:
        response.headers["Content-Security-Policy"] = f"{policy.strip().rstrip(';')}; media-src 'self' blob:"
    return response

