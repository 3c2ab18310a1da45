// FlashHead Talking Video in ComfyUI's frontend: the video plays live in the node while it is generated, then the
// finished video shows, not the last per-chunk preview.
//
// Live: the node's execution streams what it writes (nodes/live.py); the websocket event `flashhead.live` {node,
// display_node, prompt_id, stream} reaches the tab that queued the prompt, which plays the stream in the node with
// the LivePlayer (flashhead_core/live/static/player.js, served at /flashhead/player.js). A tab opened mid-run asks
// GET /flashhead/live?workflow=<id> and joins the stream of its own workflow. While the live player shows, the
// node's per-step previews are not shown (the player is the preview); when the player has played all it has, its
// label says that it waits for the model. When the node has executed, the live player gives way to the finished MP4,
// which goes on from where the live one was (playing if it played); after a cancel or an error the live player
// stays, stopped, with the reason, until the node runs again.
//
// The frontend keeps a node's progress previews (app.nodePreviewImages) until the node next runs and prefers them
// over its output, so once the node has executed its previews are dropped; when it starts again its old output is
// dropped, so the new run's previews show.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TYPE = "FlashHeadTalkingVideo";
const locator = (node) => {
  const graph = node.graph;
  return graph && graph.rootGraph && graph !== graph.rootGraph ? `${graph.id}:${node.id}` : String(node.id);
};
const dropWidgets = (node, names) => {
  if (!node.widgets) return;
  for (let i = node.widgets.length - 1; i >= 0; i--) {
    if (names.includes(node.widgets[i].name)) {
      node.widgets[i].onRemove?.();
      node.widgets.splice(i, 1);
    }
  }
};

// A preview can still land after the node has executed (its image loads asynchronously, or a last preview message
// is handled after "executed"), and the previews of a run would show under its live player: while the live player
// shows and once the node has executed (until it runs again), preview (blob:) images are refused and the store entry
// that would bring them back is dropped, so the player stays alone.
const isPreview = (imgs) => Array.isArray(imgs) && imgs.some((img) => String(img?.src ?? "").startsWith("blob:"));

// --- live playback
const LIVE_EVENT = "flashhead.live";
const LIVE_WIDGET = "flashhead-live";
let livePlayerModule = null;
const livePlayerClass = async () => {
  livePlayerModule ??= import(api.apiURL("/flashhead/player.js"));
  return (await livePlayerModule).LivePlayer;
};

const liveLabel = (status) => {
  if (status.error) return `stopped: ${status.error}`;
  if (status.ended) return "LIVE · all chunks received";
  if (status.segment < 0) return "LIVE · waiting for the first chunk";
  if (status.waiting) return "LIVE · waiting for the model";
  return status.muted ? "LIVE · muted" : "LIVE";
};

const PREVIEW_WIDGETS = ["$$canvas-image-preview", "$$comfy_animation_preview"];
const dropPreviews = (node) => {
  delete app.nodePreviewImages?.[locator(node)];
  node.imgs = undefined;
  node.preview = undefined;
  dropWidgets(node, PREVIEW_WIDGETS);
};

// The <video> of the node's finished MP4 (the frontend's own player: a DOM widget, or the node's DOM in Vue nodes).
const finishedVideo = (node) => {
  const widget = (node.widgets || []).find((w) => w.name === "video-preview");
  const element = widget?.element;
  return (element?.tagName === "VIDEO" ? element : element?.querySelector?.("video"))
    || node.videoContainer?.querySelector?.("video")
    || document.querySelector(`[data-node-id="${node.id}"] video`);
};

