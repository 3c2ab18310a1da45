"""Live streaming core: the fMP4 segments decode to the frames and audio given, on one timeline; a channel's memory
stays bounded and its readers wake when something happens; the HTTP routes answer as the protocol says."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from flashhead_core.live import LiveChannel, LiveEncoder, LiveRegistry, LiveSegment, LiveSink
from flashhead_core.live import http as live_http
from flashhead_core.live.http import add_stream_routes, blob_media_policy
from flashhead_core.pipeline import load_pipeline, write_talking_video
from flashhead_core.generation.sampler import GenerationCancelled
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech, write_wav
from flashhead_core.media.video_io import VideoWriter, read_video_info

SIZE, FPS, RATE = 64, 25, 16000
INIT = {"video_mime": "video/mp4", "audio_mime": "audio/mp4", "init_video": b"iv", "init_audio": b"ia", "width": SIZE,
        "height": SIZE, "fps": FPS}
CHUNK_FRAMES = 24  # a Lite chunk: 0.96 s, 15360 samples at 16 kHz (not a whole number of 1024-sample AAC frames)
AAC_FRAME = 1024


def moving_frames(start: int, count: int, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """Smooth gradients that move from frame to frame: uint8 [count, H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(start, start + count, dtype=np.float32)[:, None, None]
    channels = [128 + 100 * np.sin((xx + 3 * t) / 9), 128 + 100 * np.cos((yy - 2 * t) / 11),
                128 + 60 * np.sin((xx + yy + t) / 13)]
    return np.stack(channels, -1).round().astype(np.uint8)


def tone(samples: int, channels: int = 1, rate: int = RATE) -> np.ndarray:
    """A 440 Hz tone (the second channel an octave up): float32 [samples, channels]."""
    t = np.arange(samples) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)], -1).astype(np.float32)


def encode_stream(chunks: int, channels: int = 1, frames_per_chunk: int = CHUNK_FRAMES):
    """A whole stream through one LiveEncoder -> (encoder, segments incl. the finish segment, frames, audio)."""
    encoder = LiveEncoder(SIZE, SIZE, fps=FPS, sample_rate=RATE, channels=channels)
    frames = moving_frames(0, chunks * frames_per_chunk)
    samples_per_chunk = frames_per_chunk * RATE // FPS
    audio = tone(chunks * samples_per_chunk, channels)
    segments = [encoder.encode(frames[k * frames_per_chunk:(k + 1) * frames_per_chunk],
                               audio[k * samples_per_chunk:(k + 1) * samples_per_chunk]) for k in range(chunks)]
    last = encoder.finish()
    return encoder, segments + ([last] if last else []), frames, audio


def decode_track(init: bytes, segments: list[bytes]) -> list[av.frame.Frame]:
    """Decode a track as a browser's SourceBuffer does: every segment's packets (each demuxed from init + segment,
    their timestamps restarting at 0) through ONE decoder, in order."""
    decoder, packets = None, []
    for segment in segments:
        with av.open(io.BytesIO(init + segment)) as container:
            stream = container.streams[0]
            if decoder is None:
                decoder = av.CodecContext.create(stream.codec_context.name, "r")
                decoder.extradata = stream.codec_context.extradata
            packets += [bytes(p) for p in container.demux(stream) if p.size]
    frames = [f for data in packets for f in decoder.decode(av.Packet(data))]
    return frames + decoder.decode(None)


def decode_video(init: bytes, segments: list[bytes]) -> np.ndarray:
    return np.stack([f.to_ndarray(format="rgb24") for f in decode_track(init, segments)])


def decode_audio(init: bytes, segments: list[bytes]) -> np.ndarray:
    """-> float32 [channels, samples], every decoded sample (the AAC priming included)."""
    return np.concatenate([f.to_ndarray() for f in decode_track(init, segments)], axis=1)


def packet_seconds(init: bytes, segment: bytes) -> float:
    """Seconds of media in one audio segment (its packets' durations)."""
    with av.open(io.BytesIO(init + segment)) as container:
        stream = container.streams.audio[0]
        return float(sum(p.duration for p in container.demux(stream) if p.size) * stream.time_base)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / mse))


# --- fragments --------------------------------------------------------------------------------------------------------

