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
                                             {"flush": true} / {"interrupt": true}; the server sends {"type":
                                             "status", ...} messages
    POST /api/sessions/{sid}/audio?rate=R[&end=1][&flush=1]   body = s16le mono PCM -> status JSON
    GET  /api/sessions/{sid}/status          status JSON;  DELETE /api/sessions/{sid} ends and frees the session
    GET  /api/live/...                       the stream (flashhead_core/live/http.py) of a session's channel

Who may call it is security.py's (loopback, Host, Origin, token); how a request is read, forms.py's (limits and a
deadline on every body). Here: the session registry and the handlers. A request takes a session slot only once its
body has arrived (a client that stalls holds nothing); more sessions than max_sessions get 503 "busy". Uploads are
decoded off the event loop, one portrait at a time, and kept at the session's size (uploads.py); PCM is converted
and resampled off the event loop too. A session with nothing to generate that nobody has used for idle_timeout
seconds (no request, no stream read, no message on its audio socket; an open but silent socket does not count) is
closed and freed, its sockets told why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web

from ..config import AUDIO_SAMPLE_RATE, FPS
from ..errors import (ControlMessageError, FlashHeadError, InputError, ServerBusy, SpeechBacklogError, UploadError,
                      check_range)
from ..generation.session import check_seed
from ..live.channel import LiveChannel, LiveRegistry
from ..live.http import PLAYER_JS, add_stream_routes
from .forms import FIELD_LIMIT, FormLimits, parse_integer, parse_json, read_body, read_form
from .live_session import LiveSession, check_rate
from .scheduler import GenerationWorker
from .security import (NO_STORE, check_binding, check_public_origin, errors_middleware, refusal,
                       security_middleware)
from .uploads import read_portrait, read_speech
from .webrtc import RtcSink, add_webrtc_routes

DEFAULT_PORT = 8765
STATIC = Path(__file__).parent / "static"  # the page; the player is the stream library's (live/static/player.js)
STATIC_FILES = {"player.js": (PLAYER_JS, "text/javascript"), "page.js": (STATIC / "page.js", "text/javascript"),
                "page.css": (STATIC / "page.css", "text/css")}
STREAM_PREFIX = "/api/live"
STATUS_INTERVAL = 0.5  # seconds between the status messages on an audio WebSocket
FEED_SLICE = 1 << 18  # bytes of PCM converted and resampled at a time (8 s at 16 kHz)
SESSION_FIELDS = frozenset({"width", "height", "seed", "idle"})
SCHEDULING = ("batched", "round-robin")  # ServeOptions.scheduling, --scheduling
CONTROLS = ("end", "flush", "interrupt")  # the audio socket's text messages: {"end": true}, ...
SERVER = web.AppKey("flashhead_server", object)  # app[SERVER]: the server's state (sessions, worker, registry)


