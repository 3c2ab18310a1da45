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

import asyncio
import gc
import os
import threading
import time

import aioice.ice
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME
from flashhead_core.errors import InputError
from flashhead_core.serve import webrtc
from flashhead_core.serve.webrtc import Playout, RtcPeer, RtcSink, check_offer

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
    print(f"\nheld {got['peer']['held_frames']} frames; offsets {[round(1000 * (v - a), 1) for v, a in zip(video, audio)]}")
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
