"""`flashhead serve`: a standalone live talking-head server (aiohttp) with one page, on one loaded model.

    app = create_app(pipeline, ServeOptions(width=512, height=512, max_sessions=4))   # an aiohttp Application
    run(pipeline, ServeOptions(...), host="127.0.0.1", port=8765)              # blocks; Ctrl-C stops it

The API (docs/live.md#flashhead-serve has the protocol written out):

    GET  /                                   the page (static/index.html)
    GET  /static/<name>                      player.js, page.js, page.css (a fixed list)
    POST /api/sessions                       multipart: portrait (1..max_portraits images), optional audio (the whole
                                             speech), optional width, height, seed -> 201 {session, stream, ...}
    POST /api/sessions/{sid}/identities      multipart portrait(s) -> {identities}
    POST /api/sessions/{sid}/identity        JSON {"name"} -> {identity}: from the next chunk on (a clean cut)
    GET  /api/sessions/{sid}/audio?rate=R    WebSocket: binary = s16le mono PCM at R Hz, text {"end": true} /
                                             {"flush": true}; the server sends {"type": "status", ...} messages
    POST /api/sessions/{sid}/audio?rate=R[&end=1][&flush=1]   body = s16le mono PCM -> status JSON
    GET  /api/sessions/{sid}/status          status JSON;  DELETE /api/sessions/{sid} ends and frees the session
    GET  /api/live/...                       the stream (flashhead_core/live/http.py) of a session's channel

Security: bound to loopback by default, where requests must name a loopback host (no DNS rebinding); beyond
loopback a token is required (`?token=`, `Authorization: Bearer`, or the cookie the page gets), compared in constant
time. A request from another origin (an Origin header that is not this server) is refused. No route takes a path:
static files come from a fixed whitelist. Session and stream ids are secrets.token_urlsafe(16) (128 bits). Uploads are
read up to --max-upload-mb and checked (live/uploads.py); more sessions than --max-sessions get 503 "busy"; a
session nobody has touched for `idle_timeout` seconds (no request, no open audio socket) is closed and freed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from ..config import FPS
from ..errors import FlashHeadError, InputError, ServerBusy, SpeechBacklogError, UploadError, UploadTooLarge
from ..generation.session import check_seed
from ..live.channel import LiveChannel, LiveRegistry
from ..live.http import PLAYER_JS, add_stream_routes
from .live_session import LiveSession, check_rate
from .scheduler import GenerationWorker
from .uploads import read_portrait, read_speech
from .webrtc import add_webrtc_routes

DEFAULT_PORT = 8765
MIN_TOKEN_LENGTH = 12
STATIC = Path(__file__).parent / "static"  # the page; the player is the stream library's (live/static/player.js)
STATIC_FILES = {"player.js": (PLAYER_JS, "text/javascript"), "page.js": (STATIC / "page.js", "text/javascript"),
                "page.css": (STATIC / "page.css", "text/css")}
STREAM_PREFIX = "/api/live"
TOKEN_COOKIE = "flashhead_token"
STATUS_INTERVAL = 0.5  # seconds between the status messages on an audio WebSocket
FIELD_LIMIT = 64  # bytes of a text field (width, height, seed)
STATUS_CODES = ((UploadTooLarge, 413), (ServerBusy, 503), (SpeechBacklogError, 429))
NO_STORE = {"Cache-Control": "no-store"}
SERVER = web.AppKey("flashhead_server", object)  # app[SERVER]: the server's state (sessions, worker, registry)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY"}


@dataclass(frozen=True)
class ServeOptions:
    """What a server takes. width, height: a session's default size and the largest it may ask for."""

    width: int = 512
    height: int = 512
    max_sessions: int = 4
    max_upload_bytes: int = 20 * 2**20
    max_speech_seconds: float = 600.0  # a speech file, and the backlog a live session may queue
    max_portraits: int = 8
    idle_timeout: float = 60.0
    token: str | None = None
    context_seconds: float = 8.0


