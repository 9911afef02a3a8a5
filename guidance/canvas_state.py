"""The canvas editor's state: parse, validate, rasterise and turn into edit specs (no ComfyUI imports).

The front-end editor (``web/js/``) stores what the artist clicked and painted as one JSON string (the
``editor`` widget of DiffEditor Canvas), so it travels in saved workflows, copy/paste, undo/redo and API
prompts::

    {"version": 1,
     "size": [W, H],                          # pixels of the image the editor showed
     "points": [[hx, hy, tx, ty], ...],       # drag: handle -> target, integer pixels (column, row)
     "object": [layer, ...],                  # move / paste: the object (paste: on the reference image)
     "region": [layer, ...]}                  # drag: the editable region (optional)

    layer = {"box": [x0, y0, x1, y1]}         # pixel edges, 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H
          | {"paint": [[x, y], ...], "r": R}  # a brush stroke: every pixel within R of the polyline
          | {"erase": [[x, y], ...], "r": R}  # an eraser stroke (clears those pixels)

Coordinates are pixels of that image: pixel ``(column j, row i)`` covers ``[j, j+1) x [i, i+1)`` and is
in a box or stroke when its centre ``(j + 0.5, i + 0.5)`` is (the editor's JavaScript rasteriser uses the
same rule). Layers apply in order on top of an optional input mask. When the image that reaches the node
has another size of the same aspect ratio (a resize between the loader and the node), every coordinate
and ``dx``/``dy`` is scaled to it; a different aspect ratio is an error.

Errors are ``ValueError``s whose message starts with the name of the input (``editor: ...``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
from dataclasses import dataclass, field

import torch

__all__ = ["CanvasState", "parse_state", "rasterise", "CanvasResult", "resolve", "points_text", "STATE_VERSION",
           "TASKS"]

STATE_VERSION = 1
TASKS = ("move", "drag", "paste")
_KEYS = ("version", "size", "points", "object", "region")
_MAX_SIDE = 16384
_ASPECT_TOLERANCE = 0.01


@dataclass
class CanvasState:
    """A validated editor state (coordinates in pixels of ``size``; ``size`` None = nothing drawn)."""

    size: tuple[int, int] | None = None  # (W, H)
    points: list[tuple[float, float, float, float]] = field(default_factory=list)
    object: list[dict] = field(default_factory=list)
    region: list[dict] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.points or self.object or self.region)


def _num(v, where: str, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{name}: {where} must be a finite number, got {v!r}")
    return float(v)


def _inside(x: float, y: float, W: int, H: int) -> bool:
    return 0 <= x < W and 0 <= y < H


def _layer(layer, where: str, name: str, W: int, H: int) -> dict:
    if not isinstance(layer, dict) or len(layer) == 0:
        raise ValueError(f"{name}: {where} must be an object like {{\"box\": [x0, y0, x1, y1]}}, got {layer!r}")
    kinds = [k for k in ("box", "paint", "erase") if k in layer]
    if len(kinds) != 1:
        raise ValueError(f"{name}: {where} must have exactly one of 'box', 'paint', 'erase', got keys "
                         f"{sorted(layer)}")
    kind = kinds[0]
    if kind == "box":
        if set(layer) != {"box"}:
            raise ValueError(f"{name}: {where} has unknown keys {sorted(set(layer) - {'box'})}")
        b = layer["box"]
        if not isinstance(b, list) or len(b) != 4:
            raise ValueError(f"{name}: {where} box must be [x0, y0, x1, y1], got {b!r}")
        x0, y0, x1, y1 = (_num(v, f"{where} box value", name) for v in b)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"{name}: {where} box {b} is empty (needs x0 < x1 and y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
            raise ValueError(f"{name}: {where} box {b} lies outside the {W}x{H} image")
        return {"box": [x0, y0, x1, y1]}
    if set(layer) != {kind, "r"}:
        raise ValueError(f"{name}: {where} must be {{\"{kind}\": [[x, y], ...], \"r\": radius}}, got keys "
                         f"{sorted(layer)}")
    r = _num(layer["r"], f"{where} radius", name)
    if not 0 < r <= max(W, H):
        raise ValueError(f"{name}: {where} radius must be in (0, {max(W, H)}] pixels, got {r:g}")
    pts = layer[kind]
    if not isinstance(pts, list) or not pts:
        raise ValueError(f"{name}: {where} needs at least one [x, y] point")
    out = []
    for n, p in enumerate(pts, 1):
        if not isinstance(p, list) or len(p) != 2:
            raise ValueError(f"{name}: {where} point {n} must be [x, y], got {p!r}")
        x, y = (_num(v, f"{where} point {n}", name) for v in p)
        if not (0 <= x <= W and 0 <= y <= H):
            raise ValueError(f"{name}: {where} point {n} ({x:g}, {y:g}) lies outside the {W}x{H} image")
        out.append([x, y])
    return {kind: out, "r": r}


def parse_state(text, name: str = "editor") -> CanvasState:
    """Parse and validate the editor's JSON text (``""`` = nothing drawn). Raises ``ValueError`` naming
    ``name`` for malformed JSON, unknown keys, points or boxes outside the image, bad radii."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return CanvasState()
    if isinstance(text, str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON ({e.msg} at character {e.pos}); clear the editor or fix "
                             "the text") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object with 'version' and 'size', got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown} (expected some of {list(_KEYS)})")
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"{name}: unsupported version {data.get('version')!r} (this pack reads version "
                         f"{STATE_VERSION})")
    for key in ("points", "object", "region"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{name}: '{key}' must be a list, got {type(data[key]).__name__}")
    if not any(data.get(k) for k in ("points", "object", "region")):
        return CanvasState(size=_size(data["size"], name) if "size" in data else None)
    if "size" not in data:
        raise ValueError(f"{name}: 'size' ([width, height] of the image the editor showed) is missing")
    W, H = _size(data["size"], name)
    points = []
    for n, p in enumerate(data.get("points", []), 1):
        if not isinstance(p, list) or len(p) != 4:
            raise ValueError(f"{name}: point pair {n} must be [handle x, handle y, target x, target y], got {p!r}")
        hx, hy, tx, ty = (_num(v, f"point pair {n}", name) for v in p)
        for what, (x, y) in (("handle", (hx, hy)), ("target", (tx, ty))):
            if not _inside(x, y, W, H):
                raise ValueError(f"{name}: point pair {n} {what} ({x:g}, {y:g}) lies outside the {W}x{H} image")
        if (hx, hy) == (tx, ty):
            raise ValueError(f"{name}: point pair {n} has its handle equal to its target ({hx:g}, {hy:g})")
        points.append((hx, hy, tx, ty))
    obj = [_layer(l, f"object layer {n}", name, W, H) for n, l in enumerate(data.get("object", []), 1)]
    region = [_layer(l, f"region layer {n}", name, W, H) for n, l in enumerate(data.get("region", []), 1)]
    return CanvasState(size=(W, H), points=points, object=obj, region=region)


def _size(size, name: str) -> tuple[int, int]:
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise ValueError(f"{name}: 'size' must be [width, height] in whole pixels, got {size!r}")
    W, H = size
    if not (0 < W <= _MAX_SIDE and 0 < H <= _MAX_SIDE):
        raise ValueError(f"{name}: 'size' {size} is not a plausible image size")
    return W, H


# ----------------------------------------------------------------------------------------- rasterising
@contextlib.contextmanager
def _one_thread():
    """Run small tensor work on one intra-op thread: these are many tiny ops on a few hundred thousand
    pixels, where thread synchronisation costs more than it saves (8x slower on a busy 2-core CPU)."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def one_thread(fn):
    """Decorator: :func:`_one_thread` around ``fn``."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _one_thread():
            return fn(*args, **kwargs)
    return run


def _segment_cover(out: torch.Tensor, a, b, r: float, value: bool) -> None:
    """Set every pixel of ``out`` ([H, W] bool) whose centre lies within ``r`` of segment ``a``-``b``."""
    H, W = out.shape
    x0, x1 = min(a[0], b[0]) - r, max(a[0], b[0]) + r
    y0, y1 = min(a[1], b[1]) - r, max(a[1], b[1]) + r
    j0, j1 = max(0, math.floor(x0 - 0.5)), min(W, math.ceil(x1 + 0.5))
    i0, i1 = max(0, math.floor(y0 - 0.5)), min(H, math.ceil(y1 + 0.5))
    if j0 >= j1 or i0 >= i1:
        return
    px = torch.arange(j0, j1, dtype=torch.float64)[None, :] + 0.5
    py = torch.arange(i0, i1, dtype=torch.float64)[:, None] + 0.5
    ax, ay = float(a[0]), float(a[1])
    vx, vy = float(b[0]) - ax, float(b[1]) - ay
    ll = vx * vx + vy * vy
    if ll > 0:
        t = (((px - ax) * vx + (py - ay) * vy) / ll).clamp(0.0, 1.0)
    else:
        t = torch.zeros(1, 1, dtype=torch.float64)
    d2 = (px - ax - t * vx) ** 2 + (py - ay - t * vy) ** 2
    hit = d2 <= r * r
    out[i0:i1, j0:j1][hit] = value


@one_thread
def rasterise(layers: list[dict], size: tuple[int, int], base: torch.Tensor | None = None) -> torch.Tensor:
    """Rasterise validated ``layers`` into a bool ``[H, W]`` mask of ``size = (W, H)``, applied in order on
    top of ``base`` (a bool ``[H, W]`` mask, or all False)."""
    W, H = size
    out = torch.zeros(H, W, dtype=torch.bool) if base is None else base.clone().to(torch.bool)
    px = torch.arange(W, dtype=torch.float64) + 0.5
    py = torch.arange(H, dtype=torch.float64) + 0.5
    for layer in layers:
        if "box" in layer:
            x0, y0, x1, y1 = layer["box"]
            inx = (px >= x0) & (px < x1)
            iny = (py >= y0) & (py < y1)
            out |= iny[:, None] & inx[None, :]
            continue
        kind = "paint" if "paint" in layer else "erase"
        pts, r = layer[kind], float(layer["r"])
        segs = list(zip(pts[:-1], pts[1:])) or [(pts[0], pts[0])]
        for a, b in segs:
            _segment_cover(out, a, b, r, kind == "paint")
    return out


# ------------------------------------------------------------------------------------------- resolving
def _rescaled(state: CanvasState, W: int, H: int, name: str) -> tuple[CanvasState, float, float]:
    """``state`` in the pixels of a ``W`` x ``H`` image, and the factors (fx, fy) from its size."""
    if state.size is None or state.size == (W, H):
        return state, 1.0, 1.0
    Ws, Hs = state.size
    fx, fy = W / Ws, H / Hs
    if abs(fx / fy - 1.0) > _ASPECT_TOLERANCE:
        raise ValueError(f"{name}: the editor's coordinates are for a {Ws}x{Hs} image but the image is {W}x{H} "
                         "(another aspect ratio); open the editor on this image and place them again")
    fr = math.sqrt(fx * fy)
    pts = [(min(W - 1, math.floor((hx + 0.5) * fx)), min(H - 1, math.floor((hy + 0.5) * fy)),
            min(W - 1, math.floor((tx + 0.5) * fx)), min(H - 1, math.floor((ty + 0.5) * fy)))
           for hx, hy, tx, ty in state.points]
    for n, (hx, hy, tx, ty) in enumerate(pts, 1):
        if (hx, hy) == (tx, ty):
            raise ValueError(f"{name}: point pair {n} collapses to one pixel on the {W}x{H} image (scaled from "
                             f"{Ws}x{Hs}); move its target further from its handle")

    def layer(l):
        if "box" in l:
            x0, y0, x1, y1 = l["box"]
            return {"box": [x0 * fx, y0 * fy, x1 * fx, y1 * fy]}
        kind = "paint" if "paint" in l else "erase"
        return {kind: [[x * fx, y * fy] for x, y in l[kind]], "r": l["r"] * fr}

    return CanvasState((W, H), pts, [layer(l) for l in state.object], [layer(l) for l in state.region]), fx, fy


@dataclass
class CanvasResult:
    """What the canvas resolves to on a ``W`` x ``H`` image (pixels of that image)."""

    task: str
    size: tuple[int, int]
    mask: torch.Tensor | None  # bool [H, W]: the object (move: on the image; paste: on the reference image)
    #                            or the drag editable region (None = everything may change)
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    points: list = field(default_factory=list)  # [((hx, hy), (tx, ty)), ...]


def _check_finite(v, name: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not lo <= v <= hi:
        raise ValueError(f"{name}: expected a finite number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


@one_thread
def resolve(task: str, text, image_size: tuple[int, int], *, mask: torch.Tensor | None = None, dx: float = 0.0,
            dy: float = 0.0, scale: float = 1.0, max_scale: float = 10.0, name: str = "editor") -> CanvasResult:
    """Resolve the editor text of a ``task`` canvas on an image of ``image_size = (W, H)``.

    * ``mask``: an optional input mask ``[H, W]`` (> 0.5 = in); the editor's layers apply on top of it;
    * ``dx``, ``dy`` (pixels of the editor's image, like every coordinate) and ``scale`` for move / paste;
    * drag also reads the text format ``x1,y1->x2,y2; ...`` (pixels of this image) instead of JSON.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    W, H = int(image_size[0]), int(image_size[1])
    if isinstance(text, str) and text.strip() and not text.lstrip().startswith("{"):
        if task != "drag":
            raise ValueError(f"{name}: expected the editor's JSON state (starting with '{{'), got {text[:40]!r}")
        from .specs import parse_points

        try:
            pairs = parse_points(text, W, H)
        except ValueError as e:
            msg = str(e)
            raise ValueError(f"{name}: {msg[len('points: '):] if msg.startswith('points: ') else msg}") from None
        state = CanvasState((W, H), [(a[0], a[1], b[0], b[1]) for a, b in pairs])
    else:
        state = parse_state(text, name)
    if mask is not None:
        if tuple(mask.shape) != (H, W):
            raise ValueError(f"mask: it is {mask.shape[-1]}x{mask.shape[-2]} pixels but the image is {W}x{H}")
        base = mask > 0.5
    else:
        base = None
    state, fx, fy = _rescaled(state, W, H, name)
    if task == "drag":
        if not state.points:
            raise ValueError(f"{name}: no drag points: click a handle, then its target, on the canvas (or type "
                             "'x1,y1->x2,y2')")
        region = rasterise(state.region, (W, H), base) if (state.region or base is not None) else None
        if region is not None and not bool(region.any()):
            raise ValueError(f"{name}: the editable region is empty: draw a region box or paint it, or clear it "
                             "so the whole image may change")
        pts = [((float(a), float(b)), (float(c), float(d))) for a, b, c, d in state.points]
        return CanvasResult("drag", (W, H), region, points=pts)
    dx = _check_finite(dx, "dx", -8192, 8192) * fx
    dy = _check_finite(dy, "dy", -8192, 8192) * fy
    scale = _check_finite(scale, "scale", 0.1, max_scale)
    obj = rasterise(state.object, (W, H), base)
    if not bool(obj.any()):
        where = "on the reference image " if task == "paste" else ""
        raise ValueError(f"{name}: the object mask is empty: draw a box or paint over the object {where}on the "
                         "canvas, or connect a mask")
    return CanvasResult(task, (W, H), obj, dx=dx, dy=dy, scale=scale)


def points_text(points) -> str:
    """Point pairs in the text format of the Drag nodes: ``x1,y1->x2,y2; ...``."""
    return "; ".join(f"{a[0]:g},{a[1]:g}->{b[0]:g},{b[1]:g}" for a, b in points)
