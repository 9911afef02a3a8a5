// DiffEditor Canvas: the editing surface (an HTML canvas with a small toolbar).
//
// It knows nothing about ComfyUI: a controller gives it the widget values and images and takes commits
// (see diffeditor_canvas.js). All input is plain DOM pointer/keyboard/wheel events on its own elements, so
// it behaves the same inside a classic-canvas DOM widget and inside a dialog (Vue "Nodes 2.0" mode).
//
// Controller interface:
//   values()          -> {task, dx, dy, scale, text}   (text = the editor widget's JSON)
//   commit({state, dx, dy, scale})                     (writes the widgets; any field may be left out)
//   image(which)      -> {img, key} | null             (which = "source" | "reference"; img loaded)
//   baseMask(W, H)    -> {data: Uint8Array, key} | null (the connected input mask, W x H)
//   signature()       -> string that changes when anything above changes (images loading included)

import * as G from "./canvas_geometry.js";

const TOOLS = {
  drag: ["point", "box", "paint", "erase"],
  move: ["box", "paint", "erase", "move"],
  paste: ["box", "paint", "erase", "move"],
};
const LABELS = { point: "Points", box: "Box", paint: "Brush", erase: "Eraser", move: "Move" };
const TIPS = {
  point: "Click a handle, then its target. Drag a point to adjust it; right-click it (or select it and press Del) to delete the pair.",
  box: "Drag a box around the object (drag: the editable region).",
  paint: "Paint the mask (drag: the editable region).",
  erase: "Erase from the mask.",
  move: "Drag the object to move it; the wheel or the corner handle resizes it.",
};
const COLORS = {
  handle: "#ff3b3b",
  target: "#3b82ff",
  arrow: "#ffd21a",
  object: "rgba(80, 160, 255, 0.45)",
  landed: "#ffd21a",
  box: "#ffffff",
};
const HIT_TOLERANCE_PX = 10;
const STYLE_ID = "diffeditor-canvas-style";
const CSS = `
.diffeditor-canvas { display: flex; flex-direction: column; box-sizing: border-box; width: 100%; height: 100%;
  gap: 4px; font: 12px sans-serif; color: var(--input-text, #ddd); user-select: none; }
.diffeditor-canvas .de-toolbar { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; }
.diffeditor-canvas .de-toolbar button { font: 12px sans-serif; padding: 2px 7px; border-radius: 4px; cursor: pointer;
  border: 1px solid var(--border-color, #555); background: var(--comfy-input-bg, #222); color: inherit; }
.diffeditor-canvas .de-toolbar button.de-active { background: #2f6fdc; border-color: #2f6fdc; color: #fff; }
.diffeditor-canvas .de-toolbar input[type=range] { width: 70px; }
.diffeditor-canvas .de-wrap { position: relative; flex: 1 1 auto; min-height: 100px; background: #1b1b1b;
  border-radius: 4px; overflow: hidden; }
.diffeditor-canvas canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; touch-action: none;
  outline: none; cursor: crosshair; }
.diffeditor-canvas .de-status { font-size: 11px; opacity: 0.85; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; min-height: 14px; }
.diffeditor-canvas .de-status.de-error { color: #ff7070; opacity: 1; }
dialog.diffeditor-dialog { width: min(92vw, 1100px); height: min(90vh, 900px); padding: 10px; border-radius: 8px;
  border: 1px solid #555; background: var(--comfy-menu-bg, #262626); color: #ddd; }
dialog.diffeditor-dialog::backdrop { background: rgba(0, 0, 0, 0.6); }
dialog.diffeditor-dialog .de-dialog-body { display: flex; flex-direction: column; width: 100%; height: 100%; gap: 6px; }
dialog.diffeditor-dialog .de-dialog-head { display: flex; justify-content: space-between; align-items: center; }
dialog.diffeditor-dialog .de-dialog-host { flex: 1 1 auto; min-height: 0; }
`;

