#!/usr/bin/env python3
"""The finished video in the real ComfyUI frontend: run with the host venv's Python (playwright), system Chromium.

Not a test module: tests/test_comfy_host.py runs it against a ComfyUI that check_pack.py has started (the pack loaded,
tiny checkpoints and inputs placed). It opens the page headless, drops the UI workflow on it as a user would, and then,
`--runs` times: sets the Talking Video node's seed to a new value (so the node really runs again, as a user changing the
seed would), queues the graph with the frontend's own app.queuePrompt (what the Run button calls), watches the node
while the prompt runs (per-step JPEG previews arrive as blob: images) and, once the prompt has finished, waits for the
node's DOM to hold a <video> whose src is /view?filename=...mp4 and that can play (readyState >= 1, duration > 0).
A screenshot of the page is written after each run. Prints one JSON line:
  {"frontend_version": ..., "runs": [{"prompt_id", "status", "preview_seen", "preview_srcs", "video": {src,
   readyState, duration, videoWidth, in_node_widget}, "images_shown", "screenshot"}], "console_errors": [...]}
Exit 0 when the page could be driven (judging the report is the caller's job), 2 when it could not be used at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import browser_support

NODE_TYPE = "FlashHeadTalkingVideo"

DROP = """async ([text, name]) => {
  const file = new File([text], name, {type: 'application/json'});
  const dt = new DataTransfer();
  dt.items.add(file);
  const target = document.querySelector('#graph-canvas') || document.body;
  const r = target.getBoundingClientRect();
  const at = {clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true, cancelable: true};
  for (const type of ['dragenter', 'dragover', 'drop'])
    target.dispatchEvent(new DragEvent(type, {...at, dataTransfer: dt}));
}"""

# Resolves once the graph has held `count` nodes for `ms` on end: a frontend may configure a dropped file twice (1.27
# re-loads it as its open workflow, clearing the graph first), so one look right after the drop can see it empty.
SETTLED = """([count, ms, limit]) => new Promise((resolve) => {
  const start = performance.now();
  let since = null;
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - start > limit) { clearInterval(timer); resolve(false); return; }
    if ((app.graph._nodes || app.graph.nodes).length !== count) { since = null; return; }
    since = since ?? now;
    if (now - since >= ms) { clearInterval(timer); resolve(true); }
  }, 50);
})"""


def drop_workflow(page, text: str, name: str, ms: int) -> None:
    """Drops a UI workflow on the canvas as a user would, and returns once the frontend has settled on its nodes."""
    count = len(json.loads(text)["nodes"])
    page.evaluate(DROP, [text, name])
    if not page.evaluate(SETTLED, [count, 1000, ms]):
        raise RuntimeError(f"the page did not settle on the {count} nodes of the dropped {name}")


# Listens to the frontend's own api object (the one extensions import from scripts/api.js).
WATCH = """(nodeType) => {
  const api = window.comfyAPI?.api?.api || app.api;
  const w = window.__fh = {events: [], previews: 0, done: {}, api_found: !!api};
  for (const t of ['execution_start', 'executing', 'executed', 'execution_success', 'execution_error',
                   'execution_interrupted'])
    api.addEventListener(t, ({detail}) => {
      const pid = detail?.prompt_id ?? null;
      w.events.push([t, pid, typeof detail === 'string' ? detail : (detail?.node ?? null)]);
      if (['execution_success', 'execution_error', 'execution_interrupted'].includes(t) && pid) w.done[pid] = t;
    });
  for (const t of ['b_preview', 'b_preview_with_metadata'])
    api.addEventListener(t, () => { w.previews++; });
  return {api_found: w.api_found, version: window.__COMFYUI_FRONTEND_VERSION__ || null};
}"""

QUEUE = """async ([nodeType, seed]) => {
  const node = (app.graph._nodes || app.graph.nodes).find(n => n.type === nodeType);
  const sw = node.widgets.find(w => w.name === 'seed');
  sw.value = seed;
  const ctl = node.widgets.find(w => w.name === 'control_after_generate');
  if (ctl) ctl.value = 'fixed';
  window.__fh.previews = 0;
  const before = window.__fh.events.length;
  await app.queuePrompt(0, 1);
  return {node_id: node.id, before};
}"""

# What the Talking Video node shows right now: preview images (blob: URLs) and the video element, if any.
STATE = """(nodeId) => {
  const node = app.graph.getNodeById(nodeId);
  const previewStore = app.nodePreviewImages || {};
  const imgs = (node.imgs || []).map(i => i.src);
  const widget = (node.widgets || []).find(w => w.name === 'video-preview');
  let video = widget?.element?.querySelector?.('video') || (widget?.element?.tagName === 'VIDEO' ? widget.element : null);
  const inWidget = !!video;
  // Nodes 2.0 (Vue nodes) render the node as DOM: [data-node-id] holds the player.
  if (!video) video = document.querySelector(`[data-node-id="${nodeId}"] video`);
  const v = video && {src: video.currentSrc || video.src, readyState: video.readyState,
                      duration: Number.isFinite(video.duration) ? video.duration : null,
                      videoWidth: video.videoWidth, videoHeight: video.videoHeight, in_node_widget: inWidget,
                      rect: (({x, y, width, height}) => ({x, y, width, height}))(video.getBoundingClientRect())};
  return {imgs, store: previewStore[String(nodeId)] || null, video: v,
          videos_in_page: document.querySelectorAll('video').length};
}"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workflow", required=True, help="UI-format workflow JSON")
    ap.add_argument("--screenshot-prefix", required=True, help="PNG path prefix: <prefix>_run<N>.png")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    sync_playwright = browser_support.sync_playwright()
    if sync_playwright is None:
        return 2
    wf_path = Path(args.workflow)
    ms = int(args.timeout * 1000)
    report = {"runs": [], "console_errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--autoplay-policy="
                                                                          "no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            console = []
            browser_support.record_console(page, console)
            page.goto(f"http://127.0.0.1:{args.port}/", wait_until="networkidle", timeout=ms)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=ms)
            page.keyboard.press("Escape")
            page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(e => e.remove())")
            drop_workflow(page, wf_path.read_text(), wf_path.name, ms)
            before = len(console)   # judged from here: polling app.graph above logs while the app starts
            report.update(page.evaluate(WATCH, NODE_TYPE))
            for index in range(args.runs):
                run = {"seed": args.seed + index}
                queued = page.evaluate(QUEUE, [NODE_TYPE, args.seed + index])
                node_id = queued["node_id"]
                t0 = time.monotonic()
                previews, prompt_id, status = set(), None, None
                while time.monotonic() - t0 < args.timeout:
                    state = page.evaluate(STATE, node_id)
                    previews.update(s for s in state["imgs"] + (state["store"] or []) if s.startswith("blob:"))
                    fh = page.evaluate("() => ({events: window.__fh.events, done: window.__fh.done,"
                                       " previews: window.__fh.previews})")
                    new = fh["events"][queued["before"]:]
                    prompt_id = next((e[1] for e in new if e[1]), prompt_id)
                    if prompt_id and prompt_id in fh["done"]:
                        status = fh["done"][prompt_id]
                        break
                    page.wait_for_timeout(100)
                run.update(prompt_id=prompt_id, status=status, preview_events=fh["previews"],
                           preview_seen=bool(previews), preview_srcs=sorted(previews)[:3],
                           node_executed=[e for e in new if e[0] == "executed"] != [])
                # the finished video: wait until the node shows a playable <video> (or give up after 30 s)
                video = None
                t1 = time.monotonic()
                while time.monotonic() - t1 < 30:
                    state = page.evaluate(STATE, node_id)
                    video = state["video"]
                    if video and video["readyState"] >= 1 and (video["duration"] or 0) > 0 and \
                            "/view?" in video["src"]:
                        break
                    page.wait_for_timeout(200)
                run["seconds_to_player"] = round(time.monotonic() - t1, 2)
                page.mouse.move(900, 980)             # an empty spot of the canvas: no hover tooltip
                page.wait_for_timeout(500)              # the DOM widget is placed over the canvas on the next frames
                state = page.evaluate(STATE, node_id)
                run["video"] = state["video"]
                run["images_shown"] = state["imgs"]
                run["videos_in_page"] = state["videos_in_page"]
                shot = f"{args.screenshot_prefix}_run{index + 1}.png"
                page.screenshot(path=shot)
                run["screenshot"] = shot
                report["runs"].append(run)
            report["console_errors"] = browser_support.page_errors(
                console[before:], browser_support.COMFYUI_OFFLINE_NOISE, comfyui=True)
        finally:
            browser.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
