"""`flashhead bench live`: the live server measured from its clients, in one process.

The real `flashhead serve` app (aiohttp's test server on a loopback port) over a tiny random-weight checkpoint (or
full-size random models with --full-size, for a GPU). Each of --sessions clients creates a session with a synthetic
portrait, pushes --seconds of synthetic speech over the audio WebSocket as s16le PCM pieces of --piece-ms, either
at real time (--pace realtime: as a microphone or a TTS reading aloud) or all at once (--pace fast), and reads the
stream as the page's player does (each segment's video and audio, with their start headers). Reported per session:

    first_segment_s   first PCM byte sent -> first segment's video received (what the viewer waits for)
    rtf               the server's generation seconds per second of video (the mean over its last chunks)
    wall_rtf          wall seconds from the first PCM byte sent to the last segment received, per second of video
                      (with --pace fast the speed the stream is generated at, queueing behind other sessions
                      included; at real time at least 1)
    behind_s          how far the stream lagged behind the speech sent (status behind_s, sampled twice a second
                      while it changes): median, 95th percentile, max
    latency_s         per segment, its arrival - the moment the last sample of its speech was sent: median, p95, max
    av_start_ms       per segment, video start - audio start (the AAC encoder's delay): first minute, last minute, max
    end_drift_ms      at the end, |video media end - audio media end| (audio end: last segment's start + duration)

--scheduling batched, round-robin or both (one after the other, same model, same speech): the server's generation
worker (serve/scheduler.py). Per run also aggregate_fps: the video frames of all sessions per wall second, from the
first PCM byte to the last segment.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import AUDIO_SAMPLE_RATE, FPS, PRESETS, parse_size
from ..live.client import StreamClient
from ..pipeline import Pipeline, load_pipeline
from ..serve.server import SCHEDULING, ServeOptions, create_app
from ..testing import write_tiny_checkpoint
from ..testing.media import synthetic_portrait, synthetic_speech


def live_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["lite", "pro"], default="lite")
    parser.add_argument("--seconds", type=float, default=600.0, help="speech per session (default 10 minutes)")
    parser.add_argument("--sessions", type=int, default=1, help="clients at once (on one model: --scheduling)")
    parser.add_argument("--pace", choices=["realtime", "fast"], default="realtime",
                        help="speech pushed as it would be spoken, or all at once")
    parser.add_argument("--piece-ms", type=float, default=20.0, help="PCM piece length (a microphone sends 20 ms)")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 64x64 tiny, 512x512 with --full-size)")
    parser.add_argument("--full-size", action="store_true",
                        help="full-size random-weight DiT, VAE and wav2vec2 (flashhead_core.testing.random; a GPU)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--scheduling", choices=[*SCHEDULING, "both"], default=SCHEDULING[0],
                        help="the server's generation worker: ready sessions batched, round-robin, or both in turn")
    parser.add_argument("--transport", choices=["mse", "webrtc"], default="mse",
                        help="receive the stream as Media Source segments or over WebRTC (tools/webrtc_bench.py)")


def bench_live(args: argparse.Namespace) -> dict:
    import torch

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    height, width = parse_size(args.size or ("512x512" if args.full_size else "64x64"))
    with tempfile.TemporaryDirectory(prefix="flashhead-bench-") as tmp:
        tmp = Path(tmp)
        if args.full_size:
            from ..testing.random import random_dit, random_ltx_vae, random_wan_vae, random_wav2vec2

            vae = (random_ltx_vae if args.variant == "lite" else random_wan_vae)(device=device, dtype=dtype)
            pipeline = Pipeline(random_dit(PRESETS[args.variant], device, dtype), vae, random_wav2vec2(device))
        else:
            pipeline = load_pipeline(write_tiny_checkpoint(tmp, args.variant), variant=args.variant, device=device,
                                     dtype=dtype)
        portrait = synthetic_portrait(tmp / "face.png").read_bytes()
        speech = (np.clip(synthetic_speech(args.seconds), -1, 1) * 32767).astype("<i2").tobytes()
        schedulings = SCHEDULING if args.scheduling == "both" else [args.scheduling]
        runs = [asyncio.run(_measure(pipeline, args, width, height, portrait, speech, scheduling))
                for scheduling in schedulings]
    return {"variant": args.variant, "size": f"{width}x{height}", "dtype": str(dtype).removeprefix("torch."),
            "seconds": args.seconds, "sessions": args.sessions, "pace": args.pace, "piece_ms": args.piece_ms,
            "runs": runs, "note": "full-size random weights" if args.full_size else "tiny random-weight model"}


async def _measure(pipeline, args, width: int, height: int, portrait: bytes, speech: bytes, scheduling: str
                   ) -> dict:
    """One run of --sessions clients at once -> {scheduling, aggregate_fps, per_session}."""
    from aiohttp import FormData
    from aiohttp.test_utils import TestClient, TestServer

    options = ServeOptions(width=width, height=height, max_sessions=args.sessions,
                           max_speech_seconds=args.seconds + 60, idle_timeout=3600, scheduling=scheduling)
    started = time.perf_counter()
    async with TestClient(TestServer(create_app(pipeline, options))) as client:
        async def one() -> dict:
            form = FormData()
            form.add_field("portrait", portrait, filename="face.png", content_type="image/png")
            created = await (await client.post("/api/sessions", data=form)).json()
            if args.transport == "webrtc":
                from .webrtc_bench import webrtc_client

                return await webrtc_client(client, created, speech, args)
            return await _client(client, created, speech, args)

        sessions = list(await asyncio.gather(*(one() for _ in range(args.sessions))))
    wall = time.perf_counter() - started
    return {"scheduling": scheduling, "aggregate_fps": round(sum(s["video_s"] for s in sessions) * FPS / wall, 2),
            "per_session": sessions}


async def _client(client, created: dict, speech: bytes, args) -> dict:
    """Push the speech over the socket and read the stream; the figures of the module docstring."""
    piece = 2 * round(args.piece_ms / 1000 * AUDIO_SAMPLE_RATE)
    socket = await client.ws_connect(f"/api/sessions/{created['session']}/audio?rate={AUDIO_SAMPLE_RATE}")
    behind = []
    sent: list[tuple[float, float]] = []  # (seconds since start, seconds of speech sent by then)
    started = time.perf_counter()

    async def push() -> None:
        for i, offset in enumerate(range(0, len(speech), piece)):
            if args.pace == "realtime":
                await asyncio.sleep(max(0.0, started + i * args.piece_ms / 1000 - time.perf_counter()))
            await socket.send_bytes(speech[offset:offset + piece])
            sent.append((time.perf_counter() - started, (offset + piece) / 2 / AUDIO_SAMPLE_RATE))
        await socket.send_json({"end": True})

    async def listen() -> None:
        async for message in socket:
            status = message.json()
            if status.get("type") == "status":
                behind.append(status["behind_s"])
                if status["state"] == "ended":
                    return

    pushing, listening = asyncio.ensure_future(push()), asyncio.ensure_future(listen())
    stream = StreamClient(client, created["stream"])
    init_audio = await stream.init("audio")
    arrivals, av_start, media_end, audio_end, latency = [], [], [], 0.0, []
    n = 0
    async for segment in stream.segments():
        arrivals.append(time.perf_counter() - started)
        if segment.audio:
            audio_end = segment.audio_start + _duration(init_audio, segment.audio)
        if segment.media_end > (media_end[-1] if media_end else 0):  # with frames (the last may hold audio only)
            av_start.append((segment.video_start - segment.audio_start) * 1000)
            media_end.append(segment.media_end)
            spoken = next((t for t, seconds in sent if seconds >= segment.media_end - 1e-6), sent[-1][0])
            latency.append(arrivals[-1] - spoken)
        n += 1
    await pushing
    await listening
    status = await (await client.get(f"/api/sessions/{created['session']}/status")).json()
    await socket.close()
    per_minute = max(1, round(60 * len(media_end) / max(media_end[-1], 1e-9)))  # segments per minute of video
    return {"first_segment_s": round(arrivals[0], 3), "rtf": status["rtf"],
            "wall_rtf": round(arrivals[-1] / media_end[-1], 3),
            "behind_s": _spread(behind), "latency_s": _spread(latency), "segments": n, "video_s": media_end[-1],
            "av_start_ms": {"first_minute": round(statistics.mean(av_start[:per_minute]), 1),
                            "last_minute": round(statistics.mean(av_start[-per_minute:]), 1),
                            "max": round(max(map(abs, av_start)), 1)},
            "end_drift_ms": round(abs(media_end[-1] - audio_end) * 1000, 1)}


def _spread(values: list[float]) -> dict:
    """Median, 95th percentile and maximum of a list of seconds."""
    if not values:
        return {"median": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 3), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
            "max": round(ordered[-1], 3)}


def _duration(init: bytes, segment: bytes) -> float:
    """Seconds of media in one fMP4 media segment (its packets' durations), read with PyAV after the init segment."""
    import av

    with av.open(io.BytesIO(init + segment)) as container:
        stream = container.streams[0]
        return float(sum(p.duration for p in container.demux(stream) if p.size) * stream.time_base)