@dataclass
class _Served:
    """A session of this server: its live session, channel, the clock of its last request and its open sockets."""

    id: str
    live: LiveSession
    channel: LiveChannel
    last_seen: float = field(default_factory=time.monotonic)
    sockets: int = 0

    def touch(self) -> None:
        self.last_seen = time.monotonic()


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token, or with one too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InputError(f"--token must be at least {MIN_TOKEN_LENGTH} characters, got {len(token)}: generate one "
                         f"with  python -c \"import secrets; print(secrets.token_urlsafe(24))\"")
    if token is None and not is_loopback(host):
        raise InputError(f"binding to {host} makes the server reachable from other machines, so it needs a token: "
                         f"add --token $(python -c \"import secrets; print(secrets.token_urlsafe(24))\") and open the "
                         f"URL it prints, or bind to 127.0.0.1 (the default)")


class _Server:
    """The handlers and the state behind one Application."""

    def __init__(self, pipeline, options: ServeOptions):
        self.pipeline, self.options = pipeline, options
        self.config = pipeline.model.config
        self.registry = LiveRegistry()
        self.worker = GenerationWorker()
        self.sessions: dict[str, _Served] = {}
        self.reserved = 0  # sessions being created (counted against max_sessions while their uploads are checked)
        self._reaper: asyncio.Task | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        self.worker.start()
        self._reaper = asyncio.create_task(self._reap())

    async def on_cleanup(self, app: web.Application) -> None:
        self._reaper.cancel()
        await asyncio.gather(self._reaper, return_exceptions=True)
        for sid in list(self.sessions):
            await self._free(sid)
        await asyncio.to_thread(self.worker.stop)

    async def _reap(self) -> None:
        """Close sessions nobody has touched for idle_timeout seconds."""
        interval = min(5.0, max(0.05, self.options.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = [sid for sid, served in self.sessions.items()
                    if not served.sockets and now - served.last_seen > self.options.idle_timeout]
            for sid in idle:
                await self._free(sid)

    async def _free(self, sid: str) -> None:
        served = self.sessions.pop(sid, None)
        if served is None:
            return
        self.worker.remove(served.live)
        await asyncio.to_thread(served.live.close)
        self.registry.remove(served.channel.id)

    def session(self, request: web.Request) -> _Served:
        served = self.sessions.get(request.match_info["sid"])
        if served is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such session (it ended, was deleted or timed out "
                                                            "after being idle): create a new one"}),
                                   content_type="application/json", headers=NO_STORE)
        served.touch()
        return served

    def check_stream(self, request: web.Request, channel: LiveChannel) -> None:
        """The stream routes' check: only a channel of a live session of this server, which it keeps alive."""
        served = self.sessions.get(channel.meta.get("session", ""))
        if served is None or served.channel is not channel:
            raise web.HTTPNotFound(text="no such live stream", headers=NO_STORE)
        served.touch()

    # --- sessions ---------------------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        if len(self.sessions) + self.reserved >= self.options.max_sessions:
            raise ServerBusy(f"busy: this server runs {self.options.max_sessions} live sessions at most and all are "
                             f"in use; try again when one ends (or start it with a higher --max-sessions)")
        self.reserved += 1
        try:
            form = await self._read_form(request, {"portrait", "audio", "width", "height", "seed"})
            portraits = form.get("portrait", [])
            if not portraits:
                raise UploadError("no portrait: send at least one image file in the 'portrait' field")
            if len(portraits) > self.options.max_portraits:
                raise UploadError(f"{len(portraits)} portraits: a session takes at most {self.options.max_portraits}")
            width, height = self._size(form)
            seed = check_seed(_integer(form, "seed", 0))
            speech = None
            if form.get("audio"):
                if len(form["audio"]) > 1:
                    raise UploadError("send one speech file in the 'audio' field (it is the whole speech)")
                filename, data = form["audio"][0]
                speech = await asyncio.to_thread(read_speech, data, filename, self.options.max_speech_seconds)
            images = [(name, await asyncio.to_thread(read_portrait, data, name)) for name, data in portraits]
            sid = secrets.token_urlsafe(16)
            channel = self.registry.create(session=sid)
            live = await asyncio.to_thread(
                LiveSession, self.pipeline, channel, height=height, width=width, seed=seed,
                context_seconds=self.options.context_seconds, max_backlog_seconds=self.options.max_speech_seconds)
            try:
                await self._add_identities(live, images)
            except BaseException:
                await asyncio.to_thread(live.close)
                self.registry.remove(channel.id)
                raise
            served = _Served(sid, live, channel)
            self.sessions[sid] = served
        finally:
            self.reserved -= 1
        self.worker.add(live)
        if speech is not None:
            live.feed(speech)
            live.end()
            self.worker.wake()
        return web.json_response({"session": sid, "identities": live.identities, "identity": live.identity,
                                  "stream": f"{STREAM_PREFIX}/{channel.id}", "width": width, "height": height,
                                  "fps": FPS, "variant": self.config.variant,
                                  "new_frames": self.config.new_frames}, status=201, headers=NO_STORE)

    async def _add_identities(self, live: LiveSession, images: list[tuple[str, object]]) -> list[str]:
        """Prepare portraits on the worker (between chunks), named after their files (made unique)."""
        names = []
        for filename, image in images:
            name = _identity_name(filename, set(live.identities) | set(names), len(live.identities) + len(names))
            await asyncio.wrap_future(self.worker.call(live.add_identity, name, image))
            names.append(name)
        return names

    async def add_identities(self, request: web.Request) -> web.Response:
        served = self.session(request)
        form = await self._read_form(request, {"portrait"})
        portraits = form.get("portrait", [])
        if not portraits:
            raise UploadError("no portrait: send one or more image files in the 'portrait' field")
        if len(served.live.identities) + len(portraits) > self.options.max_portraits:
            raise UploadError(f"a session takes at most {self.options.max_portraits} portraits and this one has "
                              f"{len(served.live.identities)}: start a new session for more")
        images = [(name, await asyncio.to_thread(read_portrait, data, name)) for name, data in portraits]
        added = await self._add_identities(served.live, images)
        return web.json_response({"identities": served.live.identities, "added": added}, headers=NO_STORE)

    async def use_identity(self, request: web.Request) -> web.Response:
        served = self.session(request)
        body = await _read_body(request, FIELD_LIMIT * 16)
        try:
            name = json.loads(body)["name"]
        except (ValueError, KeyError, TypeError):
            raise InputError('send JSON {"name": "<identity>"} naming one of the session\'s identities') from None
        served.live.use_identity(str(name))
        return web.json_response({"identity": served.live.identity}, headers=NO_STORE)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(self.session(request)), headers=NO_STORE)

    def _status(self, served: _Served) -> dict:
        return {"type": "status", "session": served.id, "stream": f"{STREAM_PREFIX}/{served.channel.id}",
                **served.live.status()}

    async def delete(self, request: web.Request) -> web.Response:
        served = self.session(request)
        await self._free(served.id)
        return web.json_response({"session": served.id, "deleted": True}, headers=NO_STORE)

    # --- speech -----------------------------------------------------------------------------------------------------

    async def push_audio(self, request: web.Request) -> web.Response:
        served = self.session(request)
        rate = _rate(request)
        data = await _read_body(request, self.options.max_upload_bytes)
        served.live.feed_pcm16(data, rate)
        if request.query.get("flush") == "1":
            served.live.flush()
        if request.query.get("end") == "1":
            served.live.end()
        self.worker.wake()
        return web.json_response(self._status(served), headers=NO_STORE)

    async def audio_socket(self, request: web.Request) -> web.WebSocketResponse:
        served = self.session(request)
        rate = _rate(request)
        socket = web.WebSocketResponse(max_msg_size=self.options.max_upload_bytes, heartbeat=30)
        await socket.prepare(request)
        served.sockets += 1
        sender = asyncio.create_task(self._send_status(socket, served))
        try:
            async for message in socket:
                served.touch()
                try:
                    if message.type == WSMsgType.BINARY:
                        served.live.feed_pcm16(message.data, rate)
                    elif message.type == WSMsgType.TEXT:
                        _control(served.live, message.data)
                except SpeechBacklogError as e:  # this piece is dropped; the speaker may slow down and go on
                    await socket.send_json({"type": "error", "error": str(e)})
                except FlashHeadError as e:
                    await socket.send_json({"type": "error", "error": str(e)})
                    break
                self.worker.wake()
        finally:
            sender.cancel()
            served.sockets -= 1
            served.touch()
            if not socket.closed:
                await socket.close()
            if self.sessions.get(served.id) is served:
                served.live.end()  # a socket that closes without {"end": true}: the speech ends where it stopped
                self.worker.wake()
        return socket

    async def _send_status(self, socket: web.WebSocketResponse, served: _Served) -> None:
        """A status message every STATUS_INTERVAL seconds while something changes."""
        last = None
        while not socket.closed:
            status = self._status(served)
            if status != last:
                await socket.send_json(status)
                last = status
            await asyncio.sleep(STATUS_INTERVAL)

    # --- request parts ----------------------------------------------------------------------------------------------

    def _size(self, form: dict) -> tuple[int, int]:
        width_max, height_max = self.options.width, self.options.height
        width, height = _integer(form, "width", width_max), _integer(form, "height", height_max)
        if not (0 < width <= width_max and 0 < height <= height_max):
            raise InputError(f"a session's size may be at most {width_max}x{height_max} on this server, got "
                             f"{width}x{height}: ask for a smaller size (or start the server with a larger --size)")
        return width, height

    async def _read_form(self, request: web.Request, fields: set[str]) -> dict[str, list]:
        """multipart/form-data -> {field: [(filename, bytes)] for files, [text] for the others}; each part read up to
        max_upload_bytes (UploadTooLarge beyond), the whole form up to twice that, at most max_portraits files."""
        if not request.content_type.startswith("multipart/"):
            given = request.content_type or "no content type"
            raise UploadError(f"send multipart/form-data (a form with the files), not {given}")
        limit = self.options.max_upload_bytes
        reader = await request.multipart()
        form: dict[str, list] = {}
        total = files = 0
        while (part := await reader.next()) is not None:
            name = part.name or ""
            if name not in fields:
                raise UploadError(f"unknown form field {name!r}: this request takes {', '.join(sorted(fields))}")
            if part.filename is None:
                data = await _read_part(part, FIELD_LIMIT, f"field {name!r}")
                form.setdefault(name, []).append(data.decode("utf-8", "replace"))
                continue
            files += 1
            if files > self.options.max_portraits + 1:
                raise UploadError(f"too many files: a session takes at most {self.options.max_portraits} portraits "
                                  f"and one speech file")
            data = await _read_part(part, limit, f"{part.filename!r}")
            total += len(data)
            if total > 2 * limit:
                raise UploadTooLarge(f"the uploads together exceed {2 * limit / 2**20:.0f} MB: send fewer or smaller "
                                     f"files")
            form.setdefault(name, []).append((part.filename, data))
        return form


