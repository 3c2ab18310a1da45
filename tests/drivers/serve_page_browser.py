#!/usr/bin/env python3
"""The page of `flashhead serve` in headless Chromium, speech from a fake microphone or a file: run with a Python
that has playwright; the browser is the system Chromium.

Not a test module: tests/test_serve_page.py runs it against a running `flashhead serve`. The driver picks the
portraits and the speech source as a user would, presses Start, and while the page streams:
  - samples <video>.currentTime, the page's metrics (window.flashheadPage) and its status line every 100 ms;
  - copies every binary WebSocket message the page sends (the microphone PCM, as sent) with its performance.now();
  - taps what the <video> element plays (WebAudio MediaElementSource -> a recording worklet at 16 kHz -> the
    speakers, so it is still heard) with the performance.now() each recorded block reaches the output;
  - records every presented frame (requestVideoFrameCallback: callback time, expected display time, mediaTime,
    currentTime, the frame's mean RGB drawn into a canvas);
  - records each SourceBuffer append (MIME, timestampOffset, buffered ranges after it);
  - clicks the identity `--switch-to` once the video has played `--switch-after` seconds, clicks "End speech" once
    `--speech-seconds` have been sent, and waits for the stream to end (or to stall for 15 s);
  - takes a screenshot while playing (2.5 s after the switch, or at the end);
  - with --bad-portrait: then presses Stop, starts again with that file as the portrait and reports the error shown.
--source microphone: Chromium's fake capture device plays `--wav` once as the microphone
(--use-file-for-fake-audio-capture=<wav>%noloop); file: `--wav` is uploaded as the speech file; external: the driver
pushes `--wav` over HTTP as a text-to-speech program would, to the URL and with the header the page shows.
Writes `sent.s16` (the PCM the page sent, s16le mono at the page's rate) and `played.f32` (what the element played,
float32 mono at 16 kHz) into --out-dir and prints one JSON line with everything else and those paths.
Exit 0 when the page could be driven (judging the report is the caller's job), 2 when it could not be used at all.
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import urllib.request
import wave
from pathlib import Path

import browser_support

PLAYED_RATE = 16000

# Before any page script: copy the WebSocket's binary sends, and keep each SourceBuffer with its appends.
HOOKS = """(() => {
  const probe = window.__probe = {sent: [], sentAt: [], appends: [], sourceBuffers: []};
  probe.ranges = (b) => [...Array(b.buffered.length).keys()].map(i => [b.buffered.start(i), b.buffered.end(i)]);
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (data instanceof ArrayBuffer) { probe.sent.push(data.slice(0)); probe.sentAt.push(performance.now()); }
    return send.call(this, data);
  };
  const add = MediaSource.prototype.addSourceBuffer;
  MediaSource.prototype.addSourceBuffer = function (mime) {
    const buffer = add.call(this, mime);
    probe.sourceBuffers.push({mime, buffer});
    const append = buffer.appendBuffer;
    buffer.appendBuffer = function (data) {
      const entry = {mime, at: performance.now(), offset: buffer.timestampOffset, bytes: data.byteLength};
      probe.appends.push(entry);
      buffer.addEventListener('updateend', () => {
        entry.buffered = probe.ranges(buffer);
      }, {once: true});
      return append.call(this, data);
    };
    return buffer;
  };
})();"""

# After the page loaded: the output tap and the frame recorder.
TAP = """async (rate) => {
  const probe = window.__probe;
  const video = document.getElementById('video');
  const context = probe.context = new AudioContext({sampleRate: rate});
  const worklet = `registerProcessor('recorder', class extends AudioWorkletProcessor {
    process(inputs, outputs) {
      const input = inputs[0][0];
      if (input) { this.port.postMessage([currentFrame, input.slice(0)]); outputs[0][0].set(input); }
      return true;
    }
  });`;
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([worklet], {type: 'text/javascript'})));
  const recorder = new AudioWorkletNode(context, 'recorder', {channelCount: 1, channelCountMode: 'explicit',
                                                             outputChannelCount: [1]});
  probe.blocks = [];       // [context frame of the block's first sample, Float32Array]
  probe.clock = [];        // [contextTime, performanceTime] pairs from getOutputTimestamp
  recorder.port.onmessage = (e) => {
    probe.blocks.push(e.data);
    const t = context.getOutputTimestamp();
    if (t.performanceTime) probe.clock.push([t.contextTime, t.performanceTime]);
  };
  context.createMediaElementSource(video).connect(recorder).connect(context.destination);
  await context.resume();
  probe.frames = [];
  const canvas = Object.assign(document.createElement('canvas'), {width: 8, height: 8});
  const draw = canvas.getContext('2d', {willReadFrequently: true});
  const onFrame = (now, frame) => {
    draw.drawImage(video, 0, 0, 8, 8);
    const px = draw.getImageData(0, 0, 8, 8).data;
    const mean = [0, 1, 2].map(c => { let s = 0; for (let i = c; i < px.length; i += 4) s += px[i]; return s / 64; });
    probe.frames.push({now, shown: frame.expectedDisplayTime, mediaTime: frame.mediaTime,
                       currentTime: video.currentTime, presented: frame.presentedFrames, rgb: mean});
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  return context.sampleRate;
}"""

SAMPLE = """() => {
  const v = document.getElementById('video');
  const p = window.flashheadPage;
  const m = p ? p.metrics : {};
  return {at: performance.now(), currentTime: v.currentTime, paused: v.paused, readyState: v.readyState,
          muted: v.muted, secondsSent: m.secondsSent, piecesSent: m.piecesSent, framesPresented: m.framesPresented,
          identity: m.identity, player: m.player, server: m.server,
          status: document.getElementById('status').innerText, error: document.getElementById('error').hidden ? null :
          document.getElementById('error').innerText};
}"""

# Everything recorded, made JSON-able (binary as base64).
COLLECT = """() => {
  const probe = window.__probe;
  const b64 = (buffers) => {
    const total = buffers.reduce((n, b) => n + b.byteLength, 0);
    const all = new Uint8Array(total);
    let at = 0;
    for (const b of buffers) { all.set(new Uint8Array(b), at); at += b.byteLength; }
    let s = '';
    for (let i = 0; i < all.length; i += 0x8000) s += String.fromCharCode(...all.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const blocks = probe.blocks || [];
  const m = window.flashheadPage.metrics;
  return {
    sent_b64: b64(probe.sent), sent_at: probe.sentAt, sent_bytes: probe.sent.map(b => b.byteLength),
    played_b64: b64(blocks.map(b => b[1].buffer)),
    block_frames: blocks.map(b => b[0]), clock: probe.clock || [], frames: probe.frames || [],
    appends: probe.appends,
    buffered: probe.sourceBuffers.map(({mime, buffer}) => {
      try { return {mime, ranges: probe.ranges(buffer)}; }
      catch (e) { return {mime, ranges: null}; }   // removed from its MediaSource once the stream ended
    }),
    metrics: {firstPieceSentAt: m.firstPieceSentAt, firstFrameAt: m.firstFrameAt, latency: m.latency,
              firstFrameLatency: m.firstFrameLatency, secondsSent: m.secondsSent, piecesSent: m.piecesSent,
              identity: m.identity},
    session: window.flashheadPage.session,
    tap: {rate: probe.context.sampleRate, baseLatency: probe.context.baseLatency,   // known once it has played
          outputLatency: probe.context.outputLatency},
  };
}"""


def push_as_tts(shown: str, wav: Path, piece_seconds: float = 1.0) -> dict:
    """What a text-to-speech program does with the page's instructions: POST the speech (s16le mono 16 kHz) in
    pieces to the URL shown, with the header shown, as fast as it can, `&end=1` on the last piece."""
    url = re.search(r"'(http[^']*\?rate=16000)'", shown).group(1)
    headers = dict(re.findall(r"-H '([^:']+): ([^']+)'", shown))
    with wave.open(str(wav)) as f:
        if (f.getframerate(), f.getnchannels(), f.getsampwidth()) != (16000, 1, 2):
            raise SystemExit(f"{wav}: --source external pushes 16 kHz mono 16-bit WAVs as they are")
        pcm = f.readframes(f.getnframes())
    step = int(piece_seconds * 16000) * 2
    pieces = [pcm[i: i + step] for i in range(0, len(pcm), step)]
    answers = []
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        request = urllib.request.Request(url + ("&end=1" if last else ""), data=piece, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answers.append([answer.status, json.loads(answer.read())])
    return {"url": url, "headers": sorted(headers), "pieces": len(pieces), "answers": answers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="the page, e.g. http://127.0.0.1:8188/?token=...")
    ap.add_argument("--portrait", action="append", required=True, help="a portrait image (repeat for identities)")
    ap.add_argument("--wav", required=True, help="the speech (WAV): the fake microphone's, or the file uploaded")
    ap.add_argument("--source", choices=["microphone", "file", "external"], default="microphone",
                    help="the page's speech source; external: the driver is the text-to-speech program, pushing the "
                         "WAV at once (faster than real time) to the URL the page shows")
    ap.add_argument("--speech-seconds", type=float, required=True, help="microphone: press End speech once this "
                                                                        "much has been sent")
    ap.add_argument("--size", type=int, default=64, help="width and height asked for")
    ap.add_argument("--switch-to", default=None, help="identity to switch to mid-stream (a button's name)")
    ap.add_argument("--switch-after", type=float, default=1.5, help="video seconds played before the switch")
    ap.add_argument("--echo-cancellation", choices=["on", "off"], default="on", help="the page's checkbox")
    ap.add_argument("--bad-portrait", default=None, help="afterwards: Stop, start with this file as the portrait, "
                                                         "report the page's error message")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args(argv)
    sync_playwright = browser_support.sync_playwright()
    if sync_playwright is None:
        return 2
    if not Path(args.chromium).exists():
        print(f"error: no Chromium at {args.chromium} (apt-get install -y chromium)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"samples": [], "switch": None, "end_speech_at": None, "console_errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=[
            "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={args.wav}%noloop"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            context.add_init_script(script=HOOKS)
            page = context.new_page()
            console = []
            browser_support.record_console(page, console)
            http_errors = []
            page.on("response", lambda r: http_errors.append([r.status, r.url]) if r.status >= 400 else None)
            page.goto(args.url, wait_until="networkidle", timeout=int(args.timeout * 1000))
            page.wait_for_function("() => window.flashheadPage", timeout=30000)
            page.evaluate(TAP, PLAYED_RATE)
            page.set_input_files("#portraits", args.portrait)
            page.fill("#width", str(args.size))
            page.fill("#height", str(args.size))
            page.check(f"input[name=source][value={args.source}]")
            page.select_option("#transport", "mse")  # the Media Source path (WebRTC: webrtc_browser.py)
            if args.source == "microphone":
                page.set_checked("#echo-cancellation", args.echo_cancellation == "on")
            elif args.source == "file":
                page.set_input_files("#audio", args.wav)
            page.click("#start")
            if args.source == "external":
                page.wait_for_selector("#external:not([hidden])", timeout=30000)
                report["pushed"] = push_as_tts(page.inner_text("#curl-example"), Path(args.wav))
            t0 = time.monotonic()
            last_growth, last_time, shot_taken = time.monotonic(), -1.0, False
            while time.monotonic() - t0 < args.timeout:
                sample = page.evaluate(SAMPLE)
                report["samples"].append(sample)
                if sample["error"]:
                    report["error"] = sample["error"]
                    break
                if sample["currentTime"] > last_time + 1e-3:
                    last_growth, last_time = time.monotonic(), sample["currentTime"]
                if (args.switch_to and report["switch"] is None and sample["currentTime"] >= args.switch_after):
                    page.click(f"#identity-buttons button[data-identity='{args.switch_to}']")
                    page.wait_for_function(f"() => flashheadPage.metrics.identity === {json.dumps(args.switch_to)}"
                                           " || !document.getElementById('error').hidden", timeout=15000)
                    after = page.evaluate(SAMPLE)
                    report["switch"] = {"at": sample["at"], "currentTime": sample["currentTime"],
                                        "secondsSent": sample["secondsSent"], "identity_after": after["identity"],
                                        "error": after["error"],
                                        "pressed": page.get_attribute(f"#identity-buttons button[data-identity="
                                                                      f"'{args.switch_to}']", "aria-pressed")}
                if report["end_speech_at"] is None and (sample["secondsSent"] or 0) >= args.speech_seconds:
                    page.click("#end-speech")
                    report["end_speech_at"] = sample["at"]
                switched_long_ago = report["switch"] and sample["currentTime"] > report["switch"]["currentTime"] + 2.5
                behind_shown = args.source == "external" and "behind by" in sample["status"] and last_time > 1
                if not shot_taken and (switched_long_ago or behind_shown or (sample["player"] or {}).get("ended")):
                    page.screenshot(path=args.screenshot, full_page=True)
                    shot_taken = True
                if (sample["player"] or {}).get("ended") and time.monotonic() - last_growth > 1.0:
                    break
                nothing_to_wait_for = args.source != "microphone" or report["end_speech_at"] is not None
                if nothing_to_wait_for and last_time > 0 and time.monotonic() - last_growth > 15.0:
                    report["stalled"] = True
                    break
                page.wait_for_timeout(100)
            if not shot_taken:
                page.screenshot(path=args.screenshot, full_page=True)
            report["screenshot"] = args.screenshot
            collected = page.evaluate(COLLECT)
            (out / "sent.s16").write_bytes(base64.b64decode(collected.pop("sent_b64")))
            (out / "played.f32").write_bytes(base64.b64decode(collected.pop("played_b64")))
            report.update(collected, sent=str(out / "sent.s16"), played=str(out / "played.f32"),
                          played_rate=PLAYED_RATE)
            report["console_errors"] = browser_support.page_errors(console)
            report["http_errors"] = list(http_errors)
            if args.bad_portrait:
                page.click("#stop")
                page.set_input_files("#portraits", args.bad_portrait)
                page.click("#start")
                page.wait_for_selector("#error:not([hidden])", timeout=30000)
                report["bad_portrait"] = {"error": page.inner_text("#error"), "status": page.inner_text("#status"),
                                          "http_errors": http_errors[len(report["http_errors"]):],
                                          "start_enabled": page.is_enabled("#start")}
        finally:
            browser.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
