"""WebRTC delivery (flashhead_core/serve/webrtc.py), peer to peer on loopback: an aiortc client in this process
receives what a sink is written, the way a browser would. Every candidate is 127.0.0.1 (aioice's host-address lookup
returns nothing else here), so no packet leaves loopback.

The sink is written "flash" units: a white frame whose 640 samples are a 1 kHz tone, among black silent ones. Frame
and audio of a flash leave at the same tick of the 25 Hz clock, so the client sees each white frame and its tone's
onset arrive together (within two audio packets plus the video decode); every unit arrives, in order. A sink that
runs dry holds the last frame with silence (the clock keeps going) and the next units are still in sync; an
interrupt drops what is queued. The routes of `flashhead serve`: bad offers (not JSON, not SDP, no video, SDP aiortc
cannot take), a wrong token, a foreign Origin and an offer flood are refused with a 4xx/503 and leave no peer,
thread or socket behind; repeated connect/vanish cycles leave RSS, threads and file descriptors where they were."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import aioice.ice
import numpy as np
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from flashhead_core.errors import InputError
from flashhead_core.serve import webrtc
from flashhead_core.pipeline import load_pipeline
from flashhead_core.serve.server import SERVER, ServeOptions, create_app
from flashhead_core.serve.webrtc import RtcPeer, RtcSink, check_offer
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech
from flashhead_core.tools.webrtc_bench import webrtc_client

SIZE = 64
CHUNK = 24  # frames per write, as a Lite chunk
FLASH_AT = 10  # the flash frame of each chunk
SYNC_BUDGET_S = 0.06  # two 20 ms audio packets plus a frame's decode on a busy machine


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """aioice sees no interface but loopback (for the client and the server peer alike)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [])
    webrtc.include_loopback_candidates()


