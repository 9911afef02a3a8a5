// Unit tests of web/js/canvas_geometry.js (node --test; no dependencies).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import * as G from "../../web/js/canvas_geometry.js";

const FIXTURE = JSON.parse(readFileSync(new URL("../fixtures/canvas_cases.json", import.meta.url), "utf8"));

// ----------------------------------------------------------------------------------- coordinate mapping
test("fitView contains and centres the image", () => {
  assert.deepEqual(G.fitView(400, 300, 512, 512), { s: 300 / 512, ox: (400 - 300) / 2, oy: 0 });
  assert.deepEqual(G.fitView(400, 300, 200, 100), { s: 2, ox: 0, oy: 50 });
});

test("client -> image mapping is independent of canvas zoom, node size and device pixel ratio", () => {
  const W = 512;
  const H = 384;
  const pixel = [137, 201];
  const centre = { x: pixel[0] + 0.5, y: pixel[1] + 0.5 };
  // layout box (untransformed CSS size) x visual zoom (the graph canvas scales DOM widgets with a transform)
  for (const [lw, lh] of [[400, 300], [400, 600], [820, 310], [97, 1000]]) {
    for (const zoom of [0.35, 1, 1.6, 3.25]) {
      const view = G.fitView(lw, lh, W, H);
      const rect = { left: 1234.5, top: -77.25, width: lw * zoom, height: lh * zoom };
      const c = G.imageToClient(centre.x, centre.y, rect, lw, lh, view);
      const back = G.clientToImage(c.x, c.y, rect, lw, lh, view);
      assert.ok(Math.abs(back.x - centre.x) < 1e-9 && Math.abs(back.y - centre.y) < 1e-9);
      assert.deepEqual(G.toPixel(back, W, H), pixel, `layout ${lw}x${lh}, zoom ${zoom}`);
      // anywhere inside the pixel's screen square maps to the same pixel
      const d = 0.45 * view.s * zoom;
      for (const [ex, ey] of [[-d, -d], [d, d], [d, -d]]) {
        const q = G.clientToImage(c.x + ex, c.y + ey, rect, lw, lh, view);
        assert.deepEqual(G.toPixel(q, W, H), pixel);
      }
    }
  }
});

test("the image's corners map to its pixel edges; outside points are not on the image", () => {
  const view = G.fitView(300, 300, 64, 32);
  const rect = { left: 10, top: 20, width: 600, height: 600 }; // zoom 2
  const tl = G.imageToClient(0, 0, rect, 300, 300, view);
  assert.deepEqual(tl, { x: 10, y: 20 + 2 * 75 });
  const br = G.clientToImage(10 + 600, 20 + 2 * 225, rect, 300, 300, view);
  assert.deepEqual(br, { x: 64, y: 32 });
  assert.equal(G.onImage(br, 64, 32), false);
  assert.equal(G.onImage({ x: 63.99, y: 31.99 }, 64, 32), true);
  assert.deepEqual(G.toPixel({ x: 70, y: -3 }, 64, 32), [63, 0]);
});

test("boxFromDrag snaps to whole-pixel edges inside the image and rejects empty boxes", () => {
  assert.deepEqual(G.boxFromDrag({ x: 30.4, y: 9.6 }, { x: 10.2, y: 40.5 }, 64, 64), [10, 10, 30, 41]);
  assert.deepEqual(G.boxFromDrag({ x: -5, y: -5 }, { x: 80, y: 70 }, 64, 64), [0, 0, 64, 64]);
  assert.equal(G.boxFromDrag({ x: 5.1, y: 5 }, { x: 5.3, y: 20 }, 64, 64), null);
});

// ----------------------------------------------------------------------------------- rasterising
test("the JavaScript rasteriser gives the Python rasteriser's masks (shared fixture)", () => {
  for (const c of FIXTURE.raster) {
    const [W, H] = c.size;
    const m = G.rasterise(c.layers, W, H);
    assert.equal(G.count(m), c.count, c.name);
    assert.equal(createHash("sha1").update(m).digest("hex"), c.sha1, c.name);
  }
});

test("layers apply in order on top of a base mask", () => {
  const base = new Uint8Array(10 * 10).fill(1);
  const m = G.rasterise([{ erase: [[5, 5]], r: 1 }], 10, 10, base);
  assert.equal(G.count(m), 100 - 4); // the four pixels whose centres are within 1 of (5, 5)
  assert.equal(G.count(base), 100, "the base is not modified");
});

test("centroid and bounds of a mask", () => {
  const m = G.rasterise([{ box: [2, 4, 6, 8] }], 10, 10);
  assert.deepEqual(G.centroid(m, 10, 10), { x: 4, y: 6 });
  assert.deepEqual(G.maskBounds(m, 10, 10), [2, 4, 6, 8]);
  assert.equal(G.centroid(new Uint8Array(4), 2, 2), null);
  assert.equal(G.maskBounds(new Uint8Array(4), 2, 2), null);
});

// ----------------------------------------------------------------------------------- serialization
test("serialize(parse(text)) reproduces canonical editor text", () => {
  for (const text of FIXTURE.states) {
    const { state, error } = G.parseState(text);
    assert.equal(error, null);
    assert.equal(G.serializeState(state), text);
    assert.equal(G.serializeState(G.cloneState(state)), text);
  }
});

