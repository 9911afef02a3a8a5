// DiffEditor Canvas: pure geometry and state helpers (no DOM, no ComfyUI imports; unit-tested in Node).
//
// Coordinates are pixels of the image the editor shows (the state's "size"): pixel (column j, row i) covers
// [j, j+1) x [i, i+1); a pixel is inside a box or a brush stroke when its centre (j + 0.5, i + 0.5) is. The
// Python side (guidance/canvas_state.py) rasterises with the same rule.

export const STATE_VERSION = 1;
export const LATENT_STRIDE = 8; // the edit rounds a shift to whole latent cells
export const FEATURE_STRIDE = 4; // drag patches are 3x3 cells of 4 pixels
export const TASKS = ["move", "drag", "paste"];

/** A fresh, empty editor state. */
export function emptyState() {
  return { version: STATE_VERSION, size: null, points: [], object: [], region: [] };
}

const PAIR_RE = /^\(?\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*,\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)?\s*->\s*\(?\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*,\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)?$/;

function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

function checkLayer(layer, where) {
  if (!layer || typeof layer !== "object" || Array.isArray(layer)) throw new Error(`${where}: not an object`);
  if (Array.isArray(layer.box)) {
    if (layer.box.length !== 4 || !layer.box.every(isNum)) throw new Error(`${where}: box must be 4 numbers`);
    return { box: layer.box.slice() };
  }
  for (const kind of ["paint", "erase"]) {
    if (Array.isArray(layer[kind])) {
      if (!isNum(layer.r) || layer.r <= 0) throw new Error(`${where}: bad radius`);
      if (!layer[kind].length || !layer[kind].every((p) => Array.isArray(p) && p.length === 2 && p.every(isNum)))
        throw new Error(`${where}: bad stroke points`);
      return { [kind]: layer[kind].map((p) => p.slice()), r: layer.r };
    }
  }
  throw new Error(`${where}: expected box, paint or erase`);
}

/**
 * Parse the editor widget's text. Returns {state, error}: error is a message (and state empty) when the
 * text is not a valid state. "" is an empty state; "x1,y1->x2,y2; ..." (the Drag nodes' text format) gives
 * points with no size (they are pixels of whatever image is shown).
 */
export function parseState(text) {
  const state = emptyState();
  if (text == null || (typeof text === "string" && !text.trim())) return { state, error: null };
  if (typeof text === "string" && !text.trim().startsWith("{")) {
    const chunks = text.split(/[;\n]/).map((c) => c.trim()).filter(Boolean);
    for (const [n, chunk] of chunks.entries()) {
      const m = PAIR_RE.exec(chunk);
      if (!m) return { state: emptyState(), error: `pair ${n + 1} '${chunk}' is not 'x1,y1->x2,y2'` };
      const [hx, hy, tx, ty] = m.slice(1).map(Number);
      state.points.push([hx, hy, tx, ty]);
    }
    return { state, error: null };
  }
  let data;
  try {
    data = typeof text === "string" ? JSON.parse(text) : text;
  } catch (e) {
    return { state, error: `not valid JSON (${e.message})` };
  }
  try {
    if (!data || typeof data !== "object" || Array.isArray(data)) throw new Error("not a JSON object");
    if (data.version !== STATE_VERSION) throw new Error(`unsupported version ${data.version}`);
    if (data.size != null) {
      if (!Array.isArray(data.size) || data.size.length !== 2 || !data.size.every((v) => Number.isInteger(v) && v > 0))
        throw new Error("size must be [width, height]");
      state.size = data.size.slice();
    }
    for (const [n, p] of (data.points ?? []).entries()) {
      if (!Array.isArray(p) || p.length !== 4 || !p.every(isNum)) throw new Error(`point pair ${n + 1} is malformed`);
      state.points.push(p.slice());
    }
    state.object = (data.object ?? []).map((l, n) => checkLayer(l, `object layer ${n + 1}`));
    state.region = (data.region ?? []).map((l, n) => checkLayer(l, `region layer ${n + 1}`));
  } catch (e) {
    return { state: emptyState(), error: e.message };
  }
  return { state, error: null };
}

const r1 = (v) => Math.round(v * 10) / 10;