def chunk(flash: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CHUNK frames uint8 [CHUNK, SIZE, SIZE, 3] and their samples float32 [CHUNK x 640, 1]: black and silent, but
    frame FLASH_AT white with a 1 kHz tone."""
    frames = np.zeros((CHUNK, SIZE, SIZE, 3), np.uint8)
    audio = np.zeros((CHUNK, SAMPLES_PER_FRAME), np.float32)
    if flash:
        frames[FLASH_AT] = 255
        audio[FLASH_AT] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(SAMPLES_PER_FRAME) / AUDIO_SAMPLE_RATE)
    return frames, audio.reshape(-1, 1)


async def receive(sink: RtcSink, stop_after: float = 30.0, on_video=None) -> dict:
    """An aiortc client (audio transceiver first, as a browser page adds them) answered by an RtcPeer on `sink`;
    records (arrival time, luma) per video frame and (arrival time, RMS) per audio frame until the tracks end."""
    client = RTCPeerConnection()
    client.addTransceiver("audio", direction="recvonly")
    client.addTransceiver("video", direction="recvonly")
    got = {"video": [], "audio": []}
    tasks = []

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            if track.kind == "video":
                got["video"].append((now, float(frame.to_ndarray(format="gray").mean())))
                if on_video is not None:
                    on_video(len(got["video"]))
            else:
                samples = frame.to_ndarray().astype(np.float64) / 32768
                got["audio"].append((now, float(np.sqrt(np.mean(samples ** 2)))))

    client.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    await client.setLocalDescription(await client.createOffer())
    peer = await RtcPeer.answer(sink, client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(sdp=peer.answer_sdp, type="answer"))
    try:
        await asyncio.wait_for(peer.closed.wait(), stop_after)
    except asyncio.TimeoutError:
        pass
    got["peer"] = peer.status()
    await peer.close()
    await client.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


def flashes(records: list[tuple[float, float]], threshold: float) -> list[float]:
    """Arrival times of the first record of each run above `threshold`."""
    times, above = [], False
    for at, level in records:
        if level > threshold and not above:
            times.append(at)
        above = level > threshold
    return times


def write_later(sink: RtcSink, parts: list[tuple[float, tuple]]) -> threading.Thread:
    """Write (delay, chunk) parts from another thread (the generation worker's side), then close the sink."""
    def run():
        sink.start(SIZE, SIZE, FPS, AUDIO_SAMPLE_RATE, 1)
        for delay, (frames, audio) in parts:
            time.sleep(delay)
            sink.write(frames, audio)
        sink.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_each_frame_arrives_with_its_audio():
    sink = RtcSink()
    writer = write_later(sink, [(0.0, chunk()), (0.0, chunk()), (0.0, chunk())])
    got = asyncio.run(receive(sink))
    writer.join()
    video, audio = flashes(got["video"], 128), flashes(got["audio"], 0.1)
    offsets = [v - a for v, a in zip(video, audio)]
    print(f"\nframes {len(got['video'])}, audio packets {len(got['audio'])}, flash offsets (video - audio) "
          f"{[round(1000 * o, 1) for o in offsets]} ms, {got['peer']}")
    assert len(video) == len(audio) == 3, (video, audio)
    assert all(abs(o) <= SYNC_BUDGET_S for o in offsets), offsets
    assert len(got["video"]) >= 3 * CHUNK - 2 and got["peer"]["held_frames"] == 0, got["peer"]
    # 25 frames a second: the flashes are a chunk apart on the wire too
    assert all(abs(b - a - CHUNK / FPS) < 0.1 for a, b in zip(video, video[1:])), video


def test_a_dry_sink_holds_the_picture_and_stays_in_sync():
    """Generation slower than real time: a second's gap between chunks is filled with the last frame and silence,
    and the flash after it is still in sync."""
    sink = RtcSink()
    writer = write_later(sink, [(0.0, chunk()), (CHUNK / FPS + 1.0, chunk())])
    got = asyncio.run(receive(sink))
    writer.join()
    video, audio = flashes(got["video"], 128), flashes(got["audio"], 0.1)
    offsets = [round(1000 * (v - a), 1) for v, a in zip(video, audio)]
    print(f"\nheld {got['peer']['held_frames']} frames; offsets {offsets} ms")
    assert got["peer"]["held_frames"] >= 0.8 * FPS, got["peer"]
    assert len(video) == len(audio) == 2 and all(abs(v - a) <= SYNC_BUDGET_S for v, a in zip(video, audio))


def test_interrupt_drops_what_is_queued():
    sink = RtcSink()
    cut = {}

    def on_video(count):
        if count == 5 and not cut:
            cut["dropped"] = sink.interrupt()

    writer = write_later(sink, [(0.0, chunk()), (0.0, chunk()), (0.0, chunk())])
    writer.join()  # all three chunks queued before the peer plays any
    got = asyncio.run(receive(sink, on_video=on_video))
    print(f"\ndropped {cut}, received {len(got['video'])} frames")
    assert cut["dropped"] >= 3 * CHUNK - 15, cut
    assert len(got["video"]) <= 15 and not flashes(got["video"], 128)  # the first flash (frame 10) was cut


def test_sink_checks_what_it_is_given():
    sink = RtcSink()
    with pytest.raises(InputError, match="25 fps video with mono 16000 Hz"):
        sink.start(SIZE, SIZE, FPS, 44100, 2)
    sink.start(SIZE, SIZE, FPS, AUDIO_SAMPLE_RATE, 1)
    frames, audio = chunk()
    with pytest.raises(InputError, match="24 frames need 15360 samples"):
        sink.write(frames, audio[:-1])
    small = RtcSink(max_queued_seconds=1.0)
    small.write(frames, audio)
    small.write(frames, audio)
    assert small.queued == FPS and small.dropped == 2 * CHUNK - FPS


@pytest.mark.parametrize("body, message", [
    (b"not json", "send JSON"),
    (b'{"type": "answer", "sdp": "v=0"}', "send JSON"),
    (b'{"type": "offer", "sdp": "hello"}', "not SDP"),
    (b'{"type": "offer", "sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n"}', "audio and video"),
])
def test_offers_are_checked(body, message):
    with pytest.raises(InputError, match=message):
        check_offer(body)


def test_an_offer_aiortc_cannot_take_is_refused_and_closed():
    async def main():
        sdp = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" \
              "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        with pytest.raises(InputError, match="could not be answered"):
            await RtcPeer.answer(RtcSink(), sdp)

    threads = threading.active_count()
    asyncio.run(main())
    assert threading.active_count() <= threads + 1  # (asyncio's default executor may keep one)


# --- through `flashhead serve` (the tiny random Lite model) -----------------------------------------------------------

SERVE_SIZE = 64
TOKEN = "webrtc-test-token-123"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return load_pipeline(write_tiny_checkpoint(tmp_path_factory.mktemp("lite"), "lite"), variant="lite")


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> Path:
    return synthetic_portrait(tmp_path_factory.mktemp("rtc") / "face.png", 96)


def serve(pipeline, scenario, **options):
    """`await scenario(client, server)` against a fresh `flashhead serve` app with a token, in a new event loop."""
    async def main():
        app = create_app(pipeline, ServeOptions(width=SERVE_SIZE, height=SERVE_SIZE, token=TOKEN, **options))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await scenario(client, app[SERVER])

    return asyncio.run(main())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def new_session(client, portrait: Path, **fields) -> str:
    form = FormData()
    form.add_field("portrait", portrait.read_bytes(), filename="face.png", content_type="image/png")
    for name, value in fields.items():
        form.add_field(name, str(value))
    answer = await client.post("/api/sessions", data=form, headers=AUTH)
    assert answer.status == 201, await answer.text()
    return (await answer.json())["session"]


async def offer(client, sid: str, headers=AUTH):
    """An aiortc client's offer POSTed to the session: (client peer connection, answer response, received)."""
    peer = RTCPeerConnection()
    peer.addTransceiver("audio", direction="recvonly")
    peer.addTransceiver("video", direction="recvonly")
    received = {"video": [], "audio": []}

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = None if track.kind == "video" else frame.to_ndarray().astype(np.float64) / 32768
            received[track.kind].append((time.perf_counter(), None if samples is None else
                                         float(np.sqrt(np.mean(samples ** 2)))))

    peer.on("track", lambda track: received.setdefault("tasks", []).append(asyncio.ensure_future(consume(track))))
    await peer.setLocalDescription(await peer.createOffer())
    answer = await client.post(f"/api/sessions/{sid}/rtc", headers=headers,
                               json={"type": "offer", "sdp": peer.localDescription.sdp})
    if answer.status == 200:
        await peer.setRemoteDescription(RTCSessionDescription(**await answer.json()))
    return peer, answer, received


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_serve_plays_a_session_over_webrtc_with_idle_and_barge_in(pipeline, portrait):
    """An idle session (idle=1) over WebRTC: generated frames flow before any speech (the avatar keeps moving); 2 s
    of speech pushed: its sound arrives; pushed again and interrupted at once: the sound stops within a chunk (plus
    the chunk being generated), and the idle stream goes on at 25 fps, before, between and after."""
    speech = (0.4 * np.sin(2 * np.pi * 220 * np.arange(2 * AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE) * 32767)
    pcm = speech.astype("<i2").tobytes()

    async def scenario(client, server):
        sid = await new_session(client, portrait, idle=1)
        peer, answer, received = await offer(client, sid)
        assert answer.status == 200, await answer.text()
        await until(lambda: len(received["video"]) >= 2 * FPS, 60, "two seconds of idle video")
        idle_rms = max(r for _, r in received["audio"][-50:])
        pushed = await client.post(f"/api/sessions/{sid}/audio?rate={AUDIO_SAMPLE_RATE}&flush=1", data=pcm,
                                   headers=AUTH)
        assert pushed.status == 200, await pushed.text()
        await until(lambda: any(r > 0.1 for _, r in received["audio"][-25:]), 60, "the speech to be heard")
        heard_at = len(received["audio"])
        await client.post(f"/api/sessions/{sid}/audio?rate={AUDIO_SAMPLE_RATE}&flush=1", data=pcm, headers=AUTH)
        cut = await client.post(f"/api/sessions/{sid}/interrupt", headers=AUTH)
        cut_body, cut_at = await cut.json(), len(received["audio"])
        await asyncio.sleep(4.0)
        status = await (await client.get(f"/api/sessions/{sid}/rtc", headers=AUTH)).json()
        await peer.close()
        await asyncio.gather(*received.get("tasks", []), return_exceptions=True)
        return received, idle_rms, heard_at, cut.status, cut_body, cut_at, status

    received, idle_rms, heard_at, cut_status, cut_body, cut_at, status = serve(pipeline, scenario)
    loud = [i for i, (_, r) in enumerate(received["audio"]) if r > 0.1]
    after_cut = [i for i in loud if i > cut_at]
    print(f"\nidle audio RMS {idle_rms:.4f}; loud 20 ms packets {len(loud)} (first at {loud[0]}), after the "
          f"interrupt {len(after_cut)} (last {after_cut[-1] - cut_at if after_cut else None} packets after it); "
          f"interrupt answer {cut_body}; peer {status}")
    assert idle_rms < 0.01  # idle is silent: the idle track is silence
    assert cut_status == 200 and cut_body["interrupted"] and cut_body["dropped_speech_s"] > 0, cut_body
    # what was queued when the interrupt came is not heard: at most the chunk playing and the one being generated
    assert len(after_cut) <= 2 * 0.96 * 50, len(after_cut)
    # the clock never stops; idle chunks keep it fed with generated frames (a hold is the last frame repeated while
    # the tiny model on a shared CPU catches up)
    assert status["state"] == "connected" and status["held_frames"] <= 0.4 * status["frames_sent"], status


def test_bad_signalling_is_refused_and_leaves_nothing(pipeline, portrait):
    """Malformed offers (not JSON, not SDP, no video, SDP aiortc cannot take), a wrong token, a foreign Origin,
    an unknown session, an offer flood (16 at once on one session): 4xx/503 with the reason, at most one peer per
    session left, every peer closed with the app; threads back where they were."""
    valid_sdp = {}

    async def scenario(client, server):
        sid = await new_session(client, portrait)
        client_peer = RTCPeerConnection()
        client_peer.addTransceiver("audio", direction="recvonly")
        client_peer.addTransceiver("video", direction="recvonly")
        await client_peer.setLocalDescription(await client_peer.createOffer())
        valid_sdp["sdp"] = client_peer.localDescription.sdp
        await client_peer.close()
        url = f"/api/sessions/{sid}/rtc"
        bad = {"not json": b"{nope", "not sdp": b'{"type": "offer", "sdp": "hello"}',
               "no video": json.dumps({"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}),
               "unanswerable": json.dumps({"type": "offer", "sdp": "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\n"
                                           "t=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 "
                                           "UDP/TLS/RTP/SAVPF 96\r\n"}),
               "too large": b"x" * (webrtc.MAX_OFFER_BYTES + 10)}
        answers = {}
        for name, body in bad.items():
            answer = await client.post(url, data=body, headers=AUTH)
            answers[name] = (answer.status, (await answer.json())["error"][:70])
        good = json.dumps({"type": "offer", "sdp": valid_sdp["sdp"]})
        for name, headers, path in (("no token", {}, url), ("wrong token", {"Authorization": "Bearer wrong"}, url),
                                    ("foreign origin", {**AUTH, "Origin": "http://evil.example"}, url),
                                    ("unknown session", AUTH, "/api/sessions/nope/rtc")):
            answer = await client.post(path, data=good, headers=headers)
            answers[name] = (answer.status, (await answer.text())[:70])
        flood = await asyncio.gather(*(client.post(url, data=good, headers=AUTH) for _ in range(16)))
        answers["flood"] = sorted(a.status for a in flood)
        served = server.sessions[sid]
        return answers, served.sockets

    threads = threading.active_count()
    answers, sockets = serve(pipeline, scenario)
    gc.collect()
    print("\n" + json.dumps(answers))
    assert {k: v[0] for k, v in answers.items() if k != "flood"} == {
        "not json": 400, "not sdp": 400, "no video": 400, "unanswerable": 400, "too large": 413, "no token": 401,
        "wrong token": 401, "foreign origin": 403, "unknown session": 404}, answers
    assert "could not be answered" in answers["unanswerable"][1]
    assert set(answers["flood"]) <= {200, 503} and 200 in answers["flood"], answers["flood"]
    assert sockets == 1  # one peer watches the session however many offers came
    assert threading.active_count() <= threads + 1, threading.enumerate()


def _rss_mb() -> float:
    """Resident memory in MB after glibc hands its free heap back (what is in use, not the allocator's peak)."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _resources() -> dict:
    gc.collect()
    return {"rss_mb": round(_rss_mb(), 1), "threads": len(os.listdir("/proc/self/task")),
            "fds": len(os.listdir("/proc/self/fd"))}


CYCLES, WARMUP = 12, 3
RSS_TOLERANCE_MB = 25.0


@pytest.mark.slow
def test_peers_that_vanish_or_never_connect_are_freed(pipeline, portrait, monkeypatch):
    """Cycles of three ends, on one idle session: a peer that vanishes (its ICE transport stops without a word:
    consent freshness, shortened here to 0.2 s x 3, finds it gone), a peer that never completes ICE (the answer is
    never applied: closed after the connect timeout, 1 s here) and a peer that hangs up (DELETE). Each time the
    session's watcher count returns to 0; after the warm-up, RSS, threads and file descriptors stay where they
    were."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    monkeypatch.setattr(webrtc, "CONNECT_TIMEOUT", 1.0)

    async def scenario(client, server):
        sid = await new_session(client, portrait, idle=1)
        served = server.sessions[sid]
        samples = []
        for cycle in range(WARMUP + CYCLES):
            end = ("vanish", "never", "hang up")[cycle % 3]
            peer, answer, received = await offer(client, sid)
            assert answer.status == 200, await answer.text()
            if end == "never":  # the client goes away before its ICE starts: the server's peer never connects
                await peer.close()
            else:
                await until(lambda: len(received["video"]) >= 3, 30, "frames")
            if end == "vanish":
                await peer.getTransceivers()[0].receiver.transport.transport.stop()
            elif end == "hang up":
                answer = await client.delete(f"/api/sessions/{sid}/rtc", headers=AUTH)
                assert (await answer.json())["closed"]
            await until(lambda: served.sockets == 0, 20, f"the server to free the peer ({end})")
            await peer.close()
            for task in received.get("tasks", []):  # (a receiver that never started never ends its track)
                task.cancel()
            await asyncio.gather(*received.get("tasks", []), return_exceptions=True)
            if cycle == WARMUP - 1 or cycle == WARMUP + CYCLES - 1:
                samples.append(_resources())
        status = await (await client.get(f"/api/sessions/{sid}/rtc", headers=AUTH)).json()
        return samples, status

    (before, after), status = serve(pipeline, scenario)
    print(f"\nafter {WARMUP} warm-up cycles {before}, after {CYCLES} more {after}; {status}")
    assert status == {"state": "none"}
    assert after["threads"] <= before["threads"] + 2 and after["fds"] <= before["fds"] + 4, (before, after)
    assert after["rss_mb"] - before["rss_mb"] < RSS_TOLERANCE_MB, (before, after)


def test_bench_webrtc_client_measures_a_session(pipeline, portrait):
    """flashhead_core/tools/webrtc_bench.py (the WebRTC mode of `flashhead bench live`) on 3 s of speech pushed at
    once: every frame and its audio received, the figures present and plausible."""
    speech = (np.clip(synthetic_speech(3.0), -1, 1) * 32767).astype("<i2").tobytes()
    args = argparse.Namespace(piece_ms=20.0, pace="fast")

    async def scenario(client, server):
        sid = await new_session(client, portrait)
        client._session.headers.update(AUTH)
        return await webrtc_client(client, {"session": sid}, speech, args)

    figures = serve(pipeline, scenario)
    print(f"\n{figures}")
    assert figures["frames"] >= round(3.0 * FPS) - 2 and abs(figures["audio_s"] - figures["frames"] / FPS) < 0.2
    assert 0 < figures["first_frame_s"] < 30 and 0 < figures["mouth_to_ear_s"] < 30 and figures["rtf"] > 0


# --- in Chromium ------------------------------------------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("FLASHHEAD_CHROMIUM", "/usr/bin/chromium"))
BROWSER_SECONDS = 32.0
SETTLED_AFTER_S = 22.0  # the offset at the tap settles over the first 15-25 s (Chromium adjusts in small steps)
BROWSER_SYNC_S = 0.08  # video is quantised to 60 Hz repaints, the headless audio output latency is notional


def loopback_namespace(command: list[str]) -> list[str]:
    """`command` in a new network namespace where only `lo` exists (root: CI runs as root), so no packet can leave
    loopback whatever candidates the browser gathers."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.fail("the WebRTC browser test runs in a loopback-only network namespace: it needs root, unshare "
                    "(util-linux) and ip (iproute2)")
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def content_offsets(report: dict) -> tuple[list[float], list[float], list[float]]:
    """(flash display times, tone onsets heard, display - heard per flash) in ms: frames are
    [expectedDisplayTime, luma]; audio blocks [context frame, RMS] placed on the performance clock through the
    getOutputTimestamp pair nearest in context time."""
    frames, blocks, clock = (np.asarray(report[k], np.float64) for k in ("frames", "blocks", "clock"))
    shown = flashes([(t, luma) for t, luma in frames], 128)
    context, performance = clock[np.argsort(clock[:, 0])].T
    at = blocks[:, 0] / report["sampleRate"]
    nearest = np.clip(np.searchsorted(context, at), 0, len(context) - 1)
    heard = flashes(list(zip(performance[nearest] + 1000 * (at - context[nearest]), blocks[:, 1])), 0.05)
    return shown, heard, [v - min(heard, key=lambda a: abs(a - v)) for v in shown]


@pytest.mark.slow
def test_chromium_plays_each_frame_with_its_audio(tmp_path):
    """The stream of the WebRTC routes in headless Chromium (tests/drivers/webrtc_browser.py): a flash frame per
    chunk with its tone; the frame's display time against the tone's onset at the audio output, per flash."""
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set FLASHHEAD_CHROMIUM)")
    driver = Path(__file__).parent / "drivers" / "webrtc_browser.py"
    result = subprocess.run(loopback_namespace([sys.executable, str(driver), "--seconds", str(BROWSER_SECONDS),
                                                "--chromium", str(CHROMIUM)]),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    shown, heard, offsets = content_offsets(report)
    start = report["firstFrameAt"]
    settled = [o for v, o in zip(shown, offsets) if v - start > 1000 * SETTLED_AFTER_S]
    latency = report["outputLatency"] * 1000
    numbers = {"answer_ms": round(report["answerAt"] - report["offerAt"], 1),
               "connected_after_answer_ms": round(report["connectedAt"] - report["answerAt"], 1),
               "first_frame_after_answer_ms": round(report["firstFrameAt"] - report["answerAt"], 1),
               "offsets_ms": [round(o, 1) for o in offsets], "settled_median_ms": round(float(np.median(settled)), 1),
               "output_latency_ms": latency, "stats": report["stats"]}
    print("\n" + json.dumps(numbers))
    assert not report["console_errors"] and not report["errors"], report["console_errors"] + report["errors"]
    assert report["answerStatus"] == 200
    chunks = int(BROWSER_SECONDS * FPS / CHUNK)
    # every tone heard; a flash frame now and then not presented (a busy compositor skips a frame: all decoded)
    assert len(heard) == chunks and len(shown) >= 0.8 * chunks, (len(shown), len(heard))
    assert report["stats"]["video"]["framesDecoded"] >= chunks * CHUNK - 2
    assert report["stats"]["video"]["packetsLost"] == 0 and report["stats"]["audio"]["packetsLost"] == 0
    assert len(settled) >= 4 and all(abs(o) <= 1000 * BROWSER_SYNC_S for o in settled), numbers


def heard_blocks(report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(performance.now() ms at the output, RMS) per recorded 128-sample block of the page's received audio."""
    blocks, clock = np.asarray(report["blocks"], np.float64), np.asarray(report["clock"], np.float64)
    context, performance = clock[np.argsort(clock[:, 0])].T
    at = blocks[:, 0] / report["sampleRate"]
    nearest = np.clip(np.searchsorted(context, at), 0, len(context) - 1)
    return performance[nearest] + 1000 * (at - context[nearest]), blocks[:, 1]


@pytest.mark.slow
def test_the_serve_page_plays_over_webrtc_with_idle_and_barge_in(portrait):
    """`flashhead serve --tiny` and its page in Chromium (tests/drivers/webrtc_browser.py --serve-page): idle mode,
    a text-to-speech program pushing an utterance in real time after 3 s of idle, then a 3 s answer at once,
    interrupted while it plays. The page plays over WebRTC (not the fallback), frames are presented from before
    the first word (idle), the speech is heard (mouth-to-ear measured from the first byte pushed), the gap after it
    is silent while frames go on, and the sound stops within two chunks of the Interrupt click (the chunk playing
    and the one being generated)."""
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set FLASHHEAD_CHROMIUM)")
    driver = Path(__file__).parent / "drivers" / "webrtc_browser.py"
    result = subprocess.run(loopback_namespace([sys.executable, str(driver), "--serve-page", "--portrait",
                                                str(portrait), "--chromium", str(CHROMIUM)]),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    heard_at, rms = heard_blocks(report)
    loud = heard_at[rms > 0.05]
    first_word = loud[loud > report["first_push_at"]][0]
    after_cut = loud[loud > report["interrupt_at"]]
    numbers = {"transport": report["transport"], "fallback": report["fallback"],
               "idle_frames_before_speech": report["firstFrameAt"] < report["first_push_at"],
               "mouth_to_ear_ms": round(first_word - report["first_push_at"], 1),
               "heard_after_interrupt_ms": round(after_cut[-1] - report["interrupt_at"], 1) if len(after_cut) else 0,
               "frames_presented": report["framesPresented"], "stats": report["stats"], "status": report["status"],
               "server": {k: report["server"][k] for k in ("rtf", "first_frame_latency_s", "chunks", "idle")}}
    print("\n" + json.dumps(numbers))
    assert not report["console_errors"] and report["error"] is None, (report["console_errors"], report["error"])
    assert report["transport"] == "webrtc" and report["fallback"] is None and report["player"]["error"] is None
    assert numbers["idle_frames_before_speech"] and report["server"]["idle"]
    # the gap between the utterances: silent, while frames went on (idle chunks)
    gap = (heard_at > first_word + 2600) & (heard_at < report["second_push_at"])
    assert gap.sum() > 100 and rms[gap].max() < 0.01, rms[gap].max()
    chunk_ms = 960
    assert numbers["heard_after_interrupt_ms"] <= 2 * chunk_ms + 300, numbers
    assert report["stats"]["video"]["packetsLost"] == 0 and report["stats"]["video"]["framesDecoded"] > 10 * FPS
