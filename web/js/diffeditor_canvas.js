// DiffEditor Canvas: the front-end extension (ComfyUI's public extension API only).
//
// * nodeCreated: a DOM widget with the editor on every "DiffEditor Canvas" node (classic canvas), and an
//   "open canvas editor" button that opens the same editor in a dialog (the way in under the Vue "Nodes 2.0"
//   renderer, which in front end 1.27 draws neither DOM widgets nor LiteGraph mouse handlers of a node);
// * state lives in the node's own widgets (task, dx, dy, scale, editor JSON), so it travels in saved
//   workflows, copy/paste, undo/redo and API prompts; the editor widget text is hidden on the classic canvas
//   (the canvas edits it) and stays a plain, editable text field where the editor is not drawn;
// * the image comes from the Load Image node wired to the input (its file), else from the "executed" UI
//   output of the node's last run (the images it saw, saved like PreviewImage's).

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { CanvasEditor, openDialog } from "./canvas_editor.js";
import { parseImageRef, serializeState } from "./canvas_geometry.js";

const NODE_CLASS = "DiffEditorCanvas";
const UI_KEY = "diffeditor_canvas";
const controllers = new WeakMap(); // node -> NodeController (dropped with the node)

function viewURL(ref) {
  const q = new URLSearchParams({ filename: ref.filename, type: ref.type || "input", subfolder: ref.subfolder || "" });
  return api.apiURL(`/view?${q}`);
}

class NodeController {
  constructor(node) {
    this.node = node;
    this.version = 0;
    this.lastRun = null;
    this.loading = {}; // url -> {img, ok}
    this.maskCache = null;
    this.dialogs = new Set();
  }

  widget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  values() {
    const v = (name, d) => this.widget(name)?.value ?? d;
    return {
      task: String(v("task", "move")),
      dx: Number(v("dx", 0)),
      dy: Number(v("dy", 0)),
      scale: Number(v("scale", 1)),
      text: String(v("editor", "")),
    };
  }

  set(name, value) {
    const w = this.widget(name);
    if (!w || w.value === value) return;
    w.value = value;
    w.callback?.(value); // keeps the Vue node's copy of the value in step
  }

  commit({ state, dx, dy, scale }) {
    if (state !== undefined) this.set("editor", serializeState(state));
    if (dx !== undefined) this.set("dx", dx);
    if (dy !== undefined) this.set("dy", dy);
    if (scale !== undefined) this.set("scale", scale);
    this.node.setDirtyCanvas?.(true, true);
  }

  /** The upstream loader node of an input and the output slot it comes from, or null. A DiffEditor Paste
   *  Reference at scale 1 passes its image (slot 0) and mask (slot 1) through, so the editor shows the loaders'
   *  files before any run; at another scale the editor shows what the node saw in its last run. */
  upstream(inputName) {
    const slot = this.node.findInputSlot?.(inputName) ?? -1;
    if (slot < 0 || this.node.inputs?.[slot]?.link == null) return null;
    let node = this.node.getInputNode?.(slot);
    let from = this.node.getInputLink?.(slot)?.origin_slot ?? 0;
    for (let hop = 0; node && (node.comfyClass ?? node.type) === "DiffEditorPasteReference" && hop < 4; hop++) {
      const scale = node.widgets?.find((w) => w.name === "scale")?.value;
      const s = node.findInputSlot?.(from === 1 ? "mask" : "image") ?? -1;
      if (Number(scale) !== 1 || s < 0 || node.inputs?.[s]?.link == null) break;
      const next = node.getInputNode?.(s);
      if (!next) break;
      from = node.getInputLink?.(s)?.origin_slot ?? 0;
      node = next;
    }
    return node ? { node, slot: from } : null;
  }

  /** The file a loader node (Load Image / Load Image (as Mask)) shows, as a /view URL. */
  loaderURL(inputName) {
    const up = this.upstream(inputName);
    const w = up?.node.widgets?.find((w) => w.name === "image" && typeof w.value === "string" && w.value);
    return w ? { up, url: viewURL(parseImageRef(w.value)) } : null;
  }

  url(which) {
    const input = which === "source" ? "image" : "reference_image";
    const loader = this.loaderURL(input);
    if (loader) return loader.url;
    if (this.upstream(input) && this.lastRun?.[which]) return viewURL(this.lastRun[which]);
    return null;
  }

  load(url) {
    let entry = this.loading[url];
    if (!entry) {
      const img = new Image();
      entry = { img, ok: false };
      this.loading[url] = entry;
      img.onload = () => {
        entry.ok = true;
        this.version++;
        this.node.setDirtyCanvas?.(true, true);
      };
      img.onerror = () => {
        entry.failed = true;
        this.version++;
      };
      img.src = url;
    }
    return entry.ok ? entry.img : null;
  }