@dataclass(frozen=True)
class ServeOptions:
    """What a server takes, checked when made (InputError naming the option). width, height: a session's default
    size and the largest it may ask for; max_upload_bytes: one file or PCM body (a form: twice that); read_timeout:
    seconds a request's body may take to arrive; public_origin: scheme://host[:port] of the page behind a TLS proxy
    (requests from it are this server's own; needs a token); scheduling: "batched" (the ready sessions of one size
    share each chunk's DiT calls) or "round-robin" (one session's chunk at a time), serve/scheduler.py."""

    width: int = 512
    height: int = 512
    max_sessions: int = 4
    max_upload_bytes: int = 20 * 2**20
    max_speech_seconds: float = 600.0  # a speech file, and the backlog a live session may queue
    max_portraits: int = 8
    idle_timeout: float = 60.0
    token: str | None = None
    context_seconds: float = 8.0
    read_timeout: float = 30.0
    public_origin: str | None = None
    scheduling: str = "batched"

    def __post_init__(self):
        for name, low, high in (("width", 16, 8192), ("height", 16, 8192), ("max_sessions", 1, 1024),
                                ("max_upload_bytes", 1024, 2**32), ("max_portraits", 1, 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be a whole number, got {value!r}")
            check_range(value, name, low, high)
        check_range(self.max_speech_seconds, "max_speech_seconds", 1, 24 * 3600)
        check_range(self.idle_timeout, "idle_timeout (--idle-timeout)", 0.1, 7 * 24 * 3600,
                    "seconds after which an unused session is freed")
        check_range(self.read_timeout, "read_timeout", 0.1, 3600, "seconds a request's body may take to arrive")
        if self.scheduling not in SCHEDULING:
            raise InputError(f"scheduling must be one of {', '.join(SCHEDULING)}, got {self.scheduling!r}")
        object.__setattr__(self, "public_origin", check_public_origin(self.public_origin))
        if self.public_origin is not None and self.token is None:
            raise InputError("--public-origin puts the server behind a proxy that others can reach: give it a token "
                             "too (FLASHHEAD_TOKEN or --token-file)")


@dataclass
class _Served:
    """A session of this server: its live session, channel, the clock of its last use, its watchers (sockets: a
    viewer that keeps it alive without requests, e.g. a WebRTC peer) and its open audio sockets (which do not)."""

    id: str
    live: LiveSession
    channel: LiveChannel
    last_seen: float = field(default_factory=time.monotonic)
    sockets: int = 0
    audio: set = field(default_factory=set)
    feeding: asyncio.Lock = field(default_factory=asyncio.Lock)  # speech pieces go in one at a time, in order

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def idle(self, now: float, timeout: float) -> bool:
        """Nobody used it for `timeout` seconds, nobody watches it and it has nothing to generate: no whole chunk of
        speech waits for the model or is being generated (a part of a chunk waits for more speech: that is idle)."""
        if self.sockets or now - self.last_seen <= timeout:
            return False
        status = self.live.status()
        return status["state"] != "generating" and status["behind_s"] * AUDIO_SAMPLE_RATE < self.live.slice_samples


class _Server:
    """The session registry and the handlers behind one Application."""

    def __init__(self, pipeline, options: ServeOptions):
        self.pipeline, self.options = pipeline, options
        self.config = pipeline.model.config
        self.registry = LiveRegistry()
        self.worker = GenerationWorker(batched=options.scheduling == "batched")
        self.sessions: dict[str, _Served] = {}
        self.reserved = 0  # sessions being created (counted against max_sessions while their uploads are decoded)

    # --- lifecycle --------------------------------------------------------------------------------------------------

    async def lifetime(self, app: web.Application):
        """The app's cleanup context: the worker and the idle reaper run while the app does."""
        self.worker.start()
        reaper = asyncio.create_task(self._reap())
        yield
        reaper.cancel()
        await asyncio.gather(reaper, return_exceptions=True)
        for sid in list(self.sessions):
            await self._free(sid, "the server is shutting down")
        await asyncio.to_thread(self.worker.stop)

    async def _reap(self) -> None:
        """Close the idle sessions (`_Served.idle`)."""
        timeout = self.options.idle_timeout
        while True:
            await asyncio.sleep(min(5.0, max(0.05, timeout / 4)))
            now = time.monotonic()
            for sid in [sid for sid, served in self.sessions.items() if served.idle(now, timeout)]:
                await self._free(sid, f"this session was closed after {timeout:g} s without speech or requests: "
                                      f"create a new one")

    async def _free(self, sid: str, reason: str) -> None:
        served = self.sessions.pop(sid, None)
        if served is None:
            return
        self.worker.remove(served.live)
        await asyncio.to_thread(served.live.close)
        self.registry.remove(served.channel.id)
        for socket in list(served.audio):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.send_json({"type": "error", "error": reason})
            await socket.close()

    def session(self, request: web.Request) -> _Served:
        served = self.sessions.get(request.match_info["sid"])
        if served is None:
            raise refusal(web.HTTPNotFound, "no such session (it ended, was deleted or timed out after being idle): "
                                            "create a new one")
        served.touch()
        return served

    def check_stream(self, request: web.Request, channel: LiveChannel) -> None:
        """The stream routes' check: only a channel of a live session of this server, which it keeps alive."""
        served = self.sessions.get(channel.meta.get("session", ""))
        if served is None or served.channel is not channel:
            raise web.HTTPNotFound(text="no such live stream", headers=NO_STORE)
        served.touch()

    @contextlib.contextmanager
    def _slot(self):
        """A session slot while a session is made (ServerBusy when all are taken)."""
        if len(self.sessions) + self.reserved >= self.options.max_sessions:
            raise ServerBusy(f"busy: this server runs {self.options.max_sessions} live sessions at most and all are "
                             f"in use; try again when one ends (or start it with a higher --max-sessions)")
        self.reserved += 1
        try:
            yield
        finally:
            self.reserved -= 1

    def _form_limits(self, files: dict[str, int], texts: frozenset = frozenset()) -> FormLimits:
        limit = self.options.max_upload_bytes
        return FormLimits(files=files, texts=texts, part_bytes=limit, total_bytes=2 * limit,
                          deadline=self.options.read_timeout)

    # --- sessions ---------------------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        form = await read_form(request, self._form_limits({"portrait": self.options.max_portraits, "audio": 1},
                                                          SESSION_FIELDS))
        portraits = form.get("portrait", [])
        if not portraits:
            raise UploadError("no portrait: send at least one image file in the 'portrait' field")
        width, height = self._size(form)
        seed = check_seed(_form_integer(form, "seed", 0))
        if (idle := _form_integer(form, "idle", 0)) not in (0, 1):
            raise InputError(f"idle must be 1 (keep moving between utterances) or 0, got {idle}")
        with self._slot():
            speech = None
            if form.get("audio"):
                filename, data = form.pop("audio")[0]
                speech = await asyncio.to_thread(read_speech, data, filename, self.options.max_speech_seconds)
            images = await self._read_portraits(portraits, (height, width))
            sid = secrets.token_urlsafe(16)
            channel = self.registry.create(session=sid)
            live = await asyncio.to_thread(
                LiveSession, self.pipeline, channel, height=height, width=width, seed=seed,
                context_seconds=self.options.context_seconds, max_backlog_seconds=self.options.max_speech_seconds,
                sinks=[RtcSink()], idle=bool(idle))
            try:
                await self._add_identities(live, images)
            except BaseException:
                await asyncio.to_thread(live.close)
                self.registry.remove(channel.id)
                raise
            self.sessions[sid] = _Served(sid, live, channel)
        self.worker.add(live)
        if speech is not None:
            live.feed(speech)
            live.end()
            self.worker.wake()
        return web.json_response({"session": sid, "identities": live.identities, "identity": live.identity,
                                  "stream": f"{STREAM_PREFIX}/{channel.id}", "width": width, "height": height,
                                  "fps": FPS, "variant": self.config.variant,
                                  "new_frames": self.config.new_frames}, status=201, headers=NO_STORE)

    @staticmethod
    async def _read_portraits(portraits: list, size: tuple[int, int]) -> list:
        """Decode the uploaded portraits one at a time (each dropped as bytes once decoded), cut to `size`."""
        images = []
        while portraits:
            name, data = portraits.pop(0)
            images.append((name, await asyncio.to_thread(read_portrait, data, name, size)))
        return images

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
        room = self.options.max_portraits - len(served.live.identities)
        if room <= 0:
            raise UploadError(f"a session takes at most {self.options.max_portraits} portraits and this one has "
                              f"{len(served.live.identities)}: start a new session for more")
        form = await read_form(request, self._form_limits({"portrait": room}))
        portraits = form.get("portrait", [])
        if not portraits:
            raise UploadError("no portrait: send one or more image files in the 'portrait' field")
        images = await self._read_portraits(portraits, (served.live.session.height, served.live.session.width))
        added = await self._add_identities(served.live, images)
        served.touch()
        return web.json_response({"identities": served.live.identities, "added": added}, headers=NO_STORE)

    async def use_identity(self, request: web.Request) -> web.Response:
        served = self.session(request)
        expected = 'send JSON {"name": "<identity>"} naming one of the session\'s identities'
        body = await read_body(request, FIELD_LIMIT * 16, self.options.read_timeout, expected)
        message = parse_json(body, expected)
        if not isinstance(message, dict) or not isinstance(message.get("name"), str):
            raise InputError(expected)
        served.live.use_identity(message["name"])
        return web.json_response({"identity": served.live.identity}, headers=NO_STORE)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(self.session(request)), headers=NO_STORE)

    def _status(self, served: _Served) -> dict:
        return {"type": "status", "session": served.id, "stream": f"{STREAM_PREFIX}/{served.channel.id}",
                **served.live.status()}

    async def delete(self, request: web.Request) -> web.Response:
        served = self.session(request)
        await self._free(served.id, "this session was deleted")
        return web.json_response({"session": served.id, "deleted": True}, headers=NO_STORE)

    # --- speech -----------------------------------------------------------------------------------------------------

    async def _feed(self, served: _Served, data: bytes, rate: int) -> None:
        """PCM into the session, converted and resampled off the event loop, pieces in the order they came."""
        async with served.feeding:
            await asyncio.to_thread(_feed_slices, served.live, data, rate)
        self.worker.wake()

    async def push_audio(self, request: web.Request) -> web.Response:
        served = self.session(request)
        rate, flush, end = _rate(request), _flag(request, "flush"), _flag(request, "end")
        data = await read_body(request, self.options.max_upload_bytes, self.options.read_timeout,
                               "send the speech in smaller pieces")
        await self._feed(served, data, rate)
        if flush:
            served.live.flush()
        if end:
            served.live.end()
        self.worker.wake()
        return web.json_response(self._status(served), headers=NO_STORE)

    async def audio_socket(self, request: web.Request) -> web.WebSocketResponse:
        served = self.session(request)
        rate = _rate(request)
        socket = web.WebSocketResponse(max_msg_size=self.options.max_upload_bytes, heartbeat=30)
        await socket.prepare(request)
        served.audio.add(socket)
        sender = asyncio.create_task(self._send_status(socket, served))
        try:
            async for message in socket:
                served.touch()
                try:
                    if message.type == WSMsgType.BINARY:
                        await self._feed(served, message.data, rate)
                    elif message.type == WSMsgType.TEXT:
                        _control(served.live, _parse_control(message.data))
                except (SpeechBacklogError, ControlMessageError) as e:  # this message is dropped; the client may go on
                    await socket.send_json({"type": "error", "error": str(e)})
                except FlashHeadError as e:
                    await socket.send_json({"type": "error", "error": str(e)})
                    break
                self.worker.wake()
        finally:
            sender.cancel()
            served.audio.discard(socket)
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
        width, height = _form_integer(form, "width", width_max), _form_integer(form, "height", height_max)
        if not (0 < width <= width_max and 0 < height <= height_max):
            raise InputError(f"a session's size may be at most {width_max}x{height_max} on this server, got "
                             f"{width}x{height}: ask for a smaller size (or start the server with a larger --size)")
        return width, height


