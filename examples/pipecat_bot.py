#!/usr/bin/env python3
"""A talking-head bot with pipecat, peer to peer over WebRTC (pipecat's SmallWebRTC transport), no cloud keys:
type a line on the page, a local espeak-ng voice says it, FlashHead's avatar says it on screen; Interrupt cuts it
(barge-in); between lines the head keeps moving (idle).

    pip install -e ".[conversation]"  &&  apt-get install espeak-ng
    python examples/pipecat_bot.py --tiny                       # random tiny model (coloured noise, any CPU)
    python examples/pipecat_bot.py --checkpoint SoulX-FlashHead-1_3B --size 512x512 --device cuda
    # open http://127.0.0.1:7860/

The pipeline: transport.input() -> EspeakTTSService -> FlashHeadVideoService -> transport.output(). In a real agent
put STT and an LLM before the TTS (and any pipecat TTS in place of espeak); the same FlashHeadVideoService runs with
pipecat's LiveKit or Daily transports in place of SmallWebRTC (README).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import tempfile
import wave
from pathlib import Path

from aiohttp import web
from pipecat.frames.frames import EndFrame, InterruptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from flashhead_core.integrations.pipecat import FlashHeadVideoService
from flashhead_core.pipeline import load_pipeline
from flashhead_core.serve.webrtc import include_loopback_candidates

SPEECH_RATE = 16000  # what FlashHead hears; the TTS resamples to it

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>FlashHead pipecat bot</title>
<link rel="icon" href="data:,"></head><body style="font: 15px system-ui; max-width: 40rem; margin: 1rem auto">
<h1>FlashHead pipecat bot</h1><video id="v" playsinline autoplay style="width: 100%; background: #111"></video>
<form id="f"><input id="t" size="40" value="Hello, I am a talking head."> <button>Say</button>
<button type="button" id="i">Interrupt</button></form><p id="s">connecting...</p><script type="module">
const pc = new RTCPeerConnection({iceServers: []});
pc.addTransceiver('audio', {direction: 'recvonly'});   // audio first: pipecat fills transceivers by position
pc.addTransceiver('video', {direction: 'recvonly'});
const stream = new MediaStream(), v = document.getElementById('v');
pc.ontrack = (e) => { stream.addTrack(e.track); if (!v.srcObject) v.srcObject = stream; };
pc.onconnectionstatechange = () => document.getElementById('s').textContent = pc.connectionState;
await pc.setLocalDescription(await pc.createOffer());
await new Promise((r) => { if (pc.iceGatheringState === 'complete') r();
  pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 3000); });
const answer = await fetch('/offer', {method: 'POST', headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({sdp: pc.localDescription.sdp, type: 'offer'})});
await pc.setRemoteDescription(await answer.json());
const post = (path, body) => fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},
  body: JSON.stringify(body)});
document.getElementById('f').onsubmit = (e) => { e.preventDefault(); v.play();
  post('/say', {text: document.getElementById('t').value}); };
document.getElementById('i').onclick = () => post('/interrupt', {});
</script></body></html>"""


class EspeakTTSService(TTSService):
    """Text to speech with the local espeak-ng program (no network): one WAV per line, streamed as TTS audio."""

    def __init__(self, voice: str = "en-us", **kwargs):
        if shutil.which("espeak-ng") is None:
            raise SystemExit("this example speaks with espeak-ng: apt-get install espeak-ng (or brew install "
                             "espeak-ng)")
        super().__init__(push_start_frame=True, push_stop_frames=True, sample_rate=SPEECH_RATE,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        self.voice = voice

    def can_generate_metrics(self) -> bool:
        return False

    async def run_tts(self, text: str, context_id: str):
        process = await asyncio.create_subprocess_exec("espeak-ng", "-v", self.voice, "--stdout", text,
                                                       stdout=asyncio.subprocess.PIPE)
        data, _ = await process.communicate()
        with wave.open(io.BytesIO(data)) as speech:
            rate, pcm = speech.getframerate(), speech.readframes(speech.getnframes())

        async def pieces():
            step = rate // 10 * 2  # 100 ms of s16 mono
            for at in range(0, len(pcm), step):
                yield pcm[at: at + step]

        async for frame in self._stream_audio_frames_from_iterator(pieces(), in_sample_rate=rate,
                                                                   context_id=context_id):
            yield frame


class Bot:
    """One conversation at a time: a new offer replaces the previous peer and its pipeline."""

    def __init__(self, flashhead, portrait, size: tuple[int, int]):
        self.flashhead, self.portrait, self.size = flashhead, portrait, size
        self.worker: PipelineWorker | None = None
        self.runner: asyncio.Task | None = None

    async def offer(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self.stop()
        connection = SmallWebRTCConnection(ice_servers=[])
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        width, height = self.size
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=TransportParams(
            audio_out_enabled=True, audio_out_sample_rate=SPEECH_RATE, video_out_enabled=True,
            video_out_is_live=True, video_out_width=width, video_out_height=height, video_out_framerate=25))
        avatar = FlashHeadVideoService(self.flashhead, self.portrait, width=width, height=height, idle=True)
        self.worker = PipelineWorker(Pipeline([transport.input(), EspeakTTSService(), avatar, transport.output()]))

        @transport.event_handler("on_client_connected")
        async def greet(transport, client):
            await self.worker.queue_frame(TTSSpeakFrame("Hello! Type a line and I will say it."))

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self.runner = asyncio.create_task(runner.run())
        return web.json_response(connection.get_answer())

    async def say(self, request: web.Request) -> web.Response:
        text = str((await request.json()).get("text", "")).strip()[:500]
        if self.worker is not None and text:
            await self.worker.queue_frame(TTSSpeakFrame(text))
        return web.json_response({"queued": bool(text)})

    async def interrupt(self, request: web.Request) -> web.Response:
        if self.worker is not None:
            await self.worker.queue_frame(InterruptionFrame())
        return web.json_response({"interrupted": self.worker is not None})

    async def stop(self, app=None) -> None:
        if self.worker is not None:
            await self.worker.queue_frame(EndFrame())
            await asyncio.wait_for(self.runner, 30)
            self.worker = self.runner = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="the released folder (flashhead download SoulX-FlashHead-1_3B)")
    model.add_argument("--tiny", action="store_true", help="a tiny model with random weights (no download)")
    ap.add_argument("--variant", default="lite", choices=["lite", "pro"])
    ap.add_argument("--portrait", help="the face (default: a synthetic portrait)")
    ap.add_argument("--size", default="64x64", help="WIDTHxHEIGHT of the video (512x512 for the released model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flashhead-bot-"))
    if args.tiny:
        from flashhead_core.testing import write_tiny_checkpoint

        checkpoint = write_tiny_checkpoint(work / "tiny", args.variant)
    else:
        checkpoint = args.checkpoint
    portrait = args.portrait
    if portrait is None:
        from flashhead_core.testing.media import synthetic_portrait

        portrait = synthetic_portrait(work / "portrait.png", 256)
    width, height = (int(x) for x in args.size.lower().split("x"))
    include_loopback_candidates()  # a browser on this machine may reach us over loopback only
    bot = Bot(load_pipeline(checkpoint, variant=args.variant, device=args.device), portrait, (width, height))
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text=PAGE, content_type="text/html"))
    app.router.add_post("/offer", bot.offer)
    app.router.add_post("/say", bot.say)
    app.router.add_post("/interrupt", bot.interrupt)
    app.on_shutdown.append(bot.stop)
    print(f"FlashHead pipecat bot: open http://{args.host}:{args.port}/", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