function roundLayer(layer) {
  if (layer.box) return { box: layer.box.map(Math.round) };
  const kind = layer.paint ? "paint" : "erase";
  return { [kind]: layer[kind].map(([x, y]) => [r1(x), r1(y)]), r: r1(layer.r) };
}

/** True when nothing is drawn. */
export function isEmpty(state) {
  return !state.points.length && !state.object.length && !state.region.length;
}

/**
 * The widget text of a state: compact JSON with a fixed key order (version, size, points, object, region;
 * empty lists left out), or "" when nothing is drawn. Points are whole pixels, box edges whole pixels,
 * stroke coordinates and radii 0.1 pixel.
 */
export function serializeState(state) {
  if (isEmpty(state)) return "";
  const out = { version: STATE_VERSION, size: state.size ? state.size.slice() : null };
  if (state.points.length) out.points = state.points.map((p) => p.map(Math.round));
  if (state.object.length) out.object = state.object.map(roundLayer);
  if (state.region.length) out.region = state.region.map(roundLayer);
  return JSON.stringify(out);
}

/** A deep copy of a state. */
export function cloneState(state) {
  return {
    version: STATE_VERSION,
    size: state.size ? state.size.slice() : null,
    points: state.points.map((p) => p.slice()),
    object: state.object.map(checkLayerCopy),
    region: state.region.map(checkLayerCopy),
  };
}

function checkLayerCopy(l) {
  return checkLayer(l, "layer");
}

// ------------------------------------------------------------------------------------ view mapping
/**
 * How an image of imgW x imgH pixels is shown in a box of boxW x boxH layout pixels: scaled to fit
 * (contain) and centred. Returns {s, ox, oy}: layout = offset + image * s.
 */
export function fitView(boxW, boxH, imgW, imgH) {
  const s = Math.min(boxW / imgW, boxH / imgH);
  return { s, ox: (boxW - imgW * s) / 2, oy: (boxH - imgH * s) / 2 };
}

/**
 * A pointer's client position -> continuous image coordinates. `rect` is the element's
 * getBoundingClientRect() (visual size, including CSS transforms such as the canvas zoom), layoutW/H its
 * untransformed layout size (clientWidth/clientHeight), `view` from fitView on that layout size. The device
 * pixel ratio plays no part: it only sets the backing store's resolution.
 */
export function clientToImage(clientX, clientY, rect, layoutW, layoutH, view) {
  const u = ((clientX - rect.left) * layoutW) / rect.width;
  const v = ((clientY - rect.top) * layoutH) / rect.height;
  return { x: (u - view.ox) / view.s, y: (v - view.oy) / view.s };
}

/** The inverse of clientToImage. */
export function imageToClient(x, y, rect, layoutW, layoutH, view) {
  const u = view.ox + x * view.s;
  const v = view.oy + y * view.s;
  return { x: rect.left + (u * rect.width) / layoutW, y: rect.top + (v * rect.height) / layoutH };
}

/** The pixel (whole column, row) under a continuous image point, clamped into the image. */
export function toPixel(p, W, H) {
  return [Math.min(W - 1, Math.max(0, Math.floor(p.x))), Math.min(H - 1, Math.max(0, Math.floor(p.y)))];
}

/** Whether a continuous point lies on the image. */
export function onImage(p, W, H) {
  return p.x >= 0 && p.y >= 0 && p.x < W && p.y < H;
}

/** A continuous point clamped onto the image rectangle [0, W] x [0, H]. */
export function clampPoint(p, W, H) {
  return { x: Math.min(W, Math.max(0, p.x)), y: Math.min(H, Math.max(0, p.y)) };
}

/** The box [x0, y0, x1, y1] (whole-pixel edges, clamped to the image) spanned by two points; null if empty. */
export function boxFromDrag(a, b, W, H) {
  const x0 = Math.max(0, Math.min(W, Math.round(Math.min(a.x, b.x))));
  const x1 = Math.max(0, Math.min(W, Math.round(Math.max(a.x, b.x))));
  const y0 = Math.max(0, Math.min(H, Math.round(Math.min(a.y, b.y))));
  const y1 = Math.max(0, Math.min(H, Math.round(Math.max(a.y, b.y))));
  return x1 > x0 && y1 > y0 ? [x0, y0, x1, y1] : null;
}

