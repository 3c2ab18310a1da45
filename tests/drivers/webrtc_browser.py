#!/usr/bin/env python3
"""Headless Chromium receives WebRTC streams from flashhead_core.serve.webrtc's routes: run inside a network namespace
where only `lo` exists (tests/test_webrtc.py starts it with `unshare -n`). Two modes:

--serve-page: starts `flashhead serve --tiny` (64x64, a token) and drives its page as a user would: idle mode on, a
text-to-speech program as the speech source (this driver pushes two utterances of PCM, in real time, to the URL the
page shows, a silent gap between them), Start, then Interrupt during the second utterance. Records the page's
metrics (transport, frames presented), the audio the page receives (its track through a MediaStreamAudioSourceNode
into a recording AudioWorklet: RMS per 128-sample block, placed on the performance clock) and when each utterance
was pushed and the interrupt clicked (performance.now() of the page).

Default (the lip-sync probe): it serves, on 127.0.0.1, the WebRTC routes of `flashhead serve` (add_webrtc_routes) over one
stand-in session whose sink is written "flash" chunks in real time (24 frames every 0.96 s, black and silent except
one white frame per chunk whose 640 samples are a 1 kHz tone), and a small page that makes the offer as the serve
page does (audio transceiver first, no ICE servers) and records:
  - every presented frame (requestVideoFrameCallback: expected display time, mean luma of the frame drawn into a
    canvas) and
  - the received audio (its track through a MediaStreamAudioSourceNode into a recording AudioWorklet: per 128-sample
    block its RMS and context frame, and getOutputTimestamp pairs to place blocks on the performance clock).
Both print one JSON line: the recordings, connection timings, WebRTC stats (frames received/decoded/dropped, packets
lost) and console errors. Exit 2 when Chromium or playwright is missing."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import browser_support  # noqa: E402  (this script's folder)
from aiohttp import web  # noqa: E402

from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME  # noqa: E402
from flashhead_core.serve.webrtc import RtcSink, add_webrtc_routes  # noqa: E402

SIZE, CHUNK, FLASH_AT = 64, 24, 10
REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
                  "--disable-features=WebRtcHideLocalIpsWithMdns", "--use-fake-ui-for-media-stream"]

# The serve page's audio, as received: every RTCPeerConnection's audio track into a recording worklet.
AUDIO_TAP = """(() => {
  const probe = window.__rtc = {blocks: [], clock: [], pcs: []};
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    probe.pcs.push(pc);
    pc.addEventListener('track', async (e) => {
      if (e.track.kind !== 'audio') return;
      const context = probe.context = new AudioContext({sampleRate: 48000});
      const worklet = `registerProcessor('rms', class extends AudioWorkletProcessor {
        process(inputs) { const x = inputs[0][0];
          if (x) { let s = 0; for (const a of x) s += a * a;
                   this.port.postMessage([currentFrame, Math.sqrt(s / x.length)]); }
          return true; } });`;
      await context.audioWorklet.addModule(URL.createObjectURL(new Blob([worklet], {type: 'text/javascript'})));
      const node = new AudioWorkletNode(context, 'rms');
      node.port.onmessage = (m) => {
        probe.blocks.push(m.data);
        const t = context.getOutputTimestamp();
        if (t.performanceTime) probe.clock.push([t.contextTime, t.performanceTime]);
      };
      context.createMediaStreamSource(new MediaStream([e.track])).connect(node);
      await context.resume();
    });
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();"""

PAGE = """<!doctype html><html><head><link rel="icon" href="data:,"></head><body>
<video id="v" playsinline autoplay></video><script type="module">
const probe = window.probe = {frames: [], blocks: [], clock: [], errors: []};
const v = document.getElementById('v');
const pc = new RTCPeerConnection({iceServers: []});
pc.addTransceiver('audio', {direction: 'recvonly'});
pc.addTransceiver('video', {direction: 'recvonly'});
const stream = new MediaStream();
probe.t0 = performance.now();
pc.onconnectionstatechange = () => { if (pc.connectionState === 'connected') probe.connectedAt = performance.now(); };
pc.ontrack = async (e) => {
  stream.addTrack(e.track);
  if (!v.srcObject) { v.srcObject = stream; v.play().catch((err) => probe.errors.push(String(err))); }
  if (e.track.kind !== 'audio') return;
  const context = probe.context = new AudioContext({sampleRate: 48000});
  const worklet = `registerProcessor('rms', class extends AudioWorkletProcessor {
    process(inputs) { const x = inputs[0][0];
      if (x) { let s = 0; for (const a of x) s += a * a;
               this.port.postMessage([currentFrame, Math.sqrt(s / x.length)]); }
      return true; } });`;
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([worklet], {type: 'text/javascript'})));
  const node = new AudioWorkletNode(context, 'rms');
  node.port.onmessage = (m) => {
    probe.blocks.push(m.data);
    const t = context.getOutputTimestamp();
    if (t.performanceTime) probe.clock.push([t.contextTime, t.performanceTime]);
  };
  context.createMediaStreamSource(new MediaStream([e.track])).connect(node);
  await context.resume();
};
const canvas = Object.assign(document.createElement('canvas'), {width: 4, height: 4});
const draw = canvas.getContext('2d', {willReadFrequently: true});
const onFrame = (now, frame) => {
  draw.drawImage(v, 0, 0, 4, 4);
  const px = draw.getImageData(0, 0, 4, 4).data;
  let s = 0; for (let i = 0; i < px.length; i += 4) s += px[i];
  probe.frames.push([frame.expectedDisplayTime, s / 16]);
  if (probe.firstFrameAt === undefined) probe.firstFrameAt = frame.expectedDisplayTime;
  v.requestVideoFrameCallback(onFrame);
};
v.requestVideoFrameCallback(onFrame);
await pc.setLocalDescription(await pc.createOffer());
await new Promise((r) => { if (pc.iceGatheringState === 'complete') r();
  pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 3000); });
