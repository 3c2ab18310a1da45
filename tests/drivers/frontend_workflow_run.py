#!/usr/bin/env python3
"""A shipped workflow after a run, as the user sees it: run with the host venv's Python (playwright), system Chromium.

Not a test module: tests/test_comfy_host.py runs it against a ComfyUI that check_pack.py has started (the pack loaded,
tiny checkpoints placed; the example inputs are the pack's own), after check_pack ran the workflow.
It opens the page headless (1600x1000), drops the UI workflow on it, queues it from the page (app.queuePrompt, what
the Run button calls), waits for the prompt to end and for the nodes to show what they got (previews, videos, the
loaded portrait), then reports every node's rectangle on the canvas (title bar included) and every pair that
overlaps, and saves a screenshot with the whole graph in view. Prints one JSON line
  {"version", "nodes_loaded", "missing_node_types", "status", "nodes": [{"id", "type", "title", "rect": [x, y, w, h]}],
   "overlaps": [[id, id, area]],
   "alerts": [...], "screenshot", "console_errors": [...]}
Exit 0 when the page could be driven (judging the report is the caller's job), 2 when it could not be used at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import browser_support
from frontend_video_player import drop_workflow

QUEUE = """async () => {
  const api = window.comfyAPI?.api?.api || app.api;
  const w = window.__fhRun = {done: null};
  for (const t of ['execution_success', 'execution_error', 'execution_interrupted'])
    api.addEventListener(t, () => { w.done = w.done || t; });
  await app.queuePrompt(0, 1);
}"""

# Every node's rectangle in canvas units, the title bar included (LiteGraph's bounding box), and the overlapping pairs.
RECTS = """() => {
  const nodes = app.graph._nodes || app.graph.nodes;
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const rect = (n) => {
    const b = n.boundingRect;
    if (b && b.length === 4 && b[2] > 0) return [b[0], b[1], b[2], b[3]];
    return [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title];
  };
  const list = nodes.map(n => ({id: n.id, type: n.type, title: n.title, rect: rect(n)}));
  const overlaps = [];
  for (let i = 0; i < list.length; i++)
    for (let j = i + 1; j < list.length; j++) {
      const [a, b] = [list[i].rect, list[j].rect];
      const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
      const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
      if (w > 0 && h > 0) overlaps.push([list[i].id, list[j].id, Math.round(w * h)]);
    }
  return {nodes: list, overlaps};
}"""

# The whole graph in view (LiteGraph: screen = (canvas + offset) * scale), then a redraw.
FIT = """(rects) => {
  const xs = rects.map(r => r[0]), ys = rects.map(r => r[1]);
  const x1 = Math.max(...rects.map(r => r[0] + r[2])), y1 = Math.max(...rects.map(r => r[1] + r[3]));
  const [x0, y0] = [Math.min(...xs), Math.min(...ys)];
  const el = app.canvas.canvas, pad = 40, left = 100, top = 70;   // clear of the side bar and the top menu
  const scale = Math.min((el.clientWidth - left - pad) / (x1 - x0), (el.clientHeight - top - pad) / (y1 - y0), 1);
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [left / scale - x0, top / scale - y0];
  app.canvas.setDirty(true, true);
  app.canvas.draw?.(true, true);
}"""

LOADED = """() => {
  const nodes = app.graph._nodes || app.graph.nodes, known = LiteGraph.registered_node_types || {};
  return {nodes_loaded: nodes.length, missing_node_types: [...new Set(nodes.map(n => n.type).filter(t => !known[t]))]};
}"""

ALERTS = """() => [...document.querySelectorAll('.p-toast-message, .p-dialog, [data-testid="error-overlay"]')]
  .map(e => e.innerText.trim()).filter(Boolean)"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workflow", required=True, help="UI-format workflow JSON")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    sync_playwright = browser_support.sync_playwright()
    if sync_playwright is None:
        return 2
    path = Path(args.workflow)
    ms = int(args.timeout * 1000)
    report: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            console: list = []
            browser_support.record_console(page, console)
            page.goto(f"http://127.0.0.1:{args.port}/", wait_until="networkidle", timeout=ms)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=ms)
            page.keyboard.press("Escape")
            page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(e => e.remove())")
            drop_workflow(page, path.read_text(), path.name, ms)
            before = len(console)
            report["version"] = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || null")
            report.update(page.evaluate(LOADED))
            page.evaluate(QUEUE)
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.timeout and not page.evaluate("() => window.__fhRun.done"):
                page.wait_for_timeout(250)
            report["status"] = page.evaluate("() => window.__fhRun.done")
            # what the nodes got (a finished video, images) lays itself out on the next frames
            page.mouse.move(1590, 500)   # an empty spot: no hover tooltip
            page.wait_for_timeout(3000)
            report.update(page.evaluate(RECTS))
            report["alerts"] = page.evaluate(ALERTS)
            page.evaluate(FIT, [n["rect"] for n in report["nodes"]])
            page.wait_for_timeout(1500)
            page.screenshot(path=args.screenshot)
            report["screenshot"] = args.screenshot
            report["console_errors"] = browser_support.page_errors(
                console[before:], browser_support.COMFYUI_OFFLINE_NOISE, comfyui=True)
        finally:
            browser.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