# --- helpers ---------------------------------------------------------------------------------------------------

async def _joined(chunks, limit: int, too_large: str) -> bytes:
    """The bytes of an async iterator of chunks, or UploadTooLarge(too_large) as soon as they pass `limit`."""
    pieces, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(too_large)
        pieces.append(chunk)
    return b"".join(pieces)


async def _part_chunks(part):
    while chunk := await part.read_chunk(1 << 16):
        yield chunk


async def _read_part(part, limit: int, what: str) -> bytes:
    return await _joined(_part_chunks(part), limit, (
        f"{what} is larger than this server's {_readable_size(limit)} limit: send a smaller file (or start the "
        f"server with a larger --max-upload-mb)"))


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise UploadTooLarge(f"the request body of {request.content_length} bytes is larger than this server's "
                             f"{_readable_size(limit)} limit: send the audio in smaller pieces")
    return await _joined(request.content.iter_chunked(1 << 16), limit, (
        f"the request body is larger than this server's {_readable_size(limit)} limit: send the audio in smaller "
        f"pieces"))


def _readable_size(limit: int) -> str:
    """A byte limit as people read it: '20 MB', '256 KB', '64 bytes'."""
    if limit >= 2**20:
        return f"{limit / 2**20:g} MB"
    return f"{limit / 2**10:g} KB" if limit >= 2**10 else f"{limit} bytes"