// ------------------------------------------------------------------------------------ rasterising
function coverSegment(out, W, H, a, b, r, value) {
  const j0 = Math.max(0, Math.floor(Math.min(a[0], b[0]) - r - 0.5));
  const j1 = Math.min(W, Math.ceil(Math.max(a[0], b[0]) + r + 0.5));
  const i0 = Math.max(0, Math.floor(Math.min(a[1], b[1]) - r - 0.5));
  const i1 = Math.min(H, Math.ceil(Math.max(a[1], b[1]) + r + 0.5));
  const vx = b[0] - a[0];
  const vy = b[1] - a[1];
  const ll = vx * vx + vy * vy;
  const rr = r * r;
  for (let i = i0; i < i1; i++) {
    const py = i + 0.5;
    for (let j = j0; j < j1; j++) {
      const px = j + 0.5;
      let t = ll > 0 ? ((px - a[0]) * vx + (py - a[1]) * vy) / ll : 0;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const dx = px - a[0] - t * vx;
      const dy = py - a[1] - t * vy;
      if (dx * dx + dy * dy <= rr) out[i * W + j] = value;
    }
  }
}

/**
 * Rasterise layers into a W x H mask (Uint8Array, 1 = in), applied in order on top of `base` (a
 * Uint8Array of the same size, or null): box and paint set pixels, erase clears them.
 */
export function rasterise(layers, W, H, base = null) {
  const out = base ? Uint8Array.from(base) : new Uint8Array(W * H);
  for (const layer of layers) {
    if (layer.box) {
      const [x0, y0, x1, y1] = layer.box;
      const j0 = Math.max(0, Math.ceil(x0 - 0.5));
      const j1 = Math.min(W, Math.ceil(x1 - 0.5));
      const i0 = Math.max(0, Math.ceil(y0 - 0.5));
      const i1 = Math.min(H, Math.ceil(y1 - 0.5));
      for (let i = i0; i < i1; i++) out.fill(1, i * W + j0, i * W + Math.max(j0, j1));
      continue;
    }
    const kind = layer.paint ? "paint" : "erase";
    const pts = layer[kind];
    const value = kind === "paint" ? 1 : 0;
    if (pts.length === 1) coverSegment(out, W, H, pts[0], pts[0], layer.r, value);
    for (let k = 1; k < pts.length; k++) coverSegment(out, W, H, pts[k - 1], pts[k], layer.r, value);
  }
  return out;
}

/** Number of pixels set in a mask. */
export function count(mask) {
  let n = 0;
  for (let k = 0; k < mask.length; k++) n += mask[k] ? 1 : 0;
  return n;
}

/** Centroid {x, y} of a mask in continuous pixel coordinates (pixel centres), or null when empty. */
export function centroid(mask, W, H) {
  let sx = 0;
  let sy = 0;
  let n = 0;
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      if (mask[i * W + j]) {
        sx += j;
        sy += i;
        n++;
      }
    }
  }
  return n ? { x: sx / n + 0.5, y: sy / n + 0.5 } : null;
}

/** Bounding box [x0, y0, x1, y1] (pixel edges) of a mask, or null when empty. */
export function maskBounds(mask, W, H) {
  let x0 = W;
  let y0 = H;
  let x1 = -1;
  let y1 = -1;
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      if (mask[i * W + j]) {
        if (j < x0) x0 = j;
        if (j > x1) x1 = j;
        if (i < y0) y0 = i;
        if (i > y1) y1 = i;
      }
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}

// ------------------------------------------------------------------------------------ move / resize
/** A shift snapped to whole latent cells (what the edit applies: round half up to a multiple of 8). */
export function snapShift(v) {
  return LATENT_STRIDE * Math.floor(v / LATENT_STRIDE + 0.5);
}

/** The map "scale about the centroid c, then shift": image point p -> where it lands. */
export function landPoint(p, c, dx, dy, scale) {
  return { x: c.x + (p.x - c.x) * scale + snapShift(dx), y: c.y + (p.y - c.y) * scale + snapShift(dy) };
}

/** Where the object's bounding box lands: [x0, y0, x1, y1] (continuous). */
export function landedBox(bounds, c, dx, dy, scale) {
  const a = landPoint({ x: bounds[0], y: bounds[1] }, c, dx, dy, scale);
  const b = landPoint({ x: bounds[2], y: bounds[3] }, c, dx, dy, scale);
  return [a.x, a.y, b.x, b.y];
}

