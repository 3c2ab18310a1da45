#!/usr/bin/env python3
"""A WebRTC client of examples/pipecat_bot.py: run inside a loopback-only network namespace (tests/
test_pipecat_service.py starts it with `unshare -n`). Starts the bot (--tiny) on a free port, offers as its page
does (audio transceiver first), and records per received audio packet its RMS and the video frames received:
through the greeting, then a long line (POST /say) interrupted after 2.5 s (POST /interrupt). Prints one JSON line:
{"greeting": {video frames, loud packets, packets}, "interrupted_at": packet index, "audio": [RMS per packet],
"video_frames": total}."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import aioice.ice
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from flashhead_core.serve.webrtc import include_loopback_candidates  # noqa: E402

LONG_LINE = "This is a rather long sentence, so that it can be interrupted in the middle of what it says."


async def talk(port: int) -> dict:
    peer = RTCPeerConnection()
    peer.addTransceiver("audio", direction="recvonly")
    peer.addTransceiver("video", direction="recvonly")
    got = {"video_frames": 0, "audio": []}
    tasks = []

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                got["video_frames"] += 1
            else:
                got["audio"].append(float(np.sqrt(np.mean((frame.to_ndarray() / 32768) ** 2))))

    peer.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    await peer.setLocalDescription(await peer.createOffer())
    async with aiohttp.ClientSession() as http:
        answer = await http.post(f"http://127.0.0.1:{port}/offer", json={"sdp": peer.localDescription.sdp,
                                                                          "type": "offer"})
        body = await answer.json()
        await peer.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await asyncio.sleep(8)
        got["greeting"] = {"video_frames": got["video_frames"], "packets": len(got["audio"]),
                           "loud_packets": sum(a > 0.02 for a in got["audio"])}
        await http.post(f"http://127.0.0.1:{port}/say", json={"text": LONG_LINE})
        await asyncio.sleep(2.5)
        got["interrupted_at"] = len(got["audio"])
        await http.post(f"http://127.0.0.1:{port}/interrupt", json={})
        await asyncio.sleep(4)
    await peer.close()
    for task in tasks:
        task.cancel()
    return got


def main() -> int:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: []  # loopback only (then 127.0.0.1 is added)
    include_loopback_candidates()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bot = subprocess.Popen([sys.executable, str(REPO / "examples" / "pipecat_bot.py"), "--tiny", "--port", str(port)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if "open http" not in bot.stdout.readline():
            print(bot.stderr.read()[-3000:], file=sys.stderr)
            return 2
        time.sleep(1.0)
        print(json.dumps(asyncio.run(talk(port))))
        return 0
    finally:
        bot.terminate()
        try:
            bot.wait(30)
        except subprocess.TimeoutExpired:
            bot.kill()


if __name__ == "__main__":
    sys.exit(main())