def test_segments_decode_to_the_frames_given():
    encoder, segments, frames, _ = encode_stream(3)
    assert [s.index for s in segments] == list(range(len(segments)))
    assert [s.frames for s in segments[:3]] == [CHUNK_FRAMES] * 3
    decoded = decode_video(encoder.init_video, [s.video for s in segments if s.video])
    assert decoded.shape == frames.shape
    assert psnr(decoded, frames) > 35, psnr(decoded, frames)
    # each chunk's segment starts with a keyframe: a viewer joining there decodes it alone
    alone = decode_video(encoder.init_video, [segments[2].video])
    assert psnr(alone, frames[2 * CHUNK_FRAMES:]) > 35
    assert [s.video_start for s in segments[:3]] == [0.0, 0.96, 1.92]
    assert [s.media_end for s in segments[:3]] == [0.96, 1.92, 2.88]


@pytest.mark.parametrize("channels", [1, 2])
def test_audio_is_on_the_video_timeline(channels):
    """Each audio segment starts where the previous one ended, the first one AAC frame (the encoder's priming) before
    the video's start, and decoded in order the samples placed at their start times are the samples given."""
    encoder, segments, _, audio = encode_stream(3, channels)
    first = segments[0]
    assert abs(first.video_start - first.audio_start) <= AAC_FRAME / RATE
    assert first.audio_start == -AAC_FRAME / RATE
    for a, b in zip(segments, segments[1:]):
        assert b.audio_start == pytest.approx(a.audio_start + packet_seconds(encoder.init_audio, a.audio), abs=1e-9)
        assert b.video_start <= b.media_end
        assert 0 <= b.video_start - b.audio_start <= 2 * AAC_FRAME / RATE + 1e-9  # the encoder's delay, carried over
    decoded = decode_audio(encoder.init_audio, [s.audio for s in segments])
    end = segments[-1].audio_start + packet_seconds(encoder.init_audio, segments[-1].audio)
    assert end >= len(audio) / RATE  # finish() flushed the tail: the track covers every sample given
    assert decoded.shape[0] == channels
    on_timeline = decoded[:, AAC_FRAME:AAC_FRAME + len(audio)]  # sample i plays at audio_start_0 + i / rate
    for c in range(channels):
        correlation = np.corrcoef(on_timeline[c], audio[:, c])[0, 1]
        assert correlation > 0.99, (c, correlation)


def test_init_segments_and_mime_types():
    encoder = LiveEncoder(512, 512)
    assert encoder.video_mime == 'video/mp4; codecs="avc1.64001e"'  # High profile, level 3.0 at 512x512
    assert encoder.audio_mime == 'audio/mp4; codecs="mp4a.40.2"'
    for init in (encoder.init_video, encoder.init_audio):
        assert init[4:8] == b"ftyp" and b"moov" in init and b"moof" not in init
    segment = encoder.encode(moving_frames(0, 2, 512, 512), np.zeros((0, 1), np.float32))
    assert segment.video[4:8] == b"moof" and b"ftyp" not in segment.video and b"moov" not in segment.video
    assert segment.audio == b""  # no AAC packet yet: the player skips an empty segment
    assert set(encoder.info) == {"video_mime", "audio_mime", "init_video", "init_audio", "width", "height", "fps"}


def test_encoder_refuses_what_it_cannot_stream():
    from flashhead_core.errors import AudioInputError, SizeError

    with pytest.raises(SizeError, match="even"):
        LiveEncoder(63, 64)
    with pytest.raises(AudioInputError, match="44100"):
        LiveEncoder(64, 64, sample_rate=12345)
    encoder = LiveEncoder(64, 64)
    with pytest.raises(ValueError, match=r"\[n >= 1, 64, 64, 3\]"):
        encoder.encode(moving_frames(0, 1, 32, 32), np.zeros((0, 1), np.float32))
    with pytest.raises(ValueError, match=r"\[t, 1\]"):
        encoder.encode(moving_frames(0, 1), np.zeros((10, 2), np.float32))
    encoder.finish()
    with pytest.raises(RuntimeError, match="finished"):
        encoder.encode(moving_frames(0, 1), np.zeros((0, 1), np.float32))


# --- channel and registry ---------------------------------------------------------------------------------------------

def fake_segment(index: int) -> LiveSegment:
    return LiveSegment(index=index, frames=24, video=b"v%d" % index, video_start=index * 0.96, audio=b"a%d" % index,
                       audio_start=index * 0.96 - 0.064, media_end=(index + 1) * 0.96)