test("serialization rounds points and box edges to pixels, strokes to 0.1 px, and drops empty lists", () => {
  const state = G.emptyState();
  state.size = [100, 80];
  state.points.push([10.4, 20.6, 30, 40]);
  state.object.push({ box: [1.2, 2.5, 50.5, 60] }, { paint: [[3.14159, 2.71828]], r: 4.04 });
  const text = G.serializeState(state);
  assert.equal(
    text,
    '{"version":1,"size":[100,80],"points":[[10,21,30,40]],"object":[{"box":[1,3,51,60]},{"paint":[[3.1,2.7]],"r":4}]}',
  );
  assert.deepEqual(JSON.parse(G.serializeState(G.parseState(text).state)), JSON.parse(text));
});

test("an empty state is the empty string, and the empty string is an empty state", () => {
  assert.equal(G.serializeState(G.emptyState()), "");
  const { state, error } = G.parseState("");
  assert.equal(error, null);
  assert.ok(G.isEmpty(state));
});

test("the Drag nodes' text format still reads as points", () => {
  const { state, error } = G.parseState("152,176->216,176; (10, 20) -> (30, 40)\n1.5,2->3,4");
  assert.equal(error, null);
  assert.deepEqual(state.points, [[152, 176, 216, 176], [10, 20, 30, 40], [1.5, 2, 3, 4]]);
  assert.equal(state.size, null);
  assert.equal(G.pointsText([[152, 176, 216, 176], [1, 2, 3, 4]]), "152,176->216,176; 1,2->3,4");
});

test("malformed text is reported, not thrown", () => {
  for (const bad of ["{", '{"version":2}', '{"version":1,"size":[1]}', '{"version":1,"points":[[1,2,3]]}',
    '{"version":1,"object":[{"circle":1}]}', "1,2->3", "[]"]) {
    const { state, error } = G.parseState(bad);
    assert.ok(error, bad);
    assert.ok(G.isEmpty(state));
  }
});

// ----------------------------------------------------------------------------------- hit testing
test("hit testing finds the nearest handle or target within the tolerance", () => {
  const state = G.parseState('{"version":1,"size":[100,100],"points":[[10,10,50,50],[12,10,80,20]]}').state;
  assert.deepEqual(G.hitTest(state, { x: 10.5, y: 10.5 }, 3), { kind: "handle", index: 0 });
  assert.deepEqual(G.hitTest(state, { x: 12.9, y: 10.2 }, 3), { kind: "handle", index: 1 });
  assert.deepEqual(G.hitTest(state, { x: 80, y: 22 }, 3), { kind: "target", index: 1 });
  assert.equal(G.hitTest(state, { x: 30, y: 30 }, 3), null);
  // the tolerance is in image pixels: a zoomed-out view (s = 0.25) turns 10 screen px into 40 image px
  assert.deepEqual(G.hitTest(state, { x: 30, y: 40 }, 10 / 0.25), { kind: "target", index: 0 });
});

test("hit testing of the moved object: the resize corner, then the landed box", () => {
  const mask = G.rasterise([{ box: [20, 20, 40, 30] }], 100, 100);
  const move = { bounds: G.maskBounds(mask, 100, 100), c: G.centroid(mask, 100, 100), dx: 16, dy: 8, scale: 2 };
  assert.deepEqual(G.landedBox(move.bounds, move.c, 16, 8, 2), [26, 23, 66, 43]);
  const empty = { points: [] };
  assert.deepEqual(G.hitTest(empty, { x: 65, y: 42 }, 3, move), { kind: "scale" });
  assert.deepEqual(G.hitTest(empty, { x: 30, y: 30 }, 3, move), { kind: "object" });
  assert.equal(G.hitTest(empty, { x: 21, y: 21 }, 3, move), null, "the original place is not the object any more");
});

test("shifts snap to whole latent cells and scales are rounded and clamped", () => {
  assert.deepEqual([3, 4, 11.9, 12, -4, -4.1, -12].map(G.snapShift), [0, 8, 8, 16, 0, -8, -8]);
  assert.equal(G.clampScale(1.234, 10), 1.23);
  assert.equal(G.clampScale(0.01, 10), 0.1);
  assert.equal(G.clampScale(3, 1.5), 1.5);
  assert.equal(G.wheelScale(1, -100, 10), 1.05);
  assert.equal(G.wheelScale(1, 100, 10), 0.95);
});

test("the resize handle gives the scale that puts the landed corner under the pointer", () => {
  const mask = G.rasterise([{ box: [20, 20, 40, 30] }], 100, 100);
  const bounds = G.maskBounds(mask, 100, 100);
  const c = G.centroid(mask, 100, 100);
  const corner = G.landPoint({ x: bounds[2], y: bounds[3] }, c, 8, 0, 1.5);
  assert.equal(G.scaleFromHandle(corner, bounds, c, 8, 0, 10), 1.5);
  assert.equal(G.scaleFromHandle({ x: -100, y: -100 }, bounds, c, 8, 0, 10), 0.1);
});

test("drag patches are the engine's 3x3 feature cells, clipped at the border", () => {
  assert.deepEqual(G.patchBox(152, 176, 512, 512), [148, 172, 160, 184]);
  assert.deepEqual(G.patchBox(0, 511, 512, 512), [0, 500, 12, 512]);
});

test("Load Image widget values map to /view references", () => {
  assert.deepEqual(G.parseImageRef("scene.png"), { filename: "scene.png", subfolder: "", type: "input" });
  assert.deepEqual(G.parseImageRef("clipspace/mask 1.png [input]"),
    { filename: "mask 1.png", subfolder: "clipspace", type: "input" });
  assert.deepEqual(G.parseImageRef("a/b/c.png [output]"), { filename: "c.png", subfolder: "a/b", type: "output" });
});