function ensureStyle() {
  if (typeof document === "undefined" || document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

export class CanvasEditor {
  /**
   * @param {HTMLElement} host where the editor is built
   * @param controller see the module comment
   * @param {{onUnhandledWheel?: (e: WheelEvent) => void}} opts  wheel events the editor does not use
   */
  constructor(host, controller, opts = {}) {
    ensureStyle();
    this.ctrl = controller;
    this.opts = opts;
    this.tool = null;
    this.toolTask = null;
    this.toolChosen = false; // set once the artist picks a tool; until then it follows what is drawn
    this.pending = null; // a handle waiting for its target: [x, y]
    this.selected = null; // index of the selected point pair
    this.op = null; // the pointer operation in progress
    this.brush = null; // brush radius in image pixels
    this.hover = null;
    this.lastSig = null;
    this.cache = {};
    this.parsed = { text: null, state: G.emptyState(), error: null };

    this.root = el("div", "diffeditor-canvas");
    this.toolbar = el("div", "de-toolbar");
    this.wrap = el("div", "de-wrap");
    this.canvas = el("canvas");
    this.canvas.tabIndex = 0;
    this.status = el("div", "de-status");
    this.wrap.appendChild(this.canvas);
    this.root.append(this.toolbar, this.wrap, this.status);
    host.appendChild(this.root);

    this.listeners = [];
    const on = (target, type, fn, options) => {
      target.addEventListener(type, fn, options);
      this.listeners.push([target, type, fn, options]);
    };
    on(this.canvas, "pointerdown", (e) => this.onPointerDown(e));
    on(this.canvas, "pointermove", (e) => this.onPointerMove(e));
    on(this.canvas, "pointerup", (e) => this.onPointerUp(e));
    on(this.canvas, "pointercancel", () => this.cancelOp());
    on(this.canvas, "contextmenu", (e) => {
      e.preventDefault();
      e.stopPropagation();
    });
    on(this.canvas, "wheel", (e) => this.onWheel(e), { passive: false });
    on(this.canvas, "keydown", (e) => this.onKeyDown(e));
    if (typeof ResizeObserver !== "undefined") {
      this.resizeObserver = new ResizeObserver(() => this.render());
      this.resizeObserver.observe(this.wrap);
    }
    this.render();
  }

  destroy() {
    for (const [t, type, fn, options] of this.listeners) t.removeEventListener(type, fn, options);
    this.resizeObserver?.disconnect();
    this.root.remove();
  }

  // ---------------------------------------------------------------------------------------- state
  current() {
    const v = this.ctrl.values();
    if (v.text !== this.parsed.text) {
      const { state, error } = G.parseState(v.text);
      this.parsed = { text: v.text, state, error };
    }
    return { ...v, state: this.parsed.state, error: this.parsed.error };
  }

  /** The values shown: the widgets, or the draft of the pointer operation in progress. */
  shown() {
    const cur = this.current();
    if (this.op && this.op.draft) return { ...cur, ...this.op.draft };
    return cur;
  }

  maxScale(task) {
    // a paste keeps the reference object's size: DiffEditor Paste Reference resizes it before the inversion
    return task === "paste" ? 1 : 10;
  }

  canResize(task) {
    return task !== "paste";
  }

  /** Pixel size of the coordinate frame: the state's size, else the shown image's. */
  frame(cur) {
    if (cur.state.size) return cur.state.size;
    const src = this.ctrl.image("source");
    if (src?.img) return [src.img.naturalWidth, src.img.naturalHeight];
    const ref = cur.task === "paste" ? this.ctrl.image("reference") : null;
    if (ref?.img) return [ref.img.naturalWidth, ref.img.naturalHeight];
    return null;
  }

  commit(values) {
    const out = { ...values };
    if (out.state) {
      out.state = G.cloneState(out.state);
      if (!out.state.size && !G.isEmpty(out.state)) out.state.size = this.frame(this.current());
    }
    this.ctrl.commit(out);
    this.render();
  }

  setTool(tool) {
    this.tool = tool;
    this.toolChosen = true;
    this.pending = null;
    this.render();
  }

  /** The default tool: points for drag; for move/paste, Move once there is an object, else Box. */
  defaultTool(cur) {
    if (cur.task === "drag") return "point";
    return cur.state.object.length || this.ctrl.baseMask(...(this.frame(cur) ?? [1, 1])) ? "move" : "box";
  }

  ensureTool(cur) {
    const tools = TOOLS[cur.task] ?? TOOLS.move;
    if (this.toolTask !== cur.task || !tools.includes(this.tool)) {
      this.toolTask = cur.task;
      this.toolChosen = false;
      this.pending = null;
      this.selected = null;
      this.buildToolbar(cur);
    }
    if (!this.toolChosen && !this.op) this.tool = this.defaultTool(cur);
  }

  buildToolbar(cur) {
    this.toolbar.replaceChildren();
    for (const tool of TOOLS[cur.task] ?? TOOLS.move) {
      const b = el("button", "", LABELS[tool]);
      b.dataset.tool = tool;
      b.title = TIPS[tool];
      b.addEventListener("click", () => this.setTool(tool));
      this.toolbar.appendChild(b);
    }
    this.brushInput = el("input");
    this.brushInput.type = "range";
    this.brushInput.min = "1";
    this.brushInput.title = "Brush radius (image pixels)";
    this.brushInput.addEventListener("input", () => {
      this.brush = Number(this.brushInput.value);
    });
    this.toolbar.appendChild(this.brushInput);
    const undo = el("button", "", "Remove last");
    undo.dataset.action = "remove-last";
    undo.title = "Remove the last point pair (Points) or the last box/stroke";
    undo.addEventListener("click", () => this.removeLast());
    const clear = el("button", "", "Clear");
    clear.dataset.action = "clear";
    clear.title = "Clear everything drawn for this task";
    clear.addEventListener("click", () => this.clearAll());
    this.toolbar.append(undo, clear);
  }

  removeLast() {
    const cur = this.current();
    if (cur.error) return;
    const state = G.cloneState(cur.state);
    if (cur.task === "drag" && this.tool === "point") state.points.pop();
    else if (cur.task === "drag") state.region.pop();
    else state.object.pop();
    this.selected = null;
    this.pending = null;
    this.commit({ state });
  }

  clearAll() {
    const cur = this.current();
    let state = cur.error ? G.emptyState() : G.cloneState(cur.state);
    this.selected = null;
    this.pending = null;
    if (cur.task === "drag") {
      state.points = [];
      state.region = [];
    } else {
      state.object = [];
    }
    // nothing left: forget the frame, so the next edit takes the size of the image shown then
    if (G.isEmpty(state)) state = G.emptyState();
    this.commit(cur.task === "drag" ? { state } : { state, dx: 0, dy: 0, scale: 1 });
  }

  // ---------------------------------------------------------------------------------------- mapping
  layout() {
    return { w: this.canvas.clientWidth, h: this.canvas.clientHeight };
  }

  view(frame) {
    const { w, h } = this.layout();
    return G.fitView(w, h, frame[0], frame[1]);
  }

  toImage(e, frame) {
    const { w, h } = this.layout();
    return G.clientToImage(e.clientX, e.clientY, this.canvas.getBoundingClientRect(), w, h, this.view(frame));
  }

  // ---------------------------------------------------------------------------------------- masks
  /** The object (move/paste) or region (drag) mask at frame size, cached; null when there is nothing. */
  mask(cur, W, H) {
    const layers = cur.task === "drag" ? cur.state.region : cur.state.object;
    const base = this.ctrl.baseMask(W, H);
    if (!layers.length && !base) return null;
    const key = `${W}x${H}|${cur.task === "drag" ? "r" : "o"}|${JSON.stringify(layers)}|${base?.key ?? ""}`;
    if (this.cache.maskKey !== key) {
      const data = G.rasterise(layers, W, H, base?.data ?? null);
      const info = { data, count: G.count(data) };
      if (cur.task !== "drag" && info.count) {
        info.bounds = G.maskBounds(data, W, H);
        info.c = G.centroid(data, W, H);
      }
      this.cache.maskKey = key;
      this.cache.mask = info;
      this.cache.overlay = null;
      this.cache.cutout = null;
    }
    return this.cache.mask;
  }

  /** The mask (or, with invert, its complement) as a W x H canvas of colour [r, g, b, a], cached. */
  overlay(mask, W, H, inside, invert = false) {
    if (!this.cache.overlay) {
      const c = el("canvas");
      c.width = W;
      c.height = H;
      const ctx = c.getContext("2d");
      const img = ctx.createImageData(W, H);
      const [r, g, b, a] = inside;
      for (let k = 0; k < W * H; k++) {
        if (Boolean(mask.data[k]) !== invert) {
          img.data[4 * k] = r;
          img.data[4 * k + 1] = g;
          img.data[4 * k + 2] = b;
          img.data[4 * k + 3] = a;
        }
      }
      ctx.putImageData(img, 0, 0);
      this.cache.overlay = c;
    }
    return this.cache.overlay;
  }

  /** The object cut out of `image` (pixels outside the mask transparent), at frame size. */
  cutout(mask, image, W, H) {
    if (!image?.img) return null;
    if (!this.cache.cutout || this.cache.cutoutKey !== image.key) {
      const c = el("canvas");
      c.width = W;
      c.height = H;
      const ctx = c.getContext("2d");
      ctx.drawImage(image.img, 0, 0, W, H);
      const px = ctx.getImageData(0, 0, W, H);
      for (let k = 0; k < W * H; k++) if (!mask.data[k]) px.data[4 * k + 3] = 0;
      ctx.putImageData(px, 0, 0);
      this.cache.cutout = c;
      this.cache.cutoutKey = image.key;
    }
    return this.cache.cutout;
  }

  // ---------------------------------------------------------------------------------------- drawing
  tick() {
    const { w, h } = this.layout();
    const sig = `${this.ctrl.signature()}|${w}x${h}|${globalThis.devicePixelRatio ?? 1}`;
    if (sig !== this.lastSig) this.render();
  }

  render() {
    const { w, h } = this.layout();
    this.lastSig = `${this.ctrl.signature()}|${w}x${h}|${globalThis.devicePixelRatio ?? 1}`;
    const cur = this.shown();
    this.ensureTool(cur);
    for (const b of this.toolbar.querySelectorAll("button[data-tool]"))
      b.classList.toggle("de-active", b.dataset.tool === this.tool);
    const dpr = globalThis.devicePixelRatio || 1;
    const bw = Math.max(1, Math.round(w * dpr));
    const bh = Math.max(1, Math.round(h * dpr));
    if (this.canvas.width !== bw || this.canvas.height !== bh) {
      this.canvas.width = bw;
      this.canvas.height = bh;
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const frame = this.frame(cur);
    if (!frame || w < 2 || h < 2) {
      ctx.fillStyle = "#999";
      ctx.font = "12px sans-serif";
      ctx.fillText("Connect an image (Load Image), or run the graph once.", 8, 20);
      this.setStatus(cur.error ? `editor: ${cur.error}` : "No image yet.", !!cur.error);
      return;
    }
    const [W, H] = frame;
    this.brushInput.max = String(Math.max(4, Math.round(Math.max(W, H) / 4)));
    if (this.brush == null) this.brush = Math.max(2, Math.round(Math.max(W, H) / 40));
    this.brushInput.value = String(this.brush);
    this.brushInput.style.display = this.tool === "paint" || this.tool === "erase" ? "" : "none";
    const view = this.view(frame);
    const showRef = cur.task === "paste" && this.tool !== "move";
    const bg = this.ctrl.image(showRef ? "reference" : "source");
    // pixels stay crisp when magnified (precise clicking); smooth when the image is shrunk
    ctx.imageSmoothingEnabled = !!bg?.img && W * view.s < bg.img.naturalWidth;
    if (bg?.img) ctx.drawImage(bg.img, view.ox, view.oy, W * view.s, H * view.s);
    else {
      ctx.fillStyle = "#333";
      ctx.fillRect(view.ox, view.oy, W * view.s, H * view.s);
    }
    ctx.save();
    ctx.translate(view.ox, view.oy);
    ctx.scale(view.s, view.s);
    ctx.beginPath();
    ctx.rect(0, 0, W, H);
    ctx.clip();
    const px = 1 / view.s; // one layout pixel in image units
    const mask = cur.error ? null : this.mask(cur, W, H);
    if (cur.task === "drag") this.drawDrag(ctx, cur, mask, W, H, px);
    else this.drawMove(ctx, cur, mask, W, H, px, showRef);
    this.drawOp(ctx, px);
    ctx.restore();
    this.setStatus(cur.error ? `editor: ${cur.error} (Clear to start again)` : this.describe(cur, mask, W, H), !!cur.error);
  }

  setStatus(text, error) {
    this.status.textContent = text;
    this.status.classList.toggle("de-error", !!error);
  }

  describe(cur, mask, W, H) {
    const size = `${W}x${H} px`;
    if (cur.task === "drag") {
      const n = cur.state.points.length;
      const what = this.pending ? "click the target" : n ? `${n} pair${n > 1 ? "s" : ""}` : "click a handle, then its target";
      return `drag · ${what} · ${mask ? "editable region drawn" : "whole image editable"} · ${size}`;
    }
    const where = cur.task === "paste" && this.tool !== "move" ? "reference image · " : "";
    if (!mask || !mask.count) return `${cur.task} · ${where}draw a box or paint the object · ${size}`;
    return `${cur.task} · ${where}dx ${cur.dx} dy ${cur.dy} scale ${Number(cur.scale).toFixed(2)} · ${size}`;
  }

  drawMove(ctx, cur, mask, W, H, px, showRef) {
    if (!mask || !mask.count) return;
    if (showRef || cur.task === "move") {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.overlay(mask, W, H, [80, 160, 255, 115]), 0, 0, W, H);
    }
    if (showRef || !mask.bounds) return;
    const cut = this.cutout(mask, this.ctrl.image(cur.task === "paste" ? "reference" : "source"), W, H);
    const { c } = mask;
    const sx = G.snapShift(cur.dx);
    const sy = G.snapShift(cur.dy);
    if (cut) {
      ctx.save();
      ctx.translate(c.x + sx, c.y + sy);
      ctx.scale(cur.scale, cur.scale);
      ctx.translate(-c.x, -c.y);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(cut, 0, 0, W, H);
      ctx.restore();
    }
    const [x0, y0, x1, y1] = G.landedBox(mask.bounds, c, cur.dx, cur.dy, cur.scale);
    ctx.strokeStyle = COLORS.landed;
    ctx.lineWidth = 2 * px;
    ctx.setLineDash([6 * px, 4 * px]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
    const hs = 6 * px;
    ctx.fillStyle = COLORS.landed;
    ctx.fillRect(x1 - hs, y1 - hs, 2 * hs, 2 * hs);
  }

  drawDrag(ctx, cur, mask, W, H, px) {
    if (mask) {
      ctx.imageSmoothingEnabled = false; // dim what may not change
      ctx.drawImage(this.overlay(mask, W, H, [0, 0, 0, 130], true), 0, 0, W, H);
    }
    const pts = cur.state.points;
    ctx.font = `bold ${12 * px}px sans-serif`;
    pts.forEach(([hx, hy, tx, ty], k) => {
      for (const [x, y, colour] of [[hx, hy, COLORS.handle], [tx, ty, COLORS.target]]) {
        const [bx0, by0, bx1, by1] = G.patchBox(x, y, W, H);
        ctx.strokeStyle = colour;
        ctx.lineWidth = 1 * px;
        ctx.strokeRect(bx0, by0, bx1 - bx0, by1 - by0);
      }
      this.arrow(ctx, hx + 0.5, hy + 0.5, tx + 0.5, ty + 0.5, px);
      const sel = k === this.selected;
      this.dot(ctx, hx + 0.5, hy + 0.5, COLORS.handle, px, sel);
      this.dot(ctx, tx + 0.5, ty + 0.5, COLORS.target, px, sel);
      ctx.fillStyle = "#fff";
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 3 * px;
      ctx.strokeText(String(k + 1), hx + 0.5 + 7 * px, hy + 0.5 - 7 * px);
      ctx.fillText(String(k + 1), hx + 0.5 + 7 * px, hy + 0.5 - 7 * px);
    });
    if (this.pending) this.dot(ctx, this.pending[0] + 0.5, this.pending[1] + 0.5, COLORS.handle, px, true);
  }

  dot(ctx, x, y, colour, px, selected) {
    ctx.beginPath();
    ctx.arc(x, y, (selected ? 6 : 5) * px, 0, 2 * Math.PI);
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.lineWidth = (selected ? 2.5 : 1.5) * px;
    ctx.strokeStyle = selected ? "#fff" : "#000";
    ctx.stroke();
  }

  arrow(ctx, x0, y0, x1, y1, px) {
    const len = Math.hypot(x1 - x0, y1 - y0);
    if (!len) return;
    const ux = (x1 - x0) / len;
    const uy = (y1 - y0) / len;
    const head = Math.min(len * 0.4, 12 * px);
    ctx.strokeStyle = COLORS.arrow;
    ctx.lineWidth = 2.5 * px;
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    for (const s of [1, -1]) {
      const cx = ux * Math.cos(Math.PI / 6) - s * uy * Math.sin(Math.PI / 6);
      const cy = uy * Math.cos(Math.PI / 6) + s * ux * Math.sin(Math.PI / 6);
      ctx.moveTo(x1, y1);
      ctx.lineTo(x1 - head * cx, y1 - head * cy);
    }
    ctx.stroke();
  }

  drawOp(ctx, px) {
    const op = this.op;
    if (!op) return;
    if (op.kind === "box" && op.b) {
      ctx.strokeStyle = COLORS.box;
      ctx.lineWidth = 1.5 * px;
      ctx.setLineDash([5 * px, 4 * px]);
      const x0 = Math.min(op.a.x, op.b.x);
      const y0 = Math.min(op.a.y, op.b.y);
      ctx.strokeRect(x0, y0, Math.abs(op.b.x - op.a.x), Math.abs(op.b.y - op.a.y));
      ctx.setLineDash([]);
    }
    if (op.kind === "stroke") {
      const pts = op.layer[op.tool];
      ctx.strokeStyle = op.tool === "paint" ? "rgba(80, 160, 255, 0.6)" : "rgba(255, 80, 80, 0.6)";
      ctx.fillStyle = ctx.strokeStyle;
      ctx.lineWidth = 2 * op.layer.r;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.beginPath();
      ctx.moveTo(pts[0][0], pts[0][1]);
      for (const [x, y] of pts.slice(1)) ctx.lineTo(x, y);
      if (pts.length === 1) {
        ctx.arc(pts[0][0], pts[0][1], op.layer.r, 0, 2 * Math.PI);
        ctx.fill();
      } else ctx.stroke();
    }
  }

  // ---------------------------------------------------------------------------------------- input
  moveInfo(cur, frame) {
    if (cur.task === "drag" || cur.error) return null;
    const m = this.mask(cur, frame[0], frame[1]);
    if (!m || !m.bounds) return null;
    return { bounds: m.bounds, c: m.c, dx: cur.dx, dy: cur.dy, scale: cur.scale };
  }

  onPointerDown(e) {
    const cur = this.current();
    const frame = this.frame(cur);
    this.canvas.focus({ preventScroll: true });
    if (!frame || cur.error) return;
    const [W, H] = frame;
    const p = this.toImage(e, frame);
    const tol = HIT_TOLERANCE_PX / this.view(frame).s;
    if (e.button === 2) {
      if (this.tool === "point") {
        const hit = G.hitTest(cur.state, p, tol);
        if (hit) this.deletePair(cur, hit.index);
        else if (this.pending) {
          this.pending = null;
          this.render();
        }
      }
      return;
    }
    if (e.button !== 0) return;
    const base = { state: G.cloneState(cur.state), dx: cur.dx, dy: cur.dy, scale: cur.scale };
    if (this.tool === "point") {
      const hit = G.hitTest(cur.state, p, tol);
      if (hit) {
        this.selected = hit.index;
        this.op = { kind: "point", hit, draft: base };
      } else if (G.onImage(p, W, H)) {
        const px = G.toPixel(p, W, H);
        if (this.pending) {
          if (px[0] !== this.pending[0] || px[1] !== this.pending[1]) {
            base.state.points.push([...this.pending, ...px]);
            this.selected = base.state.points.length - 1;
            this.pending = null;
            this.commit({ state: base.state });
          }
        } else {
          this.pending = px;
          this.selected = null;
        }
      }
    } else if (this.tool === "box") {
      if (G.onImage(p, W, H)) this.op = { kind: "box", a: G.clampPoint(p, W, H), b: null };
    } else if (this.tool === "paint" || this.tool === "erase") {
      const q = G.clampPoint(p, W, H);
      this.op = { kind: "stroke", tool: this.tool, layer: { [this.tool]: [[q.x, q.y]], r: this.brush } };
    } else if (this.tool === "move") {
      const info = this.moveInfo(cur, frame);
      if (info) {
        const hit = G.hitTest({ points: [] }, p, tol, info);
        const scaling = hit?.kind === "scale" && this.canResize(cur.task);
        this.op = { kind: scaling ? "scale" : "move", start: p, info, draft: base };
      }
    }
    if (this.op) this.canvas.setPointerCapture?.(e.pointerId);
    this.render();
  }

  onPointerMove(e) {
    const cur = this.current();
    const frame = this.frame(cur);
    if (!frame) return;
    const [W, H] = frame;
    const p = this.toImage(e, frame);
    const op = this.op;
    if (!op) {
      this.updateCursor(cur, frame, p);
      return;
    }
    if (op.kind === "point") {
      const [x, y] = G.toPixel(p, W, H);
      const pair = op.draft.state.points[op.hit.index];
      if (op.hit.kind === "handle") [pair[0], pair[1]] = [x, y];
      else [pair[2], pair[3]] = [x, y];
      op.moved = true;
    } else if (op.kind === "box") {
      op.b = G.clampPoint(p, W, H);
    } else if (op.kind === "stroke") {
      const pts = op.layer[op.tool];
      const q = G.clampPoint(p, W, H);
      const last = pts[pts.length - 1];
      if (Math.hypot(q.x - last[0], q.y - last[1]) >= Math.max(0.5, op.layer.r / 4)) pts.push([q.x, q.y]);
    } else if (op.kind === "move") {
      const clamp = (v) => Math.max(-8192, Math.min(8192, v));
      op.draft.dx = clamp(G.snapShift(op.info.dx + (p.x - op.start.x)));
      op.draft.dy = clamp(G.snapShift(op.info.dy + (p.y - op.start.y)));
    } else if (op.kind === "scale") {
      const { bounds, c, dx, dy } = op.info;
      op.draft.scale = G.scaleFromHandle(p, bounds, c, dx, dy, this.maxScale(cur.task));
    }
    this.render();
  }

  onPointerUp(e) {
    const op = this.op;
    if (!op) return;
    this.op = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    const cur = this.current();
    const frame = this.frame(cur);
    if (!frame) return this.render();
    const [W, H] = frame;
    const state = G.cloneState(cur.state);
    const target = cur.task === "drag" ? "region" : "object";
    if (op.kind === "point") {
      if (!op.moved) return this.render();
      const [hx, hy, tx, ty] = op.draft.state.points[op.hit.index];
      if (hx === tx && hy === ty) return this.render(); // a handle onto its own target: undone
      this.commit({ state: op.draft.state });
    } else if (op.kind === "box") {
      const box = op.b ? G.boxFromDrag(op.a, op.b, W, H) : null;
      if (!box) return this.render();
      state[target].push({ box });
      this.commit({ state });
    } else if (op.kind === "stroke") {
      state[target].push(op.layer);
      this.commit({ state });
    } else if (op.kind === "move") {
      this.commit({ dx: op.draft.dx, dy: op.draft.dy });
    } else if (op.kind === "scale") {
      this.commit({ scale: op.draft.scale });
    }
  }

  cancelOp() {
    this.op = null;
    this.render();
  }

  onWheel(e) {
    const cur = this.current();
    const frame = this.frame(cur);
    if (!frame || this.tool !== "move" || !this.canResize(cur.task) || !this.moveInfo(cur, frame)) {
      if (this.opts.onUnhandledWheel) {
        e.preventDefault();
        this.opts.onUnhandledWheel(e);
      }
      return;
    }
    e.preventDefault();
    e.stopPropagation();
    this.commit({ scale: G.wheelScale(Number(cur.scale), e.deltaY, this.maxScale(cur.task)) });
  }

  onKeyDown(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Delete" || e.key === "Backspace") {
      e.preventDefault();
      e.stopPropagation(); // else the front end deletes the selected node
      const cur = this.current();
      if (this.pending) {
        this.pending = null;
        this.render();
      } else if (this.selected != null && this.selected < cur.state.points.length) {
        this.deletePair(cur, this.selected);
      }
    } else if (e.key === "Escape" && (this.pending || this.op)) {
      e.stopPropagation();
      this.pending = null;
      this.op = null;
      this.render();
    }
  }

  deletePair(cur, index) {
    const state = G.cloneState(cur.state);
    state.points.splice(index, 1);
    this.selected = null;
    this.commit({ state });
  }

  updateCursor(cur, frame, p) {
    let cursor = "crosshair";
    const tol = HIT_TOLERANCE_PX / this.view(frame).s;
    if (this.tool === "point" && G.hitTest(cur.state, p, tol)) cursor = "grab";
    if (this.tool === "move") {
      const info = this.moveInfo(cur, frame);
      const hit = info ? G.hitTest({ points: [] }, p, tol, info) : null;
      cursor = hit?.kind === "scale" && this.canResize(cur.task) ? "nwse-resize" : info ? "move" : "not-allowed";
    }
    if (this.canvas.style.cursor !== cursor) this.canvas.style.cursor = cursor;
  }
}

/** Open a large editor in a modal dialog (used in both modes; the only editor in Vue "Nodes 2.0" mode). */
export function openDialog(controller, title) {
  ensureStyle();
  const dialog = el("dialog", "diffeditor-dialog");
  const body = el("div", "de-dialog-body");
  const head = el("div", "de-dialog-head");
  head.append(el("strong", "", title));
  const close = el("button", "", "Close");
  close.dataset.action = "close";
  head.append(close);
  const host = el("div", "de-dialog-host");
  body.append(head, host);
  dialog.append(body);
  document.body.appendChild(dialog);
  const editor = new CanvasEditor(host, controller);
  let frame = 0;
  const loop = () => {
    editor.tick();
    frame = requestAnimationFrame(loop);
  };
  frame = requestAnimationFrame(loop);
  const done = () => {
    cancelAnimationFrame(frame);
    editor.destroy();
    dialog.remove();
  };
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", done);
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "Delete" || e.key === "Backspace") e.stopPropagation();
  });
  dialog.showModal();
  return { dialog, editor, close: () => dialog.close() };
}
