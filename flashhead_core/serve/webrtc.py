"""WebRTC delivery of a live session (aiortc): one video track and one audio track on one 25 Hz clock.

    sink = RtcSink()                              # a live sink (flashhead_core/live/sink.py's interface)
    live = LiveSession(pipeline, channel, ..., sinks=[sink])   # hands it each chunk: frames + exactly their samples
    peer = await RtcPeer.answer(sink, offer_sdp)  # an RTCPeerConnection answering the browser's offer
    peer.answer_sdp                               # -> the browser; frames flow once ICE and DTLS are up
    await peer.close()                            # (a later offer gets a new peer on the same sink)

The clock: a Playout task ticks every 40 ms (t0 + k / 25) and hands each track its part of one unit, frame k and
its 640 samples (two 20 ms audio frames at 16 kHz, which aiortc's Opus encoder resamples to 48 kHz). Video frame k
carries pts k / 25 and its audio pts k x 640 / 16000, and both leave at the same tick, so the receiver's lip-sync (it
maps each track's RTP time to the sender's wall clock through RTCP) plays them together whatever its buffers do.
When generation has no unit ready at a tick (slower than real time, or the speech paused without an idle mode) the
tick repeats the last frame with silence: the stream keeps its clock, the page keeps playing (held picture) and
the session's status says how far it is behind. A unit that is queued is never skipped, so what lags is latency,
not sync.

Candidates: host candidates only, plus 127.0.0.1 (aioice leaves loopback out; a browser on this machine with only
`lo`, as in the tests' network namespace, needs it; browsers ignore loopback candidates unless told otherwise), unless
STUN/TURN servers are configured (`FLASHHEAD_ICE_SERVERS`, a JSON list of {"urls", "username", "credential"}; the page
gets the same list from GET /api/rtc). Routes (add_webrtc_routes, under the server's token/Origin/Host checks):

    GET    /api/rtc                          {"iceServers": [...]}: what the page's RTCPeerConnection uses
    POST   /api/sessions/{sid}/rtc           JSON {"type": "offer", "sdp"} -> {"type": "answer", "sdp"}; the
                                             session's stream then plays over WebRTC (a new offer replaces the peer)
    GET    /api/sessions/{sid}/rtc           {"state", "queued_s", "frames_sent", "held_frames", ...}
    DELETE /api/sessions/{sid}/rtc           closes the peer (the session stays)
    POST   /api/sessions/{sid}/interrupt     barge-in (LiveSession.interrupt): the queued speech and what the
                                             sinks have not played are dropped; the next speech starts at the next
                                             chunk boundary
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import deque
from fractions import Fraction

import aioice.ice
import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from ..errors import InputError, ServerBusy, UploadTooLarge

log = logging.getLogger(__name__)

AUDIO_FRAME_SAMPLES = AUDIO_SAMPLE_RATE // 50  # 20 ms: what one Opus packet holds
MAX_OFFER_BYTES = 64 * 1024  # a browser's offer is 3-8 KB
CONNECT_TIMEOUT = 20.0  # seconds from the answer to a connected peer; then the peer is closed
MAX_QUEUED_SECONDS = 30.0  # units a sink keeps for a peer; beyond, the oldest go (logged)
ATTACH_GRACE = 10.0  # seconds in which a new sink keeps up to ATTACH_GRACE of video for its first peer to connect
UNWATCHED_SECONDS = 2.0  # what a sink without a peer keeps after that: a peer that connects later starts at the edge
ICE_SERVERS_ENV = "FLASHHEAD_ICE_SERVERS"


class RtcSink:
    """A live sink (start/write/close/interrupt, as flashhead_core/live/sink.py) that queues each frame with its 640
    samples for the Playout of the peer watching it. Thread-safe: the session writes from the generation worker, the
    playout takes on the event loop. It keeps at most max_queued_seconds while a peer watches; without one, the
    last ATTACH_GRACE seconds of video during the first ATTACH_GRACE seconds (the page's peer connects within a
    second of creating the session and sees the speech from its start), then only the last UNWATCHED_SECONDS: a
    session played over Media Source holds little here (at most 10 s of frames for 10 s, about 200 MB at
    512x512) and a peer that joins late starts at the live edge."""

    def __init__(self, max_queued_seconds: float = MAX_QUEUED_SECONDS, clock=time.monotonic):
        self._lock = threading.Lock()
        self._units: deque[tuple[np.ndarray, np.ndarray]] = deque()  # (frame uint8 [H, W, 3], audio float32 [640])
        self._max_units = round(max_queued_seconds * FPS)
        self._clock, self._born = clock, clock()
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # the watching playout's
        self.size: tuple[int, int] | None = None  # (width, height) once started
        self.closed = False
        self.error: str | None = None
        self.dropped = 0  # units dropped: interrupted, or beyond max_queued_seconds

    # --- the sink interface (the session's side) ------------------------------------------------------------------

    def start(self, width: int, height: int, fps: int, sample_rate: int | None, channels: int | None) -> None:
        if fps != FPS or sample_rate != AUDIO_SAMPLE_RATE or channels != 1:
            raise InputError(f"a WebRTC sink takes {FPS} fps video with mono {AUDIO_SAMPLE_RATE} Hz audio, got {fps} "
                             f"fps, {sample_rate} Hz, {channels} channels")
        self.size = (width, height)

    def write(self, frames: np.ndarray, audio: np.ndarray) -> None:
        """frames uint8 [n, H, W, 3]; audio float32 [n x 640, 1]: exactly the samples of those frames."""
        if len(audio) != len(frames) * SAMPLES_PER_FRAME:
            raise InputError(f"{len(frames)} frames need {len(frames) * SAMPLES_PER_FRAME} samples at "
                             f"{AUDIO_SAMPLE_RATE} Hz, got {len(audio)}")
        audio = np.asarray(audio, np.float32).reshape(len(frames), SAMPLES_PER_FRAME)
        with self._lock:
            if self.closed:
                return
            self._units.extend(zip(np.array(frames), audio))  # a copy: the caller may reuse its buffers
            keep = self._max_units if self._wake is not None else min(self._max_units, round(
                (ATTACH_GRACE if self._clock() - self._born < ATTACH_GRACE else UNWATCHED_SECONDS) * FPS))
            overflow = len(self._units) - keep
            for _ in range(max(0, overflow)):
                self._units.popleft()
            if overflow > 0:
                self.dropped += overflow
                if self._wake is not None:
                    log.warning("WebRTC peer too slow: %d queued frames dropped", overflow)
        self._notify()

    def close(self, error: str | None = None) -> None:
        """The stream is over: what is queued still plays, then the tracks end; with an error (failed, deleted)
        they end now."""
        with self._lock:
            if self.closed:
                return
            self.closed, self.error = True, error
            if error is not None:
                self._units.clear()
        self._notify()

    # --- barge-in and the playout's side ----------------------------------------------------------------------------

    def interrupt(self) -> int:
        """Drop every queued unit (not played yet); returns how many."""
        with self._lock:
            count = len(self._units)
            self._units.clear()
            self.dropped += count
        return count

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._units)

    def take(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next unit (frame [H, W, 3], audio [640]), or None when none is queued."""
        with self._lock:
            return self._units.popleft() if self._units else None

    def attach(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """A peer's playout watches: set `event` (on `loop`) whenever a unit arrives or the stream closes."""
        with self._lock:
            self._wake = (loop, event)
        self._notify()

    def detach(self) -> None:
        with self._lock:
            self._wake = None

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            loop, event = wake
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass


class _QueueTrack(MediaStreamTrack):
    """A track whose frames its Playout puts in; the peer's sender calling recv() tells the playout it pulls."""

    def __init__(self, playout: "Playout"):
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.playout = playout

    async def recv(self):
        self.playout.begin(self)
        frame = await self.queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class _VideoTrack(_QueueTrack):
    kind = "video"


class _AudioTrack(_QueueTrack):
    kind = "audio"


class FrameClock:
    """A 25 Hz clock over an RtcSink: at tick k, emit(k, frame uint8 [H, W, 3], pcm int16 [640]) with the next unit,
    or with the last frame and silence when none is queued (counted in held_frames). start() waits for the first
    queued unit; the clock ends (end()) when the sink is closed and empty. Subclasses say where units go."""

    def __init__(self, sink: RtcSink):
        self.sink = sink
        self.frames_sent = self.held_frames = 0
        self.started_at: float | None = None  # time.perf_counter() of the first tick
        self._task: asyncio.Task | None = None
        self._last: np.ndarray | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self.sink.detach()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self.sink.attach(loop, wake)
        while not self.sink.queued:  # nothing to show before the first unit (a player shows its own placeholder)
            if self.sink.closed:
                return await self.end()
            wake.clear()
            if not self.sink.queued:
                await wake.wait()
        t0, k = loop.time(), 0
        self.started_at = time.perf_counter()
        while True:
            unit = self.sink.take()
            if unit is None and self.sink.closed:
                return await self.end()
            if unit is None:
                frame, audio = self._last, np.zeros(SAMPLES_PER_FRAME, np.float32)
                self.held_frames += 1
            else:
                frame, audio = unit
                self._last = frame
            await self.emit(k, frame, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
            self.frames_sent += 1
            k += 1
            await asyncio.sleep(max(0.0, t0 + k / FPS - loop.time()))

    async def emit(self, k: int, frame: np.ndarray, pcm: np.ndarray) -> None:
        raise NotImplementedError

    async def end(self) -> None:
        """The stream ended and everything queued went out."""


class Playout(FrameClock):
    """The clock of one peer: frame k to the video track (pts k / 25) and its samples as two 20 ms frames to the
    audio track (pts k x 640 / 16000). Starts once both of the peer's senders ask for media (a sender that started
    late would get a burst of queued packets, which the receiver's audio buffer then holds as extra delay for
    seconds)."""

    def __init__(self, sink: RtcSink):
        super().__init__(sink)
        self.video, self.audio = _VideoTrack(self), _AudioTrack(self)
        self._pulling: set = set()  # the tracks whose senders have asked for media

    def begin(self, track) -> None:
        self._pulling.add(track.kind)
        if len(self._pulling) == 2:
            self.start()

    async def stop(self) -> None:
        await super().stop()
        for track in (self.video, self.audio):
            track.stop()

    async def emit(self, k: int, frame: np.ndarray, pcm: np.ndarray) -> None:
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts, picture.time_base = k, Fraction(1, FPS)
        self.video.queue.put_nowait(picture)
        for part in range(SAMPLES_PER_FRAME // AUDIO_FRAME_SAMPLES):
            sound = av.AudioFrame.from_ndarray(pcm[None, part * AUDIO_FRAME_SAMPLES:(part + 1) * AUDIO_FRAME_SAMPLES],
                                               format="s16", layout="mono")
            sound.sample_rate = AUDIO_SAMPLE_RATE
            sound.pts = k * SAMPLES_PER_FRAME + part * AUDIO_FRAME_SAMPLES
            sound.time_base = Fraction(1, AUDIO_SAMPLE_RATE)
            self.audio.queue.put_nowait(sound)

    async def end(self) -> None:
        for track in (self.video, self.audio):
            track.queue.put_nowait(None)


def ice_servers_from_environment() -> list[dict]:
    """The STUN/TURN servers of $FLASHHEAD_ICE_SERVERS (JSON: [{"urls": ..., "username"?, "credential"?}]); [] when
    unset: host candidates only."""
    text = os.environ.get(ICE_SERVERS_ENV, "").strip()
    if not text:
        return []
    try:
        servers = json.loads(text)
        if not isinstance(servers, list) or not all(isinstance(s, dict) and "urls" in s and
                                                    set(s) <= {"urls", "username", "credential"} for s in servers):
            raise ValueError
    except ValueError:
        raise InputError(f'${ICE_SERVERS_ENV} must be a JSON list like [{{"urls": "stun:stun.example.org:3478"}}, '
                         f'{{"urls": "turn:turn.example.org", "username": "u", "credential": "p"}}], got '
                         f'{text[:80]!r}') from None
    return servers


_loopback_lock = threading.Lock()


def include_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 among its host candidates (it leaves loopback out; a browser on this machine where
    only `lo` exists has nothing else). Idempotent; affects every aiortc peer of this process."""
    with _loopback_lock:
        original = aioice.ice.get_host_addresses
        if getattr(original, "with_loopback", False):
            return

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            found = original(use_ipv4, use_ipv6)
            return (["127.0.0.1"] if use_ipv4 and "127.0.0.1" not in found else []) + found

        get_host_addresses.with_loopback = True
        aioice.ice.get_host_addresses = get_host_addresses


def check_offer(body: bytes) -> str:
    """The SDP of a JSON offer {"type": "offer", "sdp": "v=0..."} with an audio and a video section, else
    InputError naming what is wrong."""
    try:
        offer = json.loads(body)
    except ValueError:
        offer = None
    if not isinstance(offer, dict) or offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
        raise InputError('send JSON {"type": "offer", "sdp": "<the RTCPeerConnection\'s local description>"}')
    sdp = offer["sdp"]
    if not sdp.startswith("v=0"):
        raise InputError("the offer's sdp is not SDP (it must start with v=0)")
    kinds = {line.split()[0][2:] for line in sdp.splitlines() if line.startswith("m=") and line.split()}
    if not {"audio", "video"} <= kinds:
        raise InputError(f"the offer must ask for audio and video (add a recvonly transceiver for each, audio first), "
                         f"it has: {', '.join(sorted(kinds)) or 'no media'}")
    return sdp


class RtcPeer:
    """One browser's RTCPeerConnection receiving a session's stream. Closes itself when the connection fails, is
    closed by the browser, does not connect within connect_timeout, or the stream ends and has played."""

    def __init__(self, sink: RtcSink, ice_servers: list[dict], on_close=None, connect_timeout: float | None = None):
        include_loopback_candidates()
        self.sink, self.on_close = sink, on_close
        self.playout = Playout(sink)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers]))
        self.answer_sdp: str | None = None
        self.closed = asyncio.Event()
        self._closing = False
        self._watch: asyncio.Task | None = None
        self._connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def state(self) -> str:
        return self.pc.connectionState

    @classmethod
    async def answer(cls, sink: RtcSink, offer_sdp: str, ice_servers: list[dict] = (), **options) -> "RtcPeer":
        """A peer answering `offer_sdp` (InputError when aiortc cannot take it; the peer is closed then)."""
        peer = cls(sink, list(ice_servers), **options)
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            peer.pc.addTrack(peer.playout.audio)
            peer.pc.addTrack(peer.playout.video)
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        except Exception as e:  # aiortc raises ValueError, KeyError, InvalidStateError... on SDP it cannot take
            await peer.close()
            raise InputError(f"the WebRTC offer could not be answered ({type(e).__name__}: {e}): send the offer "
                             f"of a browser's RTCPeerConnection with an audio and a video transceiver") from None
        peer.answer_sdp = peer.pc.localDescription.sdp
        peer._watch = asyncio.get_running_loop().create_task(peer._watch_connect())
        return peer

    async def _watch_connect(self) -> None:
        try:
            await asyncio.wait_for(self._connected(), self._connect_timeout)
        except asyncio.TimeoutError:
            log.info("WebRTC peer did not connect in %.0f s: closed", self._connect_timeout)
            await self.close()
            return
        await self._ended()
        await self.close()

    async def _connected(self) -> None:
        while self.pc.connectionState != "connected":
            await asyncio.sleep(0.05)

    async def _ended(self) -> None:
        """The peer closed, or the stream ended (the sink closed) and everything queued has left."""
        while not (self.sink.closed and self.sink.queued == 0 and self.playout.video.queue.empty()):
            if self.closed.is_set():
                return
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the last packets on the wire

    async def _state_changed(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        """Stop the playout and the connection. Idempotent."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        try:
            await self.playout.stop()
            await self.pc.close()
        finally:
            self.closed.set()
            if self._watch is not None and self._watch is not asyncio.current_task():
                self._watch.cancel()
            if self.on_close is not None:
                self.on_close(self)

    def status(self) -> dict:
        return {"state": self.pc.connectionState, "queued_s": round(self.sink.queued / FPS, 3),
                "frames_sent": self.playout.frames_sent, "held_frames": self.playout.held_frames,
                "dropped_frames": self.sink.dropped, "stream_error": self.sink.error}


def session_sink(live) -> RtcSink:
    """The RtcSink among a live session's sinks (InputError when it was made without one)."""
    sink = next((s for s in live.sinks if isinstance(s, RtcSink)), None)
    if sink is None:
        raise InputError("this session streams over Media Source only (it was made without a WebRTC sink): play "
                         "its stream URL instead")
    return sink


class _RtcRoutes:
    """The WebRTC handlers over a `flashhead serve` server: at most one peer per session (on the session's RtcSink; a
    new offer replaces the peer), one offer per session and at most max_sessions being answered at once (an offer
    flood gets 503), each peer counted as a watcher of its session (`sockets`) while it lives: the idle reaper
    leaves a watched session alone, and frees it once the peer is gone."""

    def __init__(self, server, ice_servers: list[dict]):
        self.server, self.ice_servers = server, ice_servers
        self.peers: dict[str, RtcPeer] = {}
        self.negotiating: set[str] = set()  # the sessions whose offer is being answered

    async def config(self, request):
        return web.json_response({"iceServers": self.ice_servers}, headers={"Cache-Control": "no-store"})

    async def offer(self, request):
        served = self.server.session(request)
        limit = self.server.options.max_sessions
        if len(self.negotiating) >= limit or served.id in self.negotiating:
            raise ServerBusy("busy: an offer for this session (or as many offers as the server has sessions) is "
                             "being answered; send the offer again in a moment")
        self.negotiating.add(served.id)
        try:
            body = await request.content.read(MAX_OFFER_BYTES + 1)
            if len(body) > MAX_OFFER_BYTES:
                raise UploadTooLarge(f"the offer is larger than {MAX_OFFER_BYTES // 1024} KB: send a browser's "
                                     f"offer")
            sdp = check_offer(body)
            sink = session_sink(served.live)
            old = self.peers.pop(served.id, None)
            if old is not None:
                await old.close()
            peer = await RtcPeer.answer(sink, sdp, self.ice_servers)
            served.sockets += 1  # a watcher: the idle reaper leaves the session alone while the peer lives
            peer.on_close = self._closed_by(served)
            self.peers[served.id] = peer
        finally:
            self.negotiating.discard(served.id)
        return web.json_response({"type": "answer", "sdp": peer.answer_sdp}, headers={"Cache-Control": "no-store"})

    def _closed_by(self, served):
        def closed(peer: RtcPeer) -> None:
            if self.peers.get(served.id) is peer:
                del self.peers[served.id]
            served.sockets -= 1
            served.touch()

        return closed

    async def status(self, request):
        served = self.server.session(request)
        peer = self.peers.get(served.id)
        body = peer.status() if peer is not None else {"state": "none"}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def hang_up(self, request):
        served = self.server.session(request)
        peer = self.peers.get(served.id)
        if peer is not None:
            await peer.close()
        return web.json_response({"closed": peer is not None}, headers={"Cache-Control": "no-store"})

    async def interrupt(self, request):
        served = self.server.session(request)
        dropped = await asyncio.to_thread(served.live.interrupt)  # its sinks drop what they have not played
        return web.json_response({"interrupted": True, "dropped_speech_s": round(dropped, 3),
                                  **served.live.status()}, headers={"Cache-Control": "no-store"})

    async def close_all(self, app) -> None:
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())), return_exceptions=True)


def add_webrtc_routes(app, server, ice_servers: list[dict] | None = None) -> None:
    """Register the WebRTC routes (module docstring) of `server` (flashhead serve's, with session(request), options,
    and sessions with .id, .live (a LiveSession made with an RtcSink among its sinks), .sockets, .touch()) on `app`,
    and close every peer when the app stops. ice_servers:
    STUN/TURN for the server's and the page's peers (default: $FLASHHEAD_ICE_SERVERS, else none)."""
    routes = _RtcRoutes(server, ice_servers_from_environment() if ice_servers is None else ice_servers)
    app.on_shutdown.append(routes.close_all)
    router = app.router
    router.add_get("/api/rtc", routes.config)
    router.add_post("/api/sessions/{sid}/rtc", routes.offer)
    router.add_get("/api/sessions/{sid}/rtc", routes.status)
    router.add_delete("/api/sessions/{sid}/rtc", routes.hang_up)
    router.add_post("/api/sessions/{sid}/interrupt", routes.interrupt)