probe.offerAt = performance.now();
const answer = await fetch('/api/sessions/s/rtc', {method: 'POST', headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({type: 'offer', sdp: pc.localDescription.sdp})});
probe.answerStatus = answer.status;
await pc.setRemoteDescription(await answer.json());
probe.answerAt = performance.now();
probe.stats = async () => { const out = {}; (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp')
  out[r.kind] = {packetsLost: r.packetsLost, framesDecoded: r.framesDecoded, framesDropped: r.framesDropped,
                 framesReceived: r.framesReceived, jitterBufferDelay: r.jitterBufferDelay,
                 jitterBufferEmittedCount: r.jitterBufferEmittedCount}; }); return out; };
</script></body></html>"""


class FlashSession:
    """The stand-in for a served session (what add_webrtc_routes uses: id, live, sockets, touch()); as `live` it has
    an RtcSink among its sinks and, from the first offer on, writes flash chunks to it in real time from a thread, as
    the generation worker would."""

    def __init__(self, seconds: float):
        self.id, self.live, self.sockets, self.seconds = "s", self, 0, seconds
        self.sinks = [RtcSink()]
        self.sinks[0].start(SIZE, SIZE, FPS, AUDIO_SAMPLE_RATE, 1)
        self.writer: threading.Thread | None = None

    def touch(self) -> None:
        if self.writer is None:
            self.writer = threading.Thread(target=self._write, args=(self.sinks[0],), daemon=True)
            self.writer.start()

    def _write(self, sink) -> None:
        tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(SAMPLES_PER_FRAME) / AUDIO_SAMPLE_RATE)
        start = time.monotonic()
        for k in range(int(self.seconds * FPS / CHUNK)):
            frames = np.zeros((CHUNK, SIZE, SIZE, 3), np.uint8)
            audio = np.zeros((CHUNK, SAMPLES_PER_FRAME), np.float32)
            frames[FLASH_AT], audio[FLASH_AT] = 255, tone
            sink.write(frames, audio.reshape(-1, 1))
            time.sleep(max(0.0, start + (k + 1) * CHUNK / FPS - time.monotonic()))
        sink.close()


class FlashServer:
    def __init__(self, session: FlashSession):
        self.served = session
        self.options = type("Options", (), {"max_sessions": 2})()

    def session(self, request):
        self.served.touch()
        return self.served


def serve(port: int, seconds: float) -> threading.Event:
    """The page and the WebRTC routes on 127.0.0.1:port in a thread; returns once listening."""
    ready = threading.Event()

    async def page(request):
        return web.Response(text=PAGE, content_type="text/html")

    def run():
        app = web.Application()
        app.router.add_get("/", page)
        add_webrtc_routes(app, FlashServer(FlashSession(seconds)))
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(30)
    return ready


def utterance(seconds: float) -> bytes:
    """Speech-like s16le PCM at 16 kHz: a 180 Hz voice with harmonics, loud from its first sample."""
    t = np.arange(int(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    voice = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 5)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * voice * 32767).astype("<i2").tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(token: str) -> tuple[subprocess.Popen, str]:
    """`flashhead serve --tiny` on a free loopback port; (process, page URL) once the page answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "flashhead_core", "serve", "--tiny", "--size", f"{SIZE}x{SIZE}",
                                "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"], cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "FLASHHEAD_TOKEN": token},
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/?token={token}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise SystemExit(f"flashhead serve exited: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("flashhead serve did not answer in 120 s")
        time.sleep(0.3)


def push_utterance(page, shown: str, pcm: bytes, piece_seconds: float = 0.2) -> float:
    """Push `pcm` in real time (piece by piece) to the URL the page shows, with its header, `&flush=1` on the last
    piece; returns the page's performance.now() when the first piece went out."""
    url = re.search(r"'(http[^']*\?rate=16000)'", shown).group(1)
    headers = dict(re.findall(r"-H '([^:']+): ([^']+)'", shown))
    step = int(piece_seconds * AUDIO_SAMPLE_RATE) * 2
    started, first = time.monotonic(), None
    for k, at in enumerate(range(0, len(pcm), step)):
        last = at + step >= len(pcm)
        request = urllib.request.Request(url + ("&flush=1" if last else ""), data=pcm[at:at + step], headers=headers,
                                         method="POST")
        if first is None:
            first = page.evaluate("performance.now()")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        time.sleep(max(0.0, started + (k + 1) * piece_seconds - time.monotonic()))
    return first


def drive_serve_page(browser, token: str, portrait: str, gap: float, idle: bool = True) -> dict:
    process, url = start_serve(token)
    try:
        page = browser.new_page()
        console = []
        browser_support.record_console(page, console)
        page.add_init_script(script=AUDIO_TAP)
        page.goto(url, wait_until="networkidle")
        page.wait_for_function("() => window.flashheadPage")
        page.set_input_files("#portraits", portrait)
        page.fill("#width", str(SIZE))
        page.fill("#height", str(SIZE))
        page.check("input[name=source][value=external]")
        page.set_checked("#idle-mode", idle)
        page.click("#start")
        page.wait_for_selector("#external:not([hidden])", timeout=60000)
        if idle:  # (without idle nothing streams before the first word: the transport is chosen then)
            page.wait_for_function("() => flashheadPage.metrics.transport", timeout=30000)
        page.wait_for_timeout(1000 * gap)  # idle before anyone speaks
        shown = page.inner_text("#curl-example")
        report = {"first_push_at": push_utterance(page, shown, utterance(2.0))}
        page.wait_for_timeout(1000 * gap)  # the head listens between utterances
        # the second utterance all at once (a TTS program answering), interrupted while it plays
        report["second_push_at"] = push_utterance(page, shown, utterance(3.0), piece_seconds=3.0)
        page.wait_for_function("() => { const b = window.__rtc.blocks; return b.length && "
                               f"b.slice(-20).some(x => x[1] > 0.05) && performance.now() > {report['second_push_at']}"
                               " }", timeout=60000)
        page.wait_for_timeout(500)
        report["interrupt_at"] = page.evaluate("performance.now()")
        page.click("#interrupt")
        page.wait_for_timeout(1000 * (gap + 2))
        report.update(page.evaluate("""async () => {
          const m = flashheadPage.metrics, rtc = window.__rtc, out = {};
          for (const pc of rtc.pcs) (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp')
            out[r.kind] = {packetsLost: r.packetsLost, framesDecoded: r.framesDecoded, framesDropped: r.framesDropped}; });
          return {transport: m.transport, fallback: m.fallback, framesPresented: m.framesPresented,
                  firstFrameAt: m.firstFrameAt, interrupts: m.interrupts, server: m.server, player: m.player,
                  status: document.getElementById('status').innerText,
                  error: document.getElementById('error').hidden ? null : document.getElementById('error').innerText,
                  blocks: rtc.blocks, clock: rtc.clock, sampleRate: rtc.context?.sampleRate,
                  outputLatency: rtc.context?.outputLatency, stats: out};
        }"""))
        page.click("#stop")
        page.wait_for_timeout(500)
        report["console_errors"] = browser_support.page_errors(console)
        return report
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--seconds", type=float, default=24.0, help="how long the stream runs")
    ap.add_argument("--serve-page", action="store_true", help="drive the page of `flashhead serve --tiny`")
    ap.add_argument("--portrait", help="--serve-page: the portrait to upload")
    ap.add_argument("--gap", type=float, default=3.0, help="--serve-page: seconds of silence around the utterances")
    ap.add_argument("--no-idle", action="store_true", help="--serve-page: idle mode off")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    sync_playwright = browser_support.sync_playwright()
    if sync_playwright is None or not Path(args.chromium).exists():
        print(f"error: needs playwright and Chromium at {args.chromium}", file=sys.stderr)
        return 2
    if args.serve_page:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            try:
                report = drive_serve_page(browser, "webrtc-page-token-1234", args.portrait, args.gap,
                                          idle=not args.no_idle)
            finally:
                browser.close()
        print(json.dumps(report))
        return 0
    serve(args.port, args.seconds)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            console = []
            browser_support.record_console(page, console)
            page.goto(f"http://127.0.0.1:{args.port}/")
            page.wait_for_timeout(1000 * (args.seconds + 3))
            report = page.evaluate("""async () => ({...window.probe, stats: await window.probe.stats(),
                                      context: undefined, sampleRate: window.probe.context?.sampleRate,
                                      outputLatency: window.probe.context?.outputLatency})""")
            report["console_errors"] = browser_support.page_errors(console)
        finally:
            browser.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