def _feed_slices(live: LiveSession, data: bytes, rate: int) -> None:
    """s16le PCM into `live` FEED_SLICE bytes at a time: its float conversion and resampling hold a slice, not the
    whole body (a 20 MB body would take 12 times that at once). Past the backlog, the rest is refused."""
    for start in range(0, max(len(data), 1), FEED_SLICE):
        live.feed_pcm16(data[start:start + FEED_SLICE], rate)


def _form_integer(form: dict, name: str, default: int) -> int:
    text = (form.get(name) or [""])[0].strip()
    return parse_integer(text, name) if text else default


def _rate(request: web.Request) -> int:
    return check_rate(parse_integer(request.query.get("rate", "16000"), "rate"))


def _flag(request: web.Request, name: str) -> bool:
    """A query flag: absent or 0 is off, 1 is on; anything else is refused."""
    value = request.query.get(name, "0")
    if value not in ("0", "1"):
        raise InputError(f"{name} must be 1 or 0, got {value[:20]!r}")
    return value == "1"


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


def _parse_control(text: str) -> dict[str, bool]:
    """A text message of the audio WebSocket -> {control: bool}: {"interrupt": true} (barge-in: the queued speech
    is dropped, the session goes on), {"flush": true}, {"end": true}, or several at once; each a JSON boolean."""
    expected = " or ".join(f'{{"{name}": true}}' for name in CONTROLS)
    try:
        message = parse_json(text, f"text messages on the audio socket are {expected}")
    except InputError as e:
        raise ControlMessageError(str(e)) from None
    if not isinstance(message, dict) or not message or not set(message) <= set(CONTROLS):
        raise ControlMessageError(f"text messages on the audio socket are {expected}, got {text[:80]!r}")
    for name, value in message.items():
        if not isinstance(value, bool):
            raise ControlMessageError(f'"{name}" takes true or false (a JSON boolean), got {json.dumps(value)[:40]}')
    return message