// Where the live player was when the node finished: the finished MP4 goes on from there, playing if it played. The
// frontend makes its player within a few frames and may set its source more than once (each load starts at 0:00),
// so for a few seconds every newly loaded source of the node's <video> is put at that position.
async function continueFinished(node, at) {
  if (!at || at.time <= 0) return;
  const placed = new WeakMap();   // <video> -> the source it was put at `at` for
  for (let tries = 0; tries < 60 && node.flashHeadFinished; tries++) {
    const video = finishedVideo(node);
    const source = video?.currentSrc || video?.src;
    if (video && !placed.has(video)) {
      placed.set(video, null);
      video.addEventListener("loadedmetadata", () => placed.set(video, null));   // loaded again: put it again
    }
    if (video && source && video.readyState >= 1 && placed.get(video) !== source) {
      placed.set(video, source);
      video.currentTime = Math.min(at.time, Math.max(0, video.duration - 0.05));
      if (at.playing && at.time < video.duration - 0.1) {   // else it had played it all: its last frame stays
        video.muted = at.muted;
        video.play().catch(() => { video.muted = true; return video.play().catch(() => {}); });
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const stopLive = (node) => {
  const live = node.flashHeadLive;
  if (!live) return null;
  const video = live.video;
  const at = { time: video.currentTime, playing: !video.paused && live.status.playing, muted: video.muted };
  node.flashHeadLive = undefined;
  live.player?.stop();
  dropWidgets(node, [LIVE_WIDGET]);
  node.setSize?.(live.size);   // the size it had before: the finished video's player lays itself out as without it
  return at;
};

// Play stream `stream` in the node (replacing any other stream it played).
async function startLive(node, stream) {
  if (node.flashHeadLive?.stream === stream) return;
  stopLive(node);
  const container = document.createElement("div");
  container.className = "flashhead-live";
  container.style.cssText = "position:relative;width:100%;height:100%;background:#000;overflow:hidden";
  const video = document.createElement("video");
  Object.assign(video, { autoplay: true, playsInline: true, controls: false });
  video.style.cssText = "width:100%;height:100%;object-fit:contain;display:block";
  const label = document.createElement("div");
  label.className = "flashhead-live-status";
  label.style.cssText = "position:absolute;top:4px;left:6px;padding:1px 6px;border-radius:3px;font:11px sans-serif;"
    + "color:#fff;background:rgba(190,0,0,0.85);pointer-events:none";
  container.append(video, label);
  const live = { stream, video, label, status: { segment: -1, ended: false, error: null }, player: null,
                 size: [...node.size] };
  dropPreviews(node);   // the live player is this run's preview
  label.textContent = liveLabel(live.status);
  node.flashHeadLive = live;
  const widget = node.addDOMWidget(LIVE_WIDGET, "video", container, { hideOnZoom: false, serialize: false });
  widget.serialize = false;
  let aspect = 1;
  widget.computeLayoutSize = () => ({ minHeight: Math.max(64, (node.size?.[0] || 256) / aspect), minWidth: 64 });
  video.addEventListener("loadedmetadata", () => {
    aspect = video.videoWidth / video.videoHeight || 1;
    node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    node.setDirtyCanvas?.(true, true);
  });
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  const LivePlayer = await livePlayerClass();
  if (node.flashHeadLive !== live) return;   // replaced or stopped while the player loaded
  live.player = new LivePlayer(video, api.apiURL(`/flashhead/live/${stream}`), {
    onStatus: (status) => {
      live.status = status;
      label.textContent = liveLabel(status);
      label.style.background = status.error ? "rgba(60,60,60,0.85)" : "rgba(190,0,0,0.85)";
    },
  });
  live.player.start();
}

const liveNode = (id) => {
  const node = id != null && app.graph?.getNodeById(id);
  return node && node.comfyClass === TYPE ? node : null;
};

// A tab opened (or a workflow loaded) while a prompt runs: join the running stream of a Talking Video node of this
// very workflow (the workflow id the prompt was queued with, as saved in it; an API prompt without one is not joined).
async function joinRunningStreams() {
  try {
    const workflow = app.graph?.id;
    if (!workflow) return;
    const response = await api.fetchApi(`/flashhead/live?workflow=${encodeURIComponent(workflow)}`,
                                        { cache: "no-store" });
    if (!response.ok) return;
    for (const stream of await response.json()) {
      const node = stream.workflow === app.graph?.id && liveNode(stream.display_node);
      if (node && !node.flashHeadLive) startLive(node, stream.id);
    }
  } catch (error) {
    console.warn("FlashHead: could not list the running live streams", error);
  }
}

app.registerExtension({
  name: "FlashHead.TalkingVideo",
  nodeCreated(node) {
    if (node.comfyClass !== TYPE) return;
    let imgs = node.imgs;
    Object.defineProperty(node, "imgs", {
      configurable: true,
      enumerable: true,
      get: () => imgs,
      set(value) {
        if ((node.flashHeadFinished || node.flashHeadLive) && isPreview(value)) {
          delete app.nodePreviewImages?.[locator(node)];
          return;
        }
        imgs = value;
      },
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TYPE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function () {
      onExecuted?.apply(this, arguments);
      const at = stopLive(this);   // the finished MP4 takes the live player's place, from where it was
      this.flashHeadFinished = true;
      dropPreviews(this);
      this.setDirtyCanvas?.(true, true);
      continueFinished(this, at);
    };
  },
  setup() {
    api.addEventListener("executing", ({ detail }) => {
      const node = detail != null && app.graph.getNodeById(detail);
      if (!node || node.comfyClass !== TYPE) return;
      node.flashHeadFinished = false;
      delete app.nodeOutputs?.[locator(node)];
      node.images = undefined;
      node.animatedImages = false;
      node.previewMediaType = undefined;
      node.videoContainer = undefined;
      dropWidgets(node, ["video-preview"]);
      stopLive(node);   // a stopped stream of the previous run; this run's arrives as LIVE_EVENT
    });
    api.addEventListener(LIVE_EVENT, ({ detail }) => {
      const node = liveNode(detail?.display_node) || liveNode(detail?.node);
      if (node && detail.stream) startLive(node, detail.stream);
    });
  },
  afterConfigureGraph() {   // a workflow was loaded (at start-up, opened, a tab switched): join its running stream
    joinRunningStreams();
  },
});