def test_channel_keeps_only_its_latest_segments():
    channel = LiveChannel(keep=8, prompt_id="p")
    for index in range(100):
        channel.publish(fake_segment(index))
    info = channel.info()
    assert (info["first"], info["next"], info["media_end"]) == (92, 100, pytest.approx(96.0))
    assert len(channel._segments) == 8
    assert info["meta"] == {"prompt_id": "p"} and not info["ended"]

    async def read():
        assert (await channel.segment(95, timeout=1)).video == b"v95"
        with pytest.raises(KeyError):
            await channel.segment(91, timeout=1)

    asyncio.run(read())
    with pytest.raises(ValueError, match="expects segment 100"):
        channel.publish(fake_segment(7))


def test_waiting_readers_wake_on_publish_and_on_finish():
    channel = LiveChannel()

    async def scenario():
        waiting = [asyncio.create_task(channel.segment(0, timeout=30)) for _ in range(3)]
        ended = asyncio.create_task(channel.segment(1, timeout=30))
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiting + [ended])
        publisher = threading.Thread(target=channel.publish, args=(fake_segment(0),))  # from a worker thread
        publisher.start()
        got = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert [s.video for s in got] == [b"v0"] * 3
        assert not ended.done()
        threading.Thread(target=channel.finish, kwargs={"error": "cancelled"}).start()
        assert await asyncio.wait_for(ended, 10) is None
        assert await channel.segment(5, timeout=30) is None  # after the end: at once
        publisher.join()

    asyncio.run(scenario())
    assert channel.info()["ended"] and channel.info()["error"] == "cancelled"
    assert channel._waiters == []
    with pytest.raises(RuntimeError, match="ended"):
        channel.publish(fake_segment(1))


def test_a_wait_times_out_with_nothing():
    channel = LiveChannel()
    assert asyncio.run(channel.segment(0, timeout=0.05)) is None
    assert channel._waiters == []


def test_registry_drops_ended_channels_after_the_grace_period_or_beyond_its_limit():
    registry = LiveRegistry(grace=3600, max_ended=2)
    channels = [registry.create(n=i) for i in range(5)]
    assert [c["meta"]["n"] for c in registry.list()] == [0, 1, 2, 3, 4]
    assert len({c.id for c in channels}) == 5 and all(len(c.id) >= 20 for c in channels)
    for c in channels[:4]:
        c.finish()
    assert [c["meta"]["n"] for c in registry.list()] == [2, 3, 4]  # the two latest ended ones, and the running one
    assert registry.get(channels[0].id) is None and registry.get(channels[4].id) is channels[4]
    registry.grace = 0
    assert [c["meta"]["n"] for c in registry.list()] == [4]
    registry.remove(channels[4].id)
    assert registry.list() == []


# --- HTTP -------------------------------------------------------------------------------------------------------------

def serve(registry: LiveRegistry, scenario, check=None, use_table: bool = False):
    """Run `scenario(client)` against an app with the stream routes under /live (a RouteTableDef when use_table,
    as ComfyUI's PromptServer has, else the app's router)."""
    async def main():
        app = web.Application()
        if use_table:
            table = web.RouteTableDef()
            add_stream_routes(table, "/live", registry, check)
            app.add_routes(table)
        else:
            add_stream_routes(app.router, "/live", registry, check)
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(main())


@pytest.mark.parametrize("use_table", [False, True])
def test_routes_serve_a_stream(use_table):
    registry = LiveRegistry()
    encoder, segments, _, _ = encode_stream(2)
    channel = registry.create(node="7")
    channel.open(encoder.info)
    for segment in segments[:2]:
        channel.publish(segment)

    async def scenario(client):
        info = await (await client.get(f"/live/{channel.id}")).json()
        assert info["video_mime"] == encoder.video_mime and (info["first"], info["next"]) == (0, 2)
        assert info["meta"] == {"node": "7"} and info["width"] == SIZE and info["fps"] == FPS
        response = await client.get(f"/live/{channel.id}/init/video")
        assert response.status == 200 and response.content_type == "video/mp4"
        assert await response.read() == encoder.init_video
        assert await (await client.get(f"/live/{channel.id}/init/audio")).read() == encoder.init_audio
        response = await client.get(f"/live/{channel.id}/segments/1/audio")
        assert response.status == 200 and response.content_type == "audio/mp4"
        assert await response.read() == segments[1].audio
        assert float(response.headers["X-FlashHead-Start"]) == segments[1].audio_start
        assert float(response.headers["X-FlashHead-Media-End"]) == segments[1].media_end
        response = await client.get(f"/live/{channel.id}/segments/0/video")
        assert await response.read() == segments[0].video and response.headers["X-FlashHead-Start"] == "0.0"
        assert response.headers["Cache-Control"] == "no-store"

    serve(registry, scenario, use_table=use_table)