/** The scale that puts the landed box's corner (the resize handle) at point p, rounded to 0.01 and clamped. */
export function scaleFromHandle(p, bounds, c, dx, dy, maxScale) {
  const centre = { x: c.x + snapShift(dx), y: c.y + snapShift(dy) };
  const rx = bounds[2] - c.x;
  const ry = bounds[3] - c.y;
  const len = Math.hypot(rx, ry);
  if (len === 0) return 1;
  const along = ((p.x - centre.x) * rx + (p.y - centre.y) * ry) / (len * len);
  return clampScale(along, maxScale);
}

/** A scale rounded to 0.01 and clamped to [0.1, maxScale]. */
export function clampScale(s, maxScale) {
  return Math.min(maxScale, Math.max(0.1, Math.round(s * 100) / 100));
}

/** The scale after one wheel step (deltaY > 0 shrinks), rounded and clamped. */
export function wheelScale(scale, deltaY, maxScale) {
  const f = deltaY > 0 ? 1 / 1.05 : 1.05;
  return clampScale(scale * f, maxScale);
}

// ------------------------------------------------------------------------------------ hit testing
/**
 * What a pointer at image point p (continuous) hits. `tol` is the tolerance in image pixels (the screen
 * tolerance divided by the view scale).
 *  - drag points: {kind: "handle" | "target", index} (the nearest within tol, the later pair on a tie);
 *  - move: {kind: "scale"} near the landed box's resize corner, {kind: "object"} inside the landed box.
 * `move` = {bounds, c, dx, dy, scale} of the object (or null). Returns null when nothing is hit.
 */
export function hitTest(state, p, tol, move = null) {
  let best = null;
  let bestD = Infinity;
  state.points.forEach(([hx, hy, tx, ty], index) => {
    for (const [kind, x, y] of [["handle", hx + 0.5, hy + 0.5], ["target", tx + 0.5, ty + 0.5]]) {
      const d = Math.hypot(p.x - x, p.y - y);
      if (d <= tol && d <= bestD) {
        best = { kind, index };
        bestD = d;
      }
    }
  });
  if (best) return best;
  if (move && move.bounds) {
    const [x0, y0, x1, y1] = landedBox(move.bounds, move.c, move.dx, move.dy, move.scale);
    if (Math.hypot(p.x - x1, p.y - y1) <= tol) return { kind: "scale" };
    if (p.x >= x0 && p.x < x1 && p.y >= y0 && p.y < y1) return { kind: "object" };
  }
  return null;
}

/** The drag patch of a point: the engine's 3x3 feature cells around it, as a pixel box [x0, y0, x1, y1]. */
export function patchBox(x, y, W, H) {
  const gw = Math.floor(W / FEATURE_STRIDE);
  const gh = Math.floor(H / FEATURE_STRIDE);
  const fx = Math.min(Math.max(Math.floor(x / FEATURE_STRIDE), 1), gw - 2);
  const fy = Math.min(Math.max(Math.floor(y / FEATURE_STRIDE), 1), gh - 2);
  return [(fx - 1) * FEATURE_STRIDE, (fy - 1) * FEATURE_STRIDE, (fx + 2) * FEATURE_STRIDE, (fy + 2) * FEATURE_STRIDE];
}

/** Drag points as the Drag nodes' text: "x1,y1->x2,y2; ...". */
export function pointsText(points) {
  return points.map(([a, b, c, d]) => `${a},${b}->${c},${d}`).join("; ");
}

/**
 * Parse a LoadImage-style widget value ("name.png", "sub/dir/name.png", "name.png [output]") into the
 * /view query {filename, subfolder, type}.
 */
export function parseImageRef(value, defaultType = "input") {
  let v = String(value).trim();
  let type = defaultType;
  const m = /^(.*) \[(input|output|temp)\]$/.exec(v);
  if (m) {
    v = m[1];
    type = m[2];
  }
  const k = v.lastIndexOf("/");
  return { filename: k >= 0 ? v.slice(k + 1) : v, subfolder: k >= 0 ? v.slice(0, k) : "", type };
}