  image(which) {
    const url = this.url(which);
    if (!url) return null;
    const img = this.load(url);
    return img ? { img, key: url } : null;
  }

  /** Where the input mask comes from: {url, channel} (channel "alpha" is inverted, as ComfyUI loads it). */
  maskSource() {
    const up = this.upstream("mask");
    if (!up) return null;
    const loader = this.loaderURL("mask");
    if (loader) {
      const channel = up.node.widgets?.find((w) => w.name === "channel")?.value;
      if (channel) return { url: loader.url, channel: String(channel) };
      if (up.slot === 1) return { url: loader.url, channel: "alpha" }; // Load Image's MASK output
      return null;
    }
    if (this.lastRun?.mask) return { url: viewURL(this.lastRun.mask), channel: "red" };
    return null;
  }

  baseMask(W, H) {
    const src = this.maskSource();
    if (!src) return null;
    const key = `${src.url}|${src.channel}|${W}x${H}`;
    if (this.maskCache?.key === key) return this.maskCache.value;
    const img = this.load(src.url);
    if (!img) return null;
    const c = document.createElement("canvas");
    c.width = W;
    c.height = H;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, 0, W, H);
    const px = ctx.getImageData(0, 0, W, H).data;
    const offset = { red: 0, green: 1, blue: 2, alpha: 3 }[src.channel] ?? 0;
    const data = new Uint8Array(W * H);
    let n = 0;
    for (let k = 0; k < W * H; k++) {
      const v = px[4 * k + offset];
      data[k] = (src.channel === "alpha" ? 255 - v : v) > 127 ? 1 : 0;
      n += data[k];
    }
    this.maskCache = { key, value: n ? { data, key } : null };
    return this.maskCache.value;
  }

  signature() {
    const v = this.values();
    const urls = [this.url("source"), this.url("reference"), this.maskSource()?.url];
    return `${v.task}|${v.dx}|${v.dy}|${v.scale}|${v.text}|${urls.join("|")}|${this.version}`;
  }

  setLastRun(shown) {
    this.lastRun = shown;
    this.version++;
    this.node.setDirtyCanvas?.(true, true);
  }

  openDialog() {
    const d = openDialog(this, this.node.title || "DiffEditor Canvas");
    this.dialogs.add(d);
    d.dialog.addEventListener("close", () => this.dialogs.delete(d));
    return d;
  }

  dispose() {
    for (const d of [...this.dialogs]) d.close();
    this.editor?.destroy();
    controllers.delete(this.node);
  }
}

function attach(node) {
  const ctrl = new NodeController(node);
  controllers.set(node, ctrl);
  const text = ctrl.widget("editor");
  if (text) text.hidden = true; // drawn by the canvas below; still saved, and shown where the canvas is not

  const button = node.addWidget("button", "open canvas editor", null, () => ctrl.openDialog(), {
    serialize: false,
    label: "Open canvas editor", // the Vue node's button text (the classic canvas draws the widget name)
  });
  if (button) button.serialize = false;

  const host = document.createElement("div");
  host.style.width = "100%";
  host.style.height = "100%";
  ctrl.editor = new CanvasEditor(host, ctrl, {
    onUnhandledWheel: (e) => app.canvas?.processMouseWheel?.(e), // zoom the graph as elsewhere
  });
  const widget = node.addDOMWidget("canvas", "diffeditor_canvas", host, {
    serialize: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => 240,
    onDraw: () => ctrl.editor?.tick(),
  });
  widget.serialize = false;

  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    onRemoved?.apply(this, args);
    ctrl.dispose();
  };
  const [w, h] = node.size;
  node.setSize([Math.max(w, 420), Math.max(h, 620)]);
}

app.registerExtension({
  name: "DiffEditor.Canvas",
  nodeCreated(node) {
    if (node.comfyClass === NODE_CLASS) attach(node);
  },
  setup() {
    const onShown = (id, shown) => {
      if (!shown) return;
      const node = app.graph?.nodes?.find((n) => String(n.id) === String(id));
      controllers.get(node)?.setLastRun(shown);
    };
    // the images the node saw: its UI output, and the same sent before it checks the editor state (so an
    // empty editor on an image that is not a Load Image file still gets the picture to draw on)
    api.addEventListener("executed", ({ detail }) => {
      const shown = detail?.output?.[UI_KEY];
      if (shown?.length) onShown(detail.display_node ?? detail.node, shown[shown.length - 1]);
    });
    api.addEventListener("diffeditor.canvas", ({ detail }) => onShown(detail?.node, detail?.[UI_KEY]));
  },
});