def test_routes_answer_errors_as_specified(monkeypatch):
    monkeypatch.setattr(live_http, "WAIT_SECONDS", 0.05)
    monkeypatch.setattr(live_http, "INIT_WAIT_SECONDS", 0.05)
    registry = LiveRegistry(keep=2)
    channel = registry.create()
    channel.open(INIT)
    for index in range(4):
        channel.publish(fake_segment(index))

    async def scenario(client):
        async def status(path):
            response = await client.get(path)
            return response.status, response.headers.get("X-FlashHead-Ended")

        assert await status("/live/unknown-id") == (404, None)
        assert await status("/live/unknown-id/segments/0/video") == (404, None)
        assert await status(f"/live/{channel.id}/segments/-1/video") == (400, None)
        assert await status(f"/live/{channel.id}/segments/x/video") == (400, None)
        assert await status(f"/live/{channel.id}/segments/1/subtitles") == (404, None)
        assert await status(f"/live/{channel.id}/segments/1/video") == (410, None)  # dropped: keep=2
        assert await status(f"/live/{channel.id}/segments/3/video") == (200, None)
        assert await status(f"/live/{channel.id}/segments/4/video") == (204, "0")  # not yet: ask again
        channel.finish(error="interrupted by the user")
        response = await client.get(f"/live/{channel.id}/segments/4/video")
        assert (response.status, response.headers["X-FlashHead-Ended"]) == (204, "1")
        assert response.headers["X-FlashHead-Error"] == "interrupted by the user"
        assert await status(f"/live/{channel.id}/segments/3/audio") == (200, None)  # ended: still readable
        pending = registry.create()
        assert await status(f"/live/{pending.id}/init/video") == (204, "0")  # no chunk encoded yet: ask again
        pending.finish(error="failed before its first chunk")
        assert await status(f"/live/{pending.id}/init/audio") == (404, None)

    serve(registry, scenario)


def test_the_media_policy_adds_blob_media_to_a_strict_policy_only():
    async def main():
        app = web.Application(middlewares=[blob_media_policy, strict_policy])

        async def page(request):
            return web.Response(text="x")

        app.router.add_get("/", page)
        plain = web.Application(middlewares=[blob_media_policy])
        plain.router.add_get("/", page)
        async with TestClient(TestServer(app)) as client, TestClient(TestServer(plain)) as other:
            policy = (await client.get("/")).headers["Content-Security-Policy"]
            assert policy == STRICT_CSP.rstrip(";") + "; media-src 'self' blob:"
            assert "Content-Security-Policy" not in (await other.get("/")).headers  # no policy: none is added

    asyncio.run(main())

def test_the_check_refuses_without_telling_which_ids_exist():
    registry = LiveRegistry()
    mine, foreign = registry.create(owner="a"), registry.create(owner="b")
    mine.open(INIT)

    def check(request, channel):
        if request.headers.get("Authorization") != "Bearer t":
            raise web.HTTPForbidden()
        if channel.meta["owner"] != "a":
            raise web.HTTPNotFound()

    async def scenario(client):
        auth = {"Authorization": "Bearer t"}
        assert (await client.get(f"/live/{mine.id}")).status == 403
        assert (await client.get(f"/live/{mine.id}/init/video", headers=auth)).status == 200
        for path in (f"/live/{foreign.id}", f"/live/{foreign.id}/init/audio", "/live/nope"):
            assert (await client.get(path, headers=auth)).status == 404, path

    serve(registry, scenario, check)


# --- the tee of a video being written ---------------------------------------------------------------------------------

def live_frames(channel: LiveChannel, track: str = "video") -> list[bytes]:
    """Every published segment's bytes of one track (the channel keeps them all in these short tests)."""
    return [s.video if track == "video" else s.audio for s in channel._segments]