def _integer(form: dict, name: str, default: int) -> int:
    values = form.get(name) or [""]
    text = values[-1].strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {text!r}") from None


def _rate(request: web.Request) -> int:
    text = request.query.get("rate", "16000")
    try:
        rate = int(text)
    except ValueError:
        rate = text
    return check_rate(rate)


def _identity_name(filename: str, taken: set[str], index: int) -> str:
    """An identity's name from its file name: the stem, in letters, digits, '-', '_', '.' and spaces, at most 40
    characters; 'portrait N' when nothing is left; ' (2)', ' (3)', ... when taken."""
    stem = re.sub(r"[^\w .-]", "", Path(filename.replace("\\", "/")).stem, flags=re.ASCII).strip()[:40]
    base = stem or f"portrait {index + 1}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base} ({n})"
    return name


def _control(live: LiveSession, text: str) -> None:
    """A text message of the audio WebSocket: {"end": true} and/or {"flush": true}."""
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict) or not set(message) <= {"end", "flush"}:
        raise InputError(f'text messages on the audio socket are {{"end": true}} or {{"flush": true}}, got '
                         f'{text[:80]!r}')
    if message.get("flush"):
        live.flush()
    if message.get("end"):
        live.end()


def _error_status(error: FlashHeadError) -> int:
    return next((status for kind, status in STATUS_CODES if isinstance(error, kind)), 400)


