// FlashHead Talking Video in ComfyUI's frontend: show the finished video, not the last per-chunk preview.
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
// is handled after "executed"): until the node runs again, preview (blob:) images are refused and the store entry
// that would bring them back is dropped, so the player stays alone.
const isPreview = (imgs) => Array.isArray(imgs) && imgs.some((img) => String(img?.src ?? "").startsWith("blob:"));

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
        if (node.flashHeadFinished && isPreview(value)) {
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
      this.flashHeadFinished = true;
      delete app.nodePreviewImages?.[locator(this)];
      this.imgs = undefined;
      this.preview = undefined;
      dropWidgets(this, ["$$canvas-image-preview", "$$comfy_animation_preview"]);
      this.setDirtyCanvas?.(true, true);
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
    });
  },
});
