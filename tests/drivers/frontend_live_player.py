#!/usr/bin/env python3
"""The live player in the real ComfyUI frontend: run with the host venv's Python (playwright), system Chromium.

Not a test module: tests/test_comfy_host.py runs it against a ComfyUI that check_pack.py has started (the pack loaded,
tiny checkpoints and inputs placed), with a UI workflow whose speech lasts long enough to watch (tens of seconds).
It opens the page headless, drops the workflow on it and queues it from the page (app.queuePrompt, as the Run button)
twice, with a new seed each time (tests/drivers/frontend_video_player.py holds the page scripts both use):

1. live: the page itself records, every 100 ms, the Talking Video node's live <video> (currentTime, seconds buffered
   ahead, the player's status and label, whether a preview image shows) and, once the live player has left, the
   finished MP4's <video> (currentTime, paused): recorded in the page, so a busy machine that slows this script
   does not change what is judged. Once the first chunk has arrived it opens a second tab of the same browser (the
   workflow restored from the browser's storage, or dropped on it where the frontend opens a blank one), which must
   join the running stream from GET /flashhead/live?workflow=<id> (recorded the same way); after the prompt, waits
   for the finished MP4 player.
2. interrupt: once the live video plays, POST /interrupt; the prompt must end interrupted and the player must end
   with the reason, no page error.
Screenshots: <prefix>_live.png (mid-run), <prefix>_finished.png, <prefix>_joined.png, <prefix>_interrupted.png.
Prints one JSON line {"frontend_version", "live": {...}, "interrupt": {...}, "console_errors": [...]}.
Exit 0 when the page could be driven (judging the report is the caller's job), 2 when it could not be used at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import browser_support
from frontend_video_player import NODE_TYPE, QUEUE, STATE, WATCH, drop_workflow

# The node's live player right now (web/flashhead.js keeps it on node.flashHeadLive while it exists).
LIVE = """(nodeId) => {
  const node = app.graph.getNodeById(nodeId);
  const live = node?.flashHeadLive;
  const widget = (node?.widgets || []).find(w => w.name === 'flashhead-live');
  const video = live?.video || widget?.element?.querySelector?.('video') || null;
  const b = video?.buffered;
  return {widget: !!widget, stream: live?.stream || null, status: live?.status || null,
          label: live?.label?.textContent || null, graph_id: app.graph.id || null,
          video: video && {currentTime: video.currentTime, readyState: video.readyState, paused: video.paused,
                           videoWidth: video.videoWidth, buffered_end: b && b.length ? b.end(b.length - 1) : 0,
                           src: video.src,
                           rect: (({x, y, width, height}) => ({x, y, width, height}))(video.getBoundingClientRect())}};
}"""

# Recorded in the page every 100 ms until stopped: the live player while there is one, then the finished video.
RECORD = """(nodeId) => {
  const rec = window.__fhRec = {samples: []};
  const finished = (node) => {
    const widget = (node.widgets || []).find(w => w.name === 'video-preview');
    const el = widget?.element;
    return (el?.tagName === 'VIDEO' ? el : el?.querySelector?.('video'))
      || document.querySelector(`[data-node-id="${nodeId}"] video`);
  };
  rec.timer = setInterval(() => {
    const node = app.graph.getNodeById(nodeId);
    const live = node?.flashHeadLive, t = performance.now() / 1000;
    const done = Object.keys(window.__fh?.done || {}).length;
    if (live) {
      const v = live.video, b = v.buffered;
      let ahead = 0;
      for (let i = 0; i < b.length; i++)
        if (b.start(i) <= v.currentTime + 0.05 && v.currentTime < b.end(i)) ahead = b.end(i) - v.currentTime;
      rec.samples.push({t, live: true, ct: v.currentTime, ahead, paused: v.paused, done,
                        streamEnded: !!live.status?.ended, waiting: !!live.status?.waiting,
                        segment: live.status?.segment ?? -1, joined: live.status?.joined ?? -1,
                        label: live.label?.textContent || null, previews: (node.imgs || []).some(i => String(i?.src ?? '').startsWith('blob:'))});
    } else {
      const v = node && finished(node);
      rec.samples.push({t, live: false, done, finished: v ? {ct: v.currentTime, paused: v.paused,
                                                            src: v.currentSrc || v.src} : null});
    }
  }, 100);
}"""

FIND_NODE = f"() => (app.graph._nodes || app.graph.nodes).find(n => n.type === '{NODE_TYPE}')?.id ?? null"
DONE = "() => ({events: window.__fh.events, done: window.__fh.done})"
# What the routes give a page: the running streams of its workflow (none of another one, 400 without one), and 404
# for an id this ComfyUI did not create.
ROUTES = """async (stream) => {
  const url = (path) => window.comfyAPI?.api?.api?.apiURL?.(path) ?? '/api' + path;
  const listed = await (await fetch(url(`/flashhead/live?workflow=${encodeURIComponent(app.graph.id)}`))).json();
  const other = await (await fetch(url('/flashhead/live?workflow=another-workflow'))).json();
  const unnamed = await fetch(url('/flashhead/live'));
  const forged = await fetch(url('/flashhead/live/' + 'A'.repeat(22)));
  const bad = await fetch(url(`/flashhead/live/${stream}/segments/-1/video`));
  return {listed, other, unnamed: unnamed.status, forged: forged.status, bad_index: bad.status};
}"""
INTERRUPT = "async () => { await fetch(window.comfyAPI?.api?.api?.apiURL?.('/interrupt') ?? '/api/interrupt'," \
            " {method: 'POST'}); }"


def open_page(context, port: int, ms: int, console: list, name: str = "tab 1"):
    page = context.new_page()
    browser_support.record_console(page, console, name)
    mark = len(console)
    page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle", timeout=ms)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=ms)
    # that poll itself makes frontend 1.49 log this while the app starts (as frontend_video_player.py notes)
    console[mark:] = [c for c in console[mark:] if "graph accessed before initialization" not in c[1]]
    page.keyboard.press("Escape")
    page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(e => e.remove())")
    return page


def queue(page, seed: int) -> dict:
    return page.evaluate(QUEUE, [NODE_TYPE, seed])


def prompt_outcome(page, queued: dict) -> tuple[str | None, str | None]:
    fh = page.evaluate(DONE)
    prompt_id = next((e[1] for e in fh["events"][queued["before"]:] if e[1]), None)
    return prompt_id, fh["done"].get(prompt_id) if prompt_id else None


def live_run(context, page, port: int, args, ms: int, console: list) -> dict:
    queued = queue(page, args.seed)
    node_id = queued["node_id"]
    page.evaluate(RECORD, node_id)
    report = {"joined": None}
    t0 = time.monotonic()
    status, shot_taken, second = None, False, None
    while time.monotonic() - t0 < args.timeout:
        live = page.evaluate(LIVE, node_id)
        prompt_id, status = prompt_outcome(page, queued)
        if status:
            break
        arrived = live["video"] and (live["status"] or {}).get("segment", -1) >= 0
        if arrived and "routes" not in report:
            report["live_state"] = live
            report["routes"] = page.evaluate(ROUTES, live["stream"])
        if arrived and second is None:   # a second tab opened mid-run joins at the live edge
            second = open_page(context, port, ms, console, "tab 2")
            restored = second.evaluate(FIND_NODE) is not None
            if not restored:   # a frontend that opens a new tab on a blank workflow (1.49): open it there, as a user
                drop_workflow(second, args.workflow_text, Path(args.workflow).name, ms)
            second_node = second.evaluate(FIND_NODE)
            report["joined"] = {"node_found": second_node is not None, "restored": restored,
                                "graph_id": second.evaluate("() => app.graph.id || null")}
            if second_node is not None:
                second.evaluate(RECORD, second_node)
        if arrived and not shot_taken and live["video"]["currentTime"] > 1.0:
            page.mouse.move(900, 980)
            page.screenshot(path=f"{args.screenshot_prefix}_live.png")
            if second is not None:
                second.screenshot(path=f"{args.screenshot_prefix}_joined.png")
            shot_taken = True
        page.wait_for_timeout(250)
    report.update(prompt_id=prompt_id, status=status, seconds=round(time.monotonic() - t0, 1))
    # the finished MP4 takes the live player's place
    t1 = time.monotonic()
    while time.monotonic() - t1 < 30:
        video = page.evaluate(STATE, node_id)["video"]
        if video and video["readyState"] >= 1 and (video["duration"] or 0) > 0 and "/view?" in video["src"]:
            break
        page.wait_for_timeout(200)
    page.mouse.move(900, 980)
    page.wait_for_timeout(2000)   # the finished video goes on from where the live one was: let it play a little
    report["finished_video"] = page.evaluate(STATE, node_id)["video"]
    report["live_after"] = page.evaluate(LIVE, node_id)
    page.screenshot(path=f"{args.screenshot_prefix}_finished.png")
    report["samples"] = page.evaluate("() => { clearInterval(window.__fhRec.timer); return window.__fhRec.samples; }")
    if second is not None:
        if report["joined"]["node_found"]:
            report["joined"]["samples"] = second.evaluate(
                "() => { clearInterval(window.__fhRec.timer); return window.__fhRec.samples; }")
        second.close()
    return report


def interrupt_run(page, args) -> dict:
    queued = queue(page, args.seed + 1)
    node_id = queued["node_id"]
    report = {"interrupted_at": None}
    t0 = time.monotonic()
    status = None
    while time.monotonic() - t0 < args.timeout:
        live = page.evaluate(LIVE, node_id)
        prompt_id, status = prompt_outcome(page, queued)
        if status:
            break
        if report["interrupted_at"] is None and live["video"] and live["video"]["currentTime"] > 0.5:
            report["interrupted_at"] = live["video"]["currentTime"]
            page.evaluate(INTERRUPT)
        page.wait_for_timeout(200)
    report.update(prompt_id=prompt_id, status=status)
    t1 = time.monotonic()
    while time.monotonic() - t1 < 20:   # the player ends by itself: the stream ends with the reason
        live = page.evaluate(LIVE, node_id)
        if (live["status"] or {}).get("ended"):
            break
        page.wait_for_timeout(200)
    page.mouse.move(900, 980)
    page.wait_for_timeout(300)
    report["live_after"] = page.evaluate(LIVE, node_id)
    page.screenshot(path=f"{args.screenshot_prefix}_interrupted.png")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workflow", required=True, help="UI-format workflow JSON (long speech)")
    ap.add_argument("--screenshot-prefix", required=True)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=400.0)
    args = ap.parse_args(argv)
    sync_playwright = browser_support.sync_playwright()
    if sync_playwright is None:
        return 2
    wf_path = Path(args.workflow)
    args.workflow_text = wf_path.read_text()
    ms = int(120 * 1000)
    console: list = []
    report: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = open_page(context, args.port, ms, console)
            drop_workflow(page, wf_path.read_text(), wf_path.name, ms)
            before = len(console)
            report.update(page.evaluate(WATCH, NODE_TYPE))
            report["live"] = live_run(context, page, args.port, args, ms, console)
            report["interrupt"] = interrupt_run(page, args)
            report["console_errors"] = browser_support.page_errors(
                console[before:], browser_support.COMFYUI_OFFLINE_NOISE, comfyui=True)
        finally:
            browser.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
