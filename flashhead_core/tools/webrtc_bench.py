"""`flashhead bench live --transport webrtc`: a live session received over WebRTC, measured at the receiver.

The client of flashhead_core/tools/live_bench.py (same app, sessions, speech and pacing) with the stream received
over WebRTC (an aiortc peer in this process, offered as the page does) instead of Media Source segments. Reported
per session:

    first_frame_s     first PCM byte sent -> first video frame decoded by the receiver
    mouth_to_ear_s    the first loud sample of the speech sent -> the first loud audio packet received (at real-time
                      pace; with --pace fast, from the first byte)
    rtf               the server's generation seconds per second of video
    behind_s          median / p95 / max of the status' behind_s while the speech streams
    frames, held_frames, audio_s   video frames received, frames the server repeated while generation was behind
                      (GET .../rtc), seconds of audio received
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from ..config import AUDIO_SAMPLE_RATE, FPS
from ..serve.webrtc import include_loopback_candidates

LOUD = 0.02  # RMS of a 20 ms packet (or the speech sent) that counts as sound


async def webrtc_client(client, created: dict, speech: bytes, args) -> dict:
    """Offer, push the speech over the audio socket, receive until the peer ends; the module docstring's figures."""
    include_loopback_candidates()
    sid = created["session"]
    peer = RTCPeerConnection()
    peer.addTransceiver("audio", direction="recvonly")
    peer.addTransceiver("video", direction="recvonly")
    got = {"video": [], "audio": []}  # arrival times; (arrival, RMS)
    tasks = []

    async def receive(track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                got["video"].append(time.perf_counter())
            else:
                got["audio"].append((time.perf_counter(), float(np.sqrt(np.mean((frame.to_ndarray() / 32768) ** 2)))))

    peer.on("track", lambda track: tasks.append(asyncio.ensure_future(receive(track))))
    await peer.setLocalDescription(await peer.createOffer())
    answer = await client.post(f"/api/sessions/{sid}/rtc", json={"type": "offer", "sdp": peer.localDescription.sdp})
    await peer.setRemoteDescription(RTCSessionDescription(**await answer.json()))
    while peer.connectionState != "connected":
        await asyncio.sleep(0.01)

    samples = np.frombuffer(speech, "<i2").astype(np.float64) / 32768
    windows = samples[: len(samples) // 320 * 320].reshape(-1, 320)
    first_loud = int(np.argmax(np.sqrt((windows ** 2).mean(axis=1)) > LOUD)) * 320 / AUDIO_SAMPLE_RATE
    piece = 2 * round(args.piece_ms / 1000 * AUDIO_SAMPLE_RATE)
    socket = await client.ws_connect(f"/api/sessions/{sid}/audio?rate={AUDIO_SAMPLE_RATE}")
    behind, started = [], time.perf_counter()
    for i, offset in enumerate(range(0, len(speech), piece)):
        if args.pace == "realtime":
            await asyncio.sleep(max(0.0, started + i * args.piece_ms / 1000 - time.perf_counter()))
        await socket.send_bytes(speech[offset:offset + piece])
    await socket.send_json({"end": True})
    async for message in socket:
        status = message.json()
        if status.get("type") == "status":
            behind.append(status["behind_s"])
            if status["state"] == "ended":
                break
    rtc = await (await client.get(f"/api/sessions/{sid}/rtc")).json()
    while (await (await client.get(f"/api/sessions/{sid}/rtc")).json())["state"] not in ("none", "closed"):
        await asyncio.sleep(0.2)  # the peer closes itself once everything queued has played
    status = await (await client.get(f"/api/sessions/{sid}/status")).json()
    await socket.close()
    await peer.close()
    for task in tasks:
        task.cancel()
    loud = [at for at, rms in got["audio"] if rms > LOUD]
    spoken = started + (first_loud if args.pace == "realtime" else 0.0)
    return {"first_frame_s": round(got["video"][0] - started, 3) if got["video"] else None,
            "mouth_to_ear_s": round(loud[0] - spoken, 3) if loud else None, "rtf": status["rtf"],
            "behind_s": {name: round(float(f(behind)), 3) for name, f in
                         (("median", np.median), ("p95", lambda x: np.percentile(x, 95)), ("max", np.max))},
            "frames": len(got["video"]), "video_s": round(len(got["video"]) / FPS, 3),
            "held_frames": rtc.get("held_frames"),
            "audio_s": round(len(got["audio"]) * 0.02, 2)}