def _control(live: LiveSession, control: dict[str, bool]) -> None:
    """Apply a control message: interrupt, then flush, then end (each when true)."""
    if control.get("interrupt"):
        live.interrupt()
    if control.get("flush"):
        live.flush()
    if control.get("end"):
        live.end()


def _static(path: Path, content_type: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers={"Content-Type": content_type, **NO_STORE})

    return handler


def create_app(pipeline, options: ServeOptions = ServeOptions()) -> web.Application:
    """The server's Application over a loaded Pipeline (its generation worker starts and stops with the app)."""
    server = _Server(pipeline, options)
    app = web.Application(middlewares=[errors_middleware, security_middleware(options.token, options.public_origin)],
                          client_max_size=2 * options.max_upload_bytes)
    app[SERVER] = server
    app.cleanup_ctx.append(server.lifetime)
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
    check_binding(host, options.token, options.public_origin)
    shown = f"[{host}]" if ":" in host else host
    base = f"{options.public_origin}/" if options.public_origin else f"http://{shown}:{port}/"
    url = base + (f"?token={options.token}" if options.token else "")
    print(f"flashhead serve: {pipeline.model.config.variant} model, up to {options.max_sessions} sessions; open {url}",
          file=sys.stderr, flush=True)
    try:
        web.run_app(create_app(pipeline, options), host=host, port=port, print=None, shutdown_timeout=5)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port, or stop the "
                         f"program using it") from e