def test_the_writer_tees_exactly_what_it_muxes(tmp_path):
    """44.1 kHz stereo, as the MP4 keeps an original track: the live stream has every frame and, on the same
    timeline, every sample; the MP4 is as it is without the tee."""
    channel = LiveChannel()
    rate, chunks = 44100, 3
    audio = tone(chunks * CHUNK_FRAMES * rate // FPS, 2, rate)
    frames = moving_frames(0, chunks * CHUNK_FRAMES)
    with VideoWriter(tmp_path / "tee.mp4", SIZE, SIZE, audio=(audio, rate), live=LiveSink(channel)) as writer:
        assert channel.info()["video_mime"].startswith("video/mp4")
        for k in range(chunks):
            writer.write(frames[k * CHUNK_FRAMES:(k + 1) * CHUNK_FRAMES])
            assert channel.info()["next"] == k + 1  # published as soon as the chunk is written
    with VideoWriter(tmp_path / "plain.mp4", SIZE, SIZE, audio=(audio, rate)) as writer:
        for k in range(chunks):
            writer.write(frames[k * CHUNK_FRAMES:(k + 1) * CHUNK_FRAMES])
    assert read_video_info(tmp_path / "tee.mp4") == read_video_info(tmp_path / "plain.mp4")  # (x264 threads: not bytes)
    info = channel.info()
    assert info["ended"] and info["error"] is None and info["next"] == chunks + 1  # + the encoders' flush
    video = decode_video(channel.init_segment("video"), [v for v in live_frames(channel) if v])
    assert video.shape == frames.shape and psnr(video, frames) > 35
    decoded = decode_audio(channel.init_segment("audio"), live_frames(channel, "audio"))
    assert decoded.shape[0] == 2 and decoded.shape[1] >= len(audio) + AAC_FRAME
    for c in range(2):
        assert np.corrcoef(decoded[c, AAC_FRAME:AAC_FRAME + len(audio)], audio[:, c])[0, 1] > 0.99


def test_small_writes_are_gathered_and_a_silent_video_gets_a_silent_track(tmp_path):
    channel = LiveChannel()
    with VideoWriter(tmp_path / "silent.mp4", SIZE, SIZE, live=LiveSink(channel, min_seconds=0.4)) as writer:
        for start in range(0, 2 * CHUNK_FRAMES, 4):  # as the face crop writes: a few frames at a time
            writer.write(moving_frames(start, 4))
    frames = [s.frames for s in channel._segments]
    assert frames[-1] == 0 and all(n >= 10 for n in frames[:-1]) and sum(frames) == 2 * CHUNK_FRAMES, frames
    silence = decode_audio(channel.init_segment("audio"), live_frames(channel, "audio"))
    assert silence.shape[1] >= 2 * CHUNK_FRAMES * RATE // FPS and np.abs(silence).max() < 1e-3


def test_a_failed_video_ends_its_stream_with_the_reason(tmp_path):
    channel = LiveChannel()
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(tmp_path / "x.mp4", SIZE, SIZE, live=LiveSink(channel)) as writer:
            writer.write(moving_frames(0, CHUNK_FRAMES))
            raise KeyboardInterrupt
    assert channel.info()["ended"] and channel.info()["error"] == "KeyboardInterrupt"
    assert channel.info()["next"] == 1 and list(tmp_path.iterdir()) == []


def test_a_failing_live_encoder_leaves_the_mp4_alone(tmp_path, monkeypatch):
    def broken(self, frames, audio):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(LiveEncoder, "encode", broken)
    channel = LiveChannel()
    with VideoWriter(tmp_path / "ok.mp4", SIZE, SIZE, live=LiveSink(channel)) as writer:
        writer.write(moving_frames(0, CHUNK_FRAMES))
        writer.write(moving_frames(CHUNK_FRAMES, CHUNK_FRAMES))
    assert read_video_info(tmp_path / "ok.mp4").frames == 2 * CHUNK_FRAMES
    assert channel.info()["error"] == "the live stream failed: encoder exploded"


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_lite")
    return (load_pipeline(write_tiny_checkpoint(root, "lite"), variant="lite"),
            synthetic_portrait(root / "face.png", 96), write_wav(root / "speech.wav", synthetic_speech(2.5)))


def test_write_talking_video_streams_the_run_and_a_cancel_ends_it(lite, tmp_path):
    pipeline, image, speech = lite
    channel = LiveChannel()
    summary = write_talking_video(pipeline, image, speech, tmp_path / "live.mp4", height=SIZE, width=SIZE,
                                  live=LiveSink(channel))
    frames = read_video_info(tmp_path / "live.mp4").frames
    assert sum(s.frames for s in channel._segments) == summary.frames == frames
    assert channel.info()["ended"] and channel.info()["error"] is None
    assert channel.info()["media_end"] == summary.frames / FPS
    cancelled, chunks = LiveChannel(), []
    with pytest.raises(GenerationCancelled):
        write_talking_video(pipeline, image, speech, tmp_path / "cancel.mp4", height=SIZE, width=SIZE,
                            live=LiveSink(cancelled), on_chunk=lambda *a: chunks.append(a),
                            should_cancel=lambda: len(chunks) >= 1)
    info = cancelled.info()
    assert info["ended"] and "cancelled" in info["error"] and info["next"] == 1, info
    assert not (tmp_path / "cancel.mp4").exists()


# --- the player in a real browser -------------------------------------------------------------------------------------

PLAYER_JS = live_http.PLAYER_JS
CHROMIUM = Path("/usr/bin/chromium")
PAGE = """<!doctype html><body><video id="v" muted width="64" height="64"></video><script type="module">
import { LivePlayer } from "/player.js";
const video = document.getElementById("v");
window.statuses = [];
window.player = new LivePlayer(video, "/live/%s", {onStatus: (s) => window.statuses.push(s)});
window.player.start();
</script></body>"""
# What ComfyUI 0.33 sends with --disable-api-nodes: nothing from elsewhere (and, alone, no blob: media either).
STRICT_CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; connect-src 'self';"


@web.middleware
async def strict_policy(request, handler):
    response = await handler(request)
    response.headers["Content-Security-Policy"] = STRICT_CSP
    return response


class StreamingServer:
    """An aiohttp app on a free port in a background thread: the page, player.js and the stream routes."""

    def __init__(self, registry: LiveRegistry, channel_id: str):
        self.registry, self.channel_id = registry, channel_id
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self):
        async def page(request):
            return web.Response(text=PAGE % self.channel_id, content_type="text/html")

        async def player(request):
            return web.FileResponse(PLAYER_JS)

        app = web.Application(middlewares=[blob_media_policy, strict_policy])
        app.router.add_get("/", page)
        app.router.add_get("/player.js", player)
        add_stream_routes(app.router, "/live", self.registry)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.ready.set()
        await self.stop.wait()
        await runner.cleanup()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_player_plays_while_the_stream_is_produced_and_ends_cleanly():
    """Chromium (headless, MSE) plays the stream while a worker thread is still publishing it: currentTime grows
    before the last segment exists; a viewer opening the page later joins at the live edge; the end of the stream
    ends the player with no page error. The page's Content-Security-Policy is the one ComfyUI 0.33 sends with
    --disable-api-nodes, with blob_media_policy over it (as nodes/live.py installs it in ComfyUI)."""
    playwright = pytest.importorskip("playwright.sync_api")
    registry = LiveRegistry()
    channel = registry.create()
    chunks, produced = 12, []
    encoder = LiveEncoder(SIZE, SIZE)
    channel.open(encoder.info)

    def produce():
        for k in range(chunks):
            channel.publish(encoder.encode(moving_frames(k * CHUNK_FRAMES, CHUNK_FRAMES), tone(15360)))
            produced.append(k)
            time.sleep(0.5)   # slower than real time is not needed: this only spreads the stream over 6 s
        last = encoder.finish()
        if last:
            channel.publish(last)
        channel.finish()

    with StreamingServer(registry, channel.id) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        errors = []
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            producer = threading.Thread(target=produce)
            producer.start()
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.wait_for_function("() => document.getElementById('v').currentTime > 1.0", timeout=30000)
            live_time, live_chunks = page.evaluate("() => document.getElementById('v').currentTime"), len(produced)
            assert live_chunks < chunks, "the stream was already complete: nothing was shown live"
            late = browser.new_page()
            late.on("pageerror", lambda e: errors.append(str(e)))
            late.goto(f"http://127.0.0.1:{server.port}/")
            late.wait_for_function("() => window.statuses.some(s => s.segment >= 0)", timeout=30000)
            joined = late.evaluate("() => window.statuses.find(s => s.segment >= 0).segment")
            producer.join(30)
            page.wait_for_function("() => window.statuses.some(s => s.ended)", timeout=30000)
            final = page.evaluate("() => window.statuses[window.statuses.length - 1]")
            late.wait_for_function("() => window.statuses.some(s => s.ended)", timeout=30000)
        finally:
            browser.close()
    print(f"\nlive playback: currentTime {live_time:.2f} s after {live_chunks} of {chunks} chunks; a late viewer "
          f"joined at segment {joined}; final status {final}")
    assert joined >= 2, "a viewer opening the page mid-stream must start at the live edge, not at segment 0"
    assert final["ended"] and final["error"] is None and final["segment"] >= chunks - 1, final
    assert errors == []