def _given_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE)


def _security(options: ServeOptions):
    @web.middleware
    async def middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text=json.dumps({"error": f"requests from {origin} are refused: use the page this "
                                                              f"server serves"}), content_type="application/json")
        if options.token is None:
            if not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
                raise web.HTTPForbidden(text=json.dumps({"error": f"this server answers only to localhost, not "
                                                                  f"{request.host!r}: open http://127.0.0.1:<port>/ "
                                                                  f"(or start it with a --token)"}),
                                        content_type="application/json")
        else:
            given = _given_token(request)
            if given is None or not hmac.compare_digest(given.encode(), options.token.encode()):
                raise web.HTTPUnauthorized(text=json.dumps({
                    "error": "missing or wrong token: open the URL `flashhead serve` printed (it ends in ?token=...), "
                             "or send the header Authorization: Bearer <token>"}), content_type="application/json")
        response = await handler(request)
        if options.token is not None and request.query.get("token") and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, options.token, httponly=True, samesite="Strict")
        return response

    return middleware


@web.middleware
async def _errors(request: web.Request, handler):
    """FlashHeadError -> JSON {"error"} with its status (400, 413, 429, 503); security headers on every answer."""
    try:
        response = await handler(request)
    except FlashHeadError as e:
        response = web.json_response({"error": str(e)}, status=_error_status(e), headers=NO_STORE)
    except web.HTTPException as e:
        e.headers.update(SECURITY_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


def _static(path: Path, content_type: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers={"Content-Type": content_type, **NO_STORE})

    return handler


def create_app(pipeline, options: ServeOptions = ServeOptions()) -> web.Application:
    """The server's Application over a loaded Pipeline (its generation worker starts and stops with the app)."""
    server = _Server(pipeline, options)
    app = web.Application(middlewares=[_errors, _security(options)], client_max_size=2 * options.max_upload_bytes)
    app[SERVER] = server
    app.on_startup.append(server.on_startup)
    app.on_cleanup.append(server.on_cleanup)
    router = app.router
    router.add_get("/", _static(STATIC / "index.html", "text/html; charset=utf-8"))
    for name, (path, content_type) in STATIC_FILES.items():
        router.add_get(f"/static/{name}", _static(path, content_type))
    router.add_post("/api/sessions", server.create)
    router.add_post("/api/sessions/{sid}/identities", server.add_identities)
    router.add_post("/api/sessions/{sid}/identity", server.use_identity)
    router.add_get("/api/sessions/{sid}/audio", server.audio_socket)
    router.add_post("/api/sessions/{sid}/audio", server.push_audio)
    router.add_get("/api/sessions/{sid}/status", server.status)
    router.add_delete("/api/sessions/{sid}", server.delete)
    add_stream_routes(router, STREAM_PREFIX, server.registry, check=server.check_stream)
    add_webrtc_routes(app, server)
    return app


def run(pipeline, options: ServeOptions, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve until interrupted (Ctrl-C); prints the page's URL (with the token, when there is one) to stderr."""
    check_binding(host, options.token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={options.token}" if options.token else "")
    print(f"flashhead serve: {pipeline.model.config.variant} model, up to {options.max_sessions} sessions; open {url}",
          file=sys.stderr, flush=True)
    try:
        web.run_app(create_app(pipeline, options), host=host, port=port, print=None, shutdown_timeout=5)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port, or stop the "
                         f"program using it") from e
