"""`flashhead serve` under load (issue 24, deliver 2), on loopback with the tiny model: clients that create sessions,
stream speech at real time or at 100x real time, read their streams with the protocol's client, and vanish
mid-stream, for LOAD_SECONDS; then every session is reaped and the server's memory, threads and file descriptors
are back within stated bounds of the idle server's."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import threading
import time

import aiohttp
import numpy as np
import pytest
from test_serve import assets, pipeline, serve, session_form  # noqa: F401 (fixtures)

from flashhead_core.config import AUDIO_SAMPLE_RATE
from flashhead_core.live.client import StreamClient

CLIENTS = 6  # against max_sessions=4: some creates are answered "busy" and retried
LOAD_SECONDS = 45.0
SPEECH_SECONDS = 3.0
PIECE_SECONDS = 0.1
# Bounds after the load, against the idle server after one warm-up round of each kind of client (one run on a 2-core
# machine: RSS +3.4 MB, threads and descriptors exactly back). Memory in use is the RSS once glibc has handed its
# free heap back (malloc_trim): the allocator's high-water mark is not a leak.
RSS_TOLERANCE_MB = 30
FD_TOLERANCE = 0


def rss_mb() -> float:
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def resources() -> dict:
    """RSS in use (MB), Python threads (the event loop's executor pool left out: it grows to its size once), native
    threads (OS threads that are not Python's) and open file descriptors."""
    python = threading.enumerate()
    pool = sum(t.name.startswith("asyncio_") for t in python)
    return {"rss_mb": round(rss_mb(), 1), "python_threads": len(python) - pool,
            "native_threads": len(os.listdir("/proc/self/task")) - len(python), "fds": len(os.listdir("/proc/self/fd"))}


async def speak(socket, pcm: bytes, pace: float, stop_after: float | None = None) -> None:
    """Send `pcm` in PIECE_SECONDS pieces at `pace` x real time (stop early after `stop_after` seconds of speech);
    {"end": true} when it was all sent."""
    piece = 2 * round(PIECE_SECONDS * AUDIO_SAMPLE_RATE)
    started = time.monotonic()
    for i, offset in enumerate(range(0, len(pcm), piece)):
        if stop_after is not None and i * PIECE_SECONDS >= stop_after:
            return
        await asyncio.sleep(max(0.0, started + i * PIECE_SECONDS / pace - time.monotonic()))
        await socket.send_bytes(pcm[offset:offset + piece])
    await socket.send_json({"end": True})


async def one_session(client, face, pcm: bytes, kind: str, counts: collections.Counter) -> None:
    """One client's session of `kind`, over connections of its own: realtime or fast (100x) speech read to the
    stream's end (then deleted or left to the reaper), or vanish (speaks 1.5 s, reads the stream's start, drops every
    connection without a word)."""
    async with aiohttp.ClientSession(base_url=client.make_url("/")) as http:
        answer = await http.post("/api/sessions", data=session_form(face))
        if answer.status == 503:
            counts["busy"] += 1
            await asyncio.sleep(0.5)
            return
        assert answer.status == 201, await answer.text()
        created = await answer.json()
        counts[kind] += 1
        socket = await http.ws_connect(f"/api/sessions/{created['session']}/audio")
        if kind == "vanish":
            await speak(socket, pcm, 1.0, stop_after=1.5)
            assert await StreamClient(http, created["stream"]).init("video")
            return  # the session's connections drop with it: no end, no close handshake, no DELETE
        speaking = asyncio.ensure_future(speak(socket, pcm, 1.0 if kind == "realtime" else 100.0))
        segments = [segment async for segment in StreamClient(http, created["stream"]).segments()]
        await speaking
        await socket.close()
        assert segments and segments[-1].media_end == pytest.approx(SPEECH_SECONDS, abs=0.05)
        counts["segments"] += len(segments)
        if counts[kind] % 2:
            await http.delete(f"/api/sessions/{created['session']}")


@pytest.mark.slow  # LOAD_SECONDS of load and the reaping after it: about 70 s
def test_clients_streaming_and_vanishing_for_a_while_leave_the_server_as_it_was(pipeline, assets):
    face = assets["face"]
    pcm = (np.resize(assets["pcm"], round(SPEECH_SECONDS * AUDIO_SAMPLE_RATE))).tobytes()

    async def settle(server) -> float:
        """Wait for every session to be reaped; the seconds it took."""
        started = time.monotonic()
        while server.sessions or server.worker.sessions or server.registry.list():
            assert time.monotonic() - started < 60, f"{len(server.sessions)} sessions were never freed"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        return time.monotonic() - started

    async def scenario(client, server):
        counts = collections.Counter()
        for kind in ("realtime", "fast", "vanish"):  # warm-up: pools, codecs, allocator arenas
            await one_session(client, face, pcm, kind, counts)
        await settle(server)
        idle = resources()
        peak = collections.Counter()
        deadline = time.monotonic() + LOAD_SECONDS

        async def run_client(k: int) -> None:
            kinds = ("realtime", "fast", "vanish")
            i = k
            while time.monotonic() < deadline:
                await one_session(client, face, pcm, kinds[i % 3], counts)
                i += 1

        async def watch() -> None:
            while time.monotonic() < deadline:
                now = resources()
                for key, value in now.items():
                    peak[key] = max(peak[key], value)
                peak["sessions"] = max(peak["sessions"], len(server.sessions))
                await asyncio.sleep(1.0)

        load_started = time.monotonic()
        await asyncio.gather(watch(), *(run_client(k) for k in range(CLIENTS)))
        load_seconds = time.monotonic() - load_started
        reaped_in = await settle(server)
        return idle, dict(peak), resources(), counts, load_seconds, reaped_in

    idle, peak, after, counts, load_seconds, reaped_in = serve(pipeline, scenario, max_sessions=4, idle_timeout=1.0)
    print(f"\nload: {CLIENTS} clients for {load_seconds:.0f} s: {counts['realtime']} real-time, {counts['fast']} at "
          f"100x, {counts['vanish']} vanished mid-stream, {counts['busy']} creates answered busy, "
          f"{counts['segments']} segments read; at most {peak['sessions']} sessions at once")
    print(f"idle {idle}\npeak {peak}\nafter {after} (all sessions reaped {reaped_in:.1f} s after the load)")
    assert counts["realtime"] >= 3 and counts["fast"] >= 3 and counts["vanish"] >= 3
    assert after["python_threads"] == idle["python_threads"] and after["native_threads"] == idle["native_threads"]
    assert after["fds"] - idle["fds"] <= FD_TOLERANCE
    assert after["rss_mb"] - idle["rss_mb"] < RSS_TOLERANCE_MB
