"""Deterministic synthetic scenes with exact ground truth for every DiffEditor edit (numpy only).

A :class:`Scene` is a smooth background (a two-colour gradient of a named palette plus low-frequency
texture) and 1-3 non-overlapping objects, each a parametric :class:`Obj`. Images are ``float32
[H, W, 3]`` in ``0..1``; masks are ``bool [H, W]`` (``True`` where the pixel *centre* lies inside the
shape). Objects are rendered analytically from a signed distance in pixels (optionally with a 1-px
anti-aliased edge: coverage ``clip(0.5 - sdf, 0, 1)``, so the hard mask is exactly ``coverage > 0.5``).

Because every image is a pure function of (background, objects), the truth of an edit is obtained by
editing the parameters and re-rendering:

* :func:`move` - translate object ``i`` by ``(dx, dy)``; the vacated area shows the background.
* :func:`resize` - scale object ``i`` about its own centre.
* :func:`drag_move` - handles on the shape's extremities, all moved by the same vector (truth: a move).
* :func:`drag_stretch` - one extremity handle dragged outward along the object's own axis, the opposite
  extremity pinned by a second (stationary) handle; truth: the shape stretched along that axis with the
  pinned extremity fixed (an exact affine map of the shape, rendered analytically).
* :func:`appearance` - object ``i`` takes the colour of object ``j`` (of this or a reference scene).
* :func:`paste` - object ``j`` of a reference scene is pasted at its centre + ``(dx, dy)``.
* :func:`remove` - every object of a colour or shape is removed (the background re-rendered).

Each returns an :class:`EditCase` holding the source and truth images, the truth object masks and the
inputs an editor needs (source mask, offsets, scale, handle/target points, reference image + mask).
:func:`random_edit` draws a valid edit of a given kind (inside the canvas, no overlaps).

Exactness: centres are quantised to 1/8 px and the local coordinates ``pixel_centre - centre`` are then
exact in float64, so a move by an integer ``(dx, dy)`` shifts the rendered mask *exactly*.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

CANVAS = 64
QUANT = 8.0  # centres and sizes are multiples of 1 / QUANT px (dyadic: exact float arithmetic)

# --------------------------------------------------------------------------------------- vocabulary
#: object colours: saturated, well separated from each other and from every background palette
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.08, 0.08),
    "green": (0.05, 0.85, 0.10),
    "blue": (0.12, 0.22, 0.95),
    "yellow": (0.98, 0.92, 0.08),
    "magenta": (0.90, 0.12, 0.88),
    "cyan": (0.08, 0.88, 0.92),
    "orange": (1.00, 0.52, 0.02),
    "white": (0.98, 0.98, 0.98),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

#: background palettes: two gradient end colours each (muted, mid-range)
PALETTES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "sand": ((0.80, 0.70, 0.52), (0.64, 0.55, 0.40)),
    "sky": ((0.45, 0.57, 0.76), (0.57, 0.68, 0.84)),
    "grass": ((0.32, 0.45, 0.25), (0.42, 0.54, 0.30)),
    "slate": ((0.30, 0.33, 0.38), (0.45, 0.48, 0.52)),
    "clay": ((0.58, 0.38, 0.31), (0.68, 0.47, 0.38)),
    "dusk": ((0.35, 0.28, 0.45), (0.48, 0.40, 0.56)),
}
PALETTE_NAMES: tuple[str, ...] = tuple(PALETTES)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[float, ...] = (6.0, 7.0, 8.0, 9.0, 10.0, 11.0)  # half-extent scale ``size`` in px
TEXTURE_AMPLITUDE = 0.035
GAP = 3.0  # minimal clearance between object bounding circles (px)
MARGIN = 1.0  # minimal clearance between an object's bounding box and the canvas border (px)

#: every word a caption can contain (for the demo tokenizer)
CAPTION_WORDS: tuple[str, ...] = ("a", "and", "on", "background") + COLOR_NAMES + SHAPES + PALETTE_NAMES


def _q(v: float) -> float:
    return float(np.round(float(v) * QUANT) / QUANT)


# -------------------------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class Obj:
    """A parametric object. ``(cx, cy)``: centre in px (x right, y down; pixel ``(r, c)`` has its centre
    at ``(c + 0.5, r + 0.5)``); ``size``: the shape's scale in px (circle radius); ``angle``: rotation
    in degrees (counter-clockwise on screen); ``sx, sy``: stretch along the object's own x / y axis."""
    shape: str
    color: str
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    sx: float = 1.0
    sy: float = 1.0

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}")

    @property
    def rgb(self) -> np.ndarray:
        return np.asarray(COLORS[self.color], np.float32)

    def replace(self, **kw) -> "Obj":
        return dataclasses.replace(self, **kw)

    def moved(self, dx: float, dy: float) -> "Obj":
        return self.replace(cx=_q(self.cx + dx), cy=_q(self.cy + dy))

    def scaled(self, scale: float) -> "Obj":
        return self.replace(size=self.size * float(scale))

    # -- geometry in the object's *unstretched* local frame (units: px at this size)
    def local_vertices(self) -> Optional[np.ndarray]:
        return _unit_polygon(self.shape) * self.size if self.shape != "circle" else None

    def to_world(self, pts_local: np.ndarray) -> np.ndarray:
        """Unstretched local points ``[N, 2]`` -> image coordinates (stretch, rotate, translate)."""
        p = np.asarray(pts_local, np.float64) * np.array([self.sx, self.sy])
        c, s = _cos_sin(self.angle)
        # screen rotation (y down): counter-clockwise on screen by ``angle``
        x = c * p[:, 0] + s * p[:, 1]
        y = -s * p[:, 0] + c * p[:, 1]
        return np.stack([x + self.cx, y + self.cy], 1)

    def axis(self, which: str) -> np.ndarray:
        """Unit vector of the object's local ``"x"`` or ``"y"`` axis in image coordinates."""
        c, s = _cos_sin(self.angle)
        return np.array([c, -s]) if which == "x" else np.array([s, c])

    def extremity(self, side: str) -> np.ndarray:
        """Local (unstretched) point of the shape extremity ``"top" | "bottom" | "left" | "right"``:
        the vertex / boundary point with the extreme local coordinate (midpoint of an extreme edge)."""
        if self.shape == "circle":
            pts = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], np.float64) * self.size
            return pts[["top", "bottom", "left", "right"].index(side)]
        v = self.local_vertices()
        k, sgn = {"top": (1, -1), "bottom": (1, 1), "left": (0, -1), "right": (0, 1)}[side]
        ext = (v[:, k] * sgn).max()
        on = v[np.isclose(v[:, k] * sgn, ext, atol=1e-9)]
        return on.mean(0)

    def radius(self) -> float:
        """Bounding-circle radius (px) about the centre."""
        r = self.size if self.shape == "circle" else float(np.linalg.norm(self.local_vertices(), axis=1).max())
        return r * max(self.sx, self.sy)

    def bbox(self) -> tuple[float, float, float, float]:
        """Exact axis-aligned bounds ``(x0, y0, x1, y1)`` in px."""
        if self.shape == "circle":
            c, s = _cos_sin(self.angle)
            a, b = self.size * self.sx, self.size * self.sy
            hx = math.hypot(a * c, b * s)
            hy = math.hypot(a * s, b * c)
            return self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy
        w = self.to_world(self.local_vertices())
        return float(w[:, 0].min()), float(w[:, 1].min()), float(w[:, 0].max()), float(w[:, 1].max())

    def sdf(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Signed distance (px, negative inside) at image points; exact for unstretched shapes, exact in
        sign (and approximate in magnitude) for stretched ones."""
        lx, ly = px - self.cx, py - self.cy  # exact for dyadic centres
        c, s = _cos_sin(self.angle)
        ux = c * lx - s * ly  # inverse of to_world's rotation
        uy = s * lx + c * ly
        ux, uy = ux / self.sx, uy / self.sy
        if self.shape == "circle":
            d = np.hypot(ux, uy) - self.size
        else:
            d = _polygon_sdf(ux, uy, self.local_vertices())
        return d * min(self.sx, self.sy)

    def coverage(self, height: int = CANVAS, width: int = CANVAS, aa: bool = True) -> np.ndarray:
        py, px = _pixel_centres(height, width)
        d = self.sdf(px, py)
        if aa:
            return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)
        return (d < 0).astype(np.float32)

    def mask(self, height: int = CANVAS, width: int = CANVAS) -> np.ndarray:
        py, px = _pixel_centres(height, width)
        return self.sdf(px, py) < 0

    def phrase(self) -> str:
        return f"a {self.color} {self.shape}"


def _cos_sin(angle_deg: float) -> tuple[float, float]:
    a = math.radians(angle_deg)
    return math.cos(a), math.sin(a)


_POLYS: dict[str, np.ndarray] = {}


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (counter-clockwise in a y-down frame does not matter: even-odd test) for ``size == 1``."""
    if shape not in _POLYS:
        if shape == "square":
            h = 0.8
            v = [(-h, -h), (h, -h), (h, h), (-h, h)]
        elif shape == "diamond":
            v = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
        elif shape == "triangle":  # equilateral, apex up, centroid at the origin
            r = 1.1
            v = [(0, -r), (r * math.cos(math.radians(30)), r / 2), (-r * math.cos(math.radians(30)), r / 2)]
        elif shape == "cross":
            a, w = 1.0, 0.35
            v = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
                 (-a, -w), (-w, -w)]
        else:
            raise ValueError(shape)
        _POLYS[shape] = np.asarray(v, np.float64)
    return _POLYS[shape]


def _polygon_sdf(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (even-odd inside test)."""
    d2 = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, bool)
    n = len(v)
    for i in range(n):
        ax, ay = v[i]
        bx, by = v[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        crosses = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = ax + (y - ay) * ex / np.where(ey == 0, 1.0, ey)
        inside ^= crosses & (x < xi)
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    key = (height, width)
    if key not in _GRIDS:
        py, px = np.meshgrid(np.arange(height, dtype=np.float64) + 0.5,
                             np.arange(width, dtype=np.float64) + 0.5, indexing="ij")
        py.setflags(write=False)
        px.setflags(write=False)
        _GRIDS[key] = (py, px)
    return _GRIDS[key]


# ------------------------------------------------------------------------------------------ background
def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinear upsampling of a ``(cells+1)^2`` grid of uniform noise in ``-1..1``: low-frequency texture."""
    g = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    ys = (np.arange(height) + 0.5) / height * cells
    xs = (np.arange(width) + 0.5) / width * cells
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no visible grid creases
    a = g[y0][:, x0]
    b = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def render_background(palette: str, rng: np.random.Generator, height: int = CANVAS,
                      width: int = CANVAS) -> np.ndarray:
    """Gradient between the palette's two colours along a random direction + low-frequency texture."""
    c0, c1 = (np.asarray(c, np.float64) for c in PALETTES[palette])
    theta = rng.uniform(0, 2 * math.pi)
    py, px = _pixel_centres(height, width)
    t = ((px - width / 2) * math.cos(theta) + (py - height / 2) * math.sin(theta)) / (0.71 * max(height, width))
    t = np.clip(t + 0.5, 0.0, 1.0)[..., None]
    img = c0 * (1 - t) + c1 * t
    lum = _smooth_noise(rng, height, width, 3) * 0.7 + _smooth_noise(rng, height, width, 5) * 0.3
    chroma = np.stack([_smooth_noise(rng, height, width, 2) for _ in range(3)], -1) * 0.25
    img = img + TEXTURE_AMPLITUDE * (lum[..., None] + chroma)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Effects:
    """Scene-wide effects an edit must respect, rendered from the objects' parameters (so exact truths):

    * ``shadow = (dx, dy, darkness, softness)``: every object casts a soft shadow, its own shape offset by
      ``(dx, dy)`` px, darkening the background by up to ``darkness`` with a ``softness``-px ramp;
    * ``light = (angle_deg, strength)``: a light gradient across the canvas; each object's colour is scaled
      by ``1 + strength * t`` with ``t`` in -0.5..0.5 the position of its *centre* along the direction;
    * ``stripes = (period, angle_deg, amplitude)``: a high-frequency stripe texture on the background.
    """
    shadow: Optional[tuple[float, float, float, float]] = None
    light: Optional[tuple[float, float]] = None
    stripes: Optional[tuple[float, float, float]] = None


@dataclass(frozen=True, eq=False)
class Scene:
    """Background image + objects (painted in order, later ones in front). ``seed`` and ``palette``
    describe the background; ``effects`` the shadows, light and background stripes (none by default)."""
    background: np.ndarray
    objects: tuple[Obj, ...]
    palette: str
    seed: Optional[int] = None
    effects: Effects = Effects()

    @property
    def height(self) -> int:
        return int(self.background.shape[0])

    @property
    def width(self) -> int:
        return int(self.background.shape[1])

    def with_objects(self, objects: Sequence[Obj]) -> "Scene":
        return dataclasses.replace(self, objects=tuple(objects))

    def image(self, aa: bool = True) -> np.ndarray:
        fx = self.effects
        if fx == Effects():  # the plain scene (float32 arithmetic, as every committed result was made)
            img = self.background.astype(np.float32).copy()
            for o in self.objects:
                a = o.coverage(self.height, self.width, aa)[..., None]
                img = img * (1 - a) + o.rgb * a
            return img.astype(np.float32)
        img = self.background.astype(np.float64).copy()
        py, px = _pixel_centres(self.height, self.width)
        if fx.stripes is not None:
            period, ang, amp = fx.stripes
            c, s_ = _cos_sin(ang)
            img = img + amp * np.sin(2 * math.pi * (px * c + py * s_) / period)[..., None]
        if fx.shadow is not None:
            sdx, sdy, dark, soft = fx.shadow
            lit = np.ones((self.height, self.width))
            for o in self.objects:  # shadows do not stack: the darkest one wins
                d = o.replace(cx=o.cx + sdx, cy=o.cy + sdy).sdf(px, py)
                lit = np.minimum(lit, 1 - dark * np.clip(0.5 - d / soft, 0.0, 1.0))
            img = img * lit[..., None]
        for o in self.objects:
            a = o.coverage(self.height, self.width, aa)[..., None].astype(np.float64)
            img = img * (1 - a) + self.object_rgb(o) * a
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    def object_rgb(self, o: Obj) -> np.ndarray:
        """The object's colour as lit in this scene (its own colour without a light)."""
        if self.effects.light is None:
            return o.rgb.astype(np.float64)
        ang, strength = self.effects.light
        c, s_ = _cos_sin(ang)
        t = ((o.cx - self.width / 2) * c + (o.cy - self.height / 2) * s_) / max(self.width, self.height)
        return np.clip(o.rgb * (1 + strength * t), 0.0, 1.0)

    def masks(self) -> list[np.ndarray]:
        """Per-object visible hard masks (later objects occlude earlier ones; objects never overlap)."""
        out, taken = [], np.zeros((self.height, self.width), bool)
        for o in reversed(self.objects):
            m = o.mask(self.height, self.width) & ~taken
            taken |= m
            out.append(m)
        return out[::-1]

    def caption(self) -> str:
        return caption(self.objects, self.palette)

    def valid(self, gap: float = GAP, margin: float = MARGIN) -> bool:
        return all(inside_canvas(o, self.height, self.width, margin) for o in self.objects) and \
            not any(overlaps(a, b, gap) for k, a in enumerate(self.objects) for b in self.objects[k + 1:])


def caption(objects: Sequence[Obj], palette: str) -> str:
    """"a red circle, a blue square and a green triangle on a sand background" (commas are cosmetic)."""
    ph = [o.phrase() for o in objects]
    if not ph:
        return f"a {palette} background"
    body = ph[0] if len(ph) == 1 else ", ".join(ph[:-1]) + " and " + ph[-1]
    return f"{body} on a {palette} background"


def inside_canvas(o: Obj, height: int = CANVAS, width: int = CANVAS, margin: float = MARGIN) -> bool:
    x0, y0, x1, y1 = o.bbox()
    return x0 >= margin and y0 >= margin and x1 <= width - margin and y1 <= height - margin


def overlaps(a: Obj, b: Obj, gap: float = GAP) -> bool:
    return math.hypot(a.cx - b.cx, a.cy - b.cy) < a.radius() + b.radius() + gap


def _fits(o: Obj, others: Sequence[Obj], height: int, width: int) -> bool:
    return inside_canvas(o, height, width) and not any(overlaps(o, b) for b in others)


def make_scene(seed: int, n_objects: Optional[int] = None, size: int = CANVAS, palette: Optional[str] = None,
               shapes: Sequence[str] = SHAPES, colors: Sequence[str] = COLOR_NAMES, rotate: bool = True,
               max_tries: int = 200) -> Scene:
    """A deterministic scene: same seed (and arguments) -> identical arrays.

    1-3 objects (``n_objects`` to force), random shape/colour (colours may repeat), size from
    :data:`SIZES`, rotation uniform in +-20 degrees (``rotate=False``: 0), placed by rejection sampling
    fully inside the canvas and without overlaps.
    """
    rng = np.random.default_rng(seed)
    pal = palette or PALETTE_NAMES[int(rng.integers(len(PALETTE_NAMES)))]
    background = render_background(pal, rng, size, size)
    n = int(n_objects) if n_objects is not None else int(rng.integers(1, 4))
    for _attempt in range(50):
        objs: list[Obj] = []
        for _ in range(n):
            shape = shapes[int(rng.integers(len(shapes)))]
            color = colors[int(rng.integers(len(colors)))]
            sz = SIZES[int(rng.integers(len(SIZES)))] * (size / CANVAS)
            ang = _q(rng.uniform(-20, 20)) if rotate else 0.0
            for _t in range(max_tries):
                o = Obj(shape, color, _q(rng.uniform(0, size)), _q(rng.uniform(0, size)), sz, ang)
                if _fits(o, objs, size, size):
                    objs.append(o)
                    break
            else:
                break
        if len(objs) == n:
            return Scene(background, tuple(objs), pal, seed)
    raise RuntimeError(f"could not place {n} objects (seed {seed})")


# ----------------------------------------------------------------------------------------------- edits
@dataclass(eq=False)
class EditCase:
    """One edit with its exact truth and the editor's inputs.

    ``index``: the edited object in ``source.objects`` (``None`` for paste / remove); ``truth_index``: the
    edited (moved / resized / recoloured / pasted) object in ``truth.objects``. ``source_mask``: where the
    edited object is in the source image; ``target_mask``: where it is in the truth; ``edit_region``:
    their union (for remove: the removed objects) - pixels outside it must not change.
    ``handles`` / ``targets``: ``[N, 2]`` float ``(x, y)`` image points. ``ref_image`` / ``ref_mask``:
    the reference (appearance donor / paste source). ``concept``: the removed word.
    """
    kind: str
    source: Scene
    truth: Scene
    index: Optional[int] = None
    truth_index: Optional[int] = None
    source_mask: Optional[np.ndarray] = None
    target_mask: Optional[np.ndarray] = None
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    handles: Optional[np.ndarray] = None
    targets: Optional[np.ndarray] = None
    ref_image: Optional[np.ndarray] = None
    ref_mask: Optional[np.ndarray] = None
    concept: Optional[str] = None
    params: dict = field(default_factory=dict)

    @property
    def source_image(self) -> np.ndarray:
        return self.source.image()

    @property
    def truth_image(self) -> np.ndarray:
        return self.truth.image()

    @property
    def truth_masks(self) -> list[np.ndarray]:
        return self.truth.masks()

    @property
    def edit_region(self) -> np.ndarray:
        r = np.zeros((self.source.height, self.source.width), bool)
        for m in (self.source_mask, self.target_mask):
            if m is not None:
                r |= m
        return r

    @property
    def prompt(self) -> str:
        return self.truth.caption()

    def inputs(self) -> dict:
        """The editor's inputs (only those this kind uses)."""
        keys = {
            "move": ("source_mask", "dx", "dy"),
            "resize": ("source_mask", "scale"),
            "drag_move": ("source_mask", "handles", "targets"),
            "drag_stretch": ("source_mask", "handles", "targets"),
            "appearance": ("source_mask", "ref_image", "ref_mask"),
            "paste": ("ref_image", "ref_mask", "dx", "dy"),
            "remove": ("concept", "source_mask"),
        }[self.kind]
        out = {"image": self.source_image, "caption": self.source.caption(), "prompt": self.prompt}
        out.update({k: getattr(self, k) for k in keys})
        return out


class InvalidEdit(ValueError):
    """The edited scene would leave the canvas or make objects overlap."""


def _check(scene: Scene, objs: Sequence[Obj], changed: int, validate: bool) -> None:
    if not validate:
        return
    o = objs[changed]
    if not inside_canvas(o, scene.height, scene.width):
        raise InvalidEdit(f"object {changed} would leave the canvas")
    if any(overlaps(o, b) for k, b in enumerate(objs) if k != changed):
        raise InvalidEdit(f"object {changed} would overlap another object")


def _obj_mask(scene: Scene, k: int) -> np.ndarray:
    return scene.masks()[k]


def move(scene: Scene, i: int, dx: float, dy: float, validate: bool = True) -> EditCase:
    objs = list(scene.objects)
    objs[i] = objs[i].moved(dx, dy)
    _check(scene, objs, i, validate)
    truth = scene.with_objects(objs)
    return EditCase("move", scene, truth, i, i, _obj_mask(scene, i), _obj_mask(truth, i),
                    dx=float(objs[i].cx - scene.objects[i].cx), dy=float(objs[i].cy - scene.objects[i].cy),
                    params={"i": i, "dx": dx, "dy": dy})


def resize(scene: Scene, i: int, scale: float, validate: bool = True) -> EditCase:
    objs = list(scene.objects)
    objs[i] = objs[i].scaled(scale)
    _check(scene, objs, i, validate)
    truth = scene.with_objects(objs)
    return EditCase("resize", scene, truth, i, i, _obj_mask(scene, i), _obj_mask(truth, i), scale=float(scale),
                    params={"i": i, "scale": scale})


def _handle_points(o: Obj, sides: Sequence[str]) -> np.ndarray:
    return o.to_world(np.stack([o.extremity(s) for s in sides]))


def drag_move(scene: Scene, i: int, dx: float, dy: float, sides: Sequence[str] = ("top", "bottom"),
              validate: bool = True) -> EditCase:
    """Handles on the given extremities, every target = handle + (dx, dy): the truth is a move."""
    case = move(scene, i, dx, dy, validate)
    h = _handle_points(scene.objects[i], sides)
    case.kind = "drag_move"
    case.handles = h
    case.targets = h + np.array([case.dx, case.dy])
    case.params = {"i": i, "dx": dx, "dy": dy, "sides": tuple(sides)}
    return case


_OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}


def stretch_obj(o: Obj, side: str, amount: float) -> Obj:
    """The object with its ``side`` extremity pushed ``amount`` px outward along its own axis while the
    opposite extremity stays fixed (an exact affine stretch of the shape)."""
    k = 1 if side in ("top", "bottom") else 0
    h = o.extremity(side)[k] * (o.sy if k else o.sx)  # stretched-local coordinate of the handle
    a = o.extremity(_OPPOSITE[side])[k] * (o.sy if k else o.sx)  # ... and of the pinned extremity
    span = abs(h - a)
    f = (span + amount) / span
    shift_local = a * (1 - f)  # where the centre (local 0) goes along the axis
    axis = o.axis("y" if k else "x")
    c = np.array([o.cx, o.cy]) + shift_local * axis
    kw = {"sy": o.sy * f} if k else {"sx": o.sx * f}
    # the centre is not quantised here: it is where the exact affine map sends it
    return o.replace(cx=float(c[0]), cy=float(c[1]), **kw)


def drag_stretch(scene: Scene, i: int, side: str, amount: float, validate: bool = True) -> EditCase:
    """Drag of one extremity outward by ``amount`` px (handle 0) with the opposite extremity pinned
    (handle 1, target = itself). Truth: the shape stretched along that axis (see :func:`stretch_obj`)."""
    o = scene.objects[i]
    objs = list(scene.objects)
    objs[i] = stretch_obj(o, side, amount)
    _check(scene, objs, i, validate)
    truth = scene.with_objects(objs)
    h = _handle_points(o, (side, _OPPOSITE[side]))
    k = 1 if side in ("top", "bottom") else 0
    out = o.axis("y" if k else "x") * (1 if side in ("bottom", "right") else -1)
    t = h.copy()
    t[0] += amount * out
    return EditCase("drag_stretch", scene, truth, i, i, _obj_mask(scene, i), _obj_mask(truth, i),
                    handles=h, targets=t, params={"i": i, "side": side, "amount": amount})


def appearance(scene: Scene, i: int, j: int, ref: Optional[Scene] = None) -> EditCase:
    """Object ``i`` takes the colour of object ``j`` of ``ref`` (default: this scene)."""
    ref = scene if ref is None else ref
    objs = list(scene.objects)
    objs[i] = objs[i].replace(color=ref.objects[j].color)
    truth = scene.with_objects(objs)
    m = _obj_mask(scene, i)
    return EditCase("appearance", scene, truth, i, i, m, m.copy(), ref_image=ref.image(),
                    ref_mask=_obj_mask(ref, j), params={"i": i, "j": j, "color": ref.objects[j].color})


def paste(scene: Scene, ref: Scene, j: int, dx: float, dy: float, validate: bool = True) -> EditCase:
    """Object ``j`` of ``ref`` is pasted into ``scene`` at its own position + ``(dx, dy)`` (on top)."""
    o = ref.objects[j].moved(dx, dy)
    objs = list(scene.objects) + [o]
    _check(scene, objs, len(objs) - 1, validate)
    truth = scene.with_objects(objs)
    return EditCase("paste", scene, truth, None, len(objs) - 1, None, _obj_mask(truth, len(objs) - 1),
                    dx=float(o.cx - ref.objects[j].cx), dy=float(o.cy - ref.objects[j].cy),
                    ref_image=ref.image(), ref_mask=_obj_mask(ref, j), params={"j": j, "dx": dx, "dy": dy})


def remove(scene: Scene, concept: str) -> EditCase:
    """Remove every object whose colour or shape is ``concept``; ``source_mask``: their union."""
    if concept not in COLORS and concept not in SHAPES:
        raise ValueError(f"unknown concept {concept!r}")
    hit = [k for k, o in enumerate(scene.objects) if concept in (o.color, o.shape)]
    masks = scene.masks()
    m = np.zeros((scene.height, scene.width), bool)
    for k in hit:
        m |= masks[k]
    truth = scene.with_objects([o for k, o in enumerate(scene.objects) if k not in hit])
    return EditCase("remove", scene, truth, None, None, m, None, concept=concept,
                    params={"concept": concept, "removed": hit})


EDIT_KINDS = ("move", "resize", "drag_move", "drag_stretch", "appearance", "paste", "remove")


def random_edit(scene: Scene, kind: str, rng: np.random.Generator, ref: Optional[Scene] = None,
                max_tries: int = 200) -> Optional[EditCase]:
    """A random *valid* edit of ``kind`` (``None`` if none was found). Moves use integer offsets of
    4-20 px; resizes scale 0.6-1.5; stretches push 3-10 px; paste needs ``ref`` (or draws one from
    ``rng``) and a scene with at most 2 objects; appearance needs two different colours (in the scene or
    ``ref``); remove picks a colour or shape present in the scene."""
    objs = scene.objects
    n = len(objs)
    for _ in range(max_tries):
        try:
            if kind in ("move", "drag_move"):
                i = int(rng.integers(n))
                r = rng.uniform(4, 20)
                a = rng.uniform(0, 2 * math.pi)
                dx, dy = int(round(r * math.cos(a))), int(round(r * math.sin(a)))
                if kind == "move":
                    return move(scene, i, dx, dy)
                return drag_move(scene, i, dx, dy)
            if kind == "resize":
                i = int(rng.integers(n))
                s = float(rng.choice([0.6, 0.7, 0.8, 1.25, 1.35, 1.5]))
                return resize(scene, i, s)
            if kind == "drag_stretch":
                i = int(rng.integers(n))
                side = ("top", "bottom", "left", "right")[int(rng.integers(4))]
                return drag_stretch(scene, i, side, float(int(rng.integers(3, 11))))
            if kind == "appearance":
                donor = ref if ref is not None else scene
                i = int(rng.integers(n))
                js = [j for j, o in enumerate(donor.objects) if o.color != objs[i].color]
                if not js:
                    if ref is None:
                        donor = make_scene(int(rng.integers(2 ** 31)))
                        js = [j for j, o in enumerate(donor.objects) if o.color != objs[i].color]
                    if not js:
                        continue
                j = js[int(rng.integers(len(js)))]
                return appearance(scene, i, j, None if donor is scene else donor)
            if kind == "paste":
                if n > 2:
                    return None
                donor = ref if ref is not None else make_scene(int(rng.integers(2 ** 31)))
                j = int(rng.integers(len(donor.objects)))
                o = donor.objects[j]
                tx, ty = rng.uniform(0, scene.width), rng.uniform(0, scene.height)
                return paste(scene, donor, j, int(round(tx - o.cx)), int(round(ty - o.cy)))
            if kind == "remove":
                words = sorted({o.color for o in objs} | {o.shape for o in objs})
                return remove(scene, words[int(rng.integers(len(words)))])
            raise ValueError(f"unknown edit kind {kind!r}")
        except InvalidEdit:
            continue
    return None


# ------------------------------------------------------------------------------------ scene families
#: families of scenes where copying the object's pixels is the wrong edit (each with its exact truth):
#: ``shadow`` (the shadow must follow the object), ``light`` (the object's brightness depends on where it
#: is), ``stripes`` (a high-frequency background the vacated area must continue), ``occlusion`` (the
#: object moves behind or in front of another one). ``plain`` is the original benchmark.
FAMILIES = ("plain", "shadow", "light", "stripes", "occlusion")


def family_effects(family: str, rng: np.random.Generator) -> Effects:
    """The scene-wide effects of ``family`` (random direction / angle from ``rng``)."""
    if family in ("plain", "occlusion"):
        return Effects()
    if family == "shadow":
        a = rng.uniform(0, 2 * math.pi)
        return Effects(shadow=(_q(3.5 * math.cos(a)), _q(3.5 * math.sin(a)), 0.45, 2.5))
    if family == "light":
        return Effects(light=(float(rng.uniform(0, 360)), 0.9))
    if family == "stripes":
        return Effects(stripes=(6.0, float(rng.uniform(0, 180)), 0.06))
    raise ValueError(f"unknown scene family {family!r}; expected one of {FAMILIES}")


def with_effects(scene: Scene, effects: Effects) -> Scene:
    return dataclasses.replace(scene, effects=effects)


def occlude(scene: Scene, i: int, j: int, behind: bool, rng: np.random.Generator,
            max_tries: int = 100) -> Optional[EditCase]:
    """Move object ``i`` so that it overlaps object ``j`` by 25-60% of its area, painted ``behind`` or in
    front of it (the objects are re-ordered; the source image does not change since they do not overlap
    there). ``None`` if no such move keeps the object inside the canvas."""
    objs = list(scene.objects)
    oi, oj = objs[i], objs[j]
    order = [k for k in range(len(objs)) if k != i]
    order.insert(order.index(j) + (0 if behind else 1), i)
    src = scene.with_objects([objs[k] for k in order])
    ni, nj = order.index(i), order.index(j)
    area = float(src.masks()[ni].sum())
    for _ in range(max_tries):
        a = rng.uniform(0, 2 * math.pi)
        r = (oi.radius() + oj.radius()) * rng.uniform(0.35, 0.75)
        dx = int(round(oj.cx + r * math.cos(a) - oi.cx))
        dy = int(round(oj.cy + r * math.sin(a) - oi.cy))
        moved = list(src.objects)
        moved[ni] = moved[ni].moved(dx, dy)
        if not inside_canvas(moved[ni], scene.height, scene.width):
            continue
        if any(overlaps(moved[ni], b) for k, b in enumerate(moved) if k not in (ni, nj)):
            continue
        truth = src.with_objects(moved)
        vis = truth.masks()[ni]
        hidden_i = 1 - float(vis.sum()) / max(area, 1.0)
        hidden_j = 1 - float(truth.masks()[nj].sum()) / max(float(src.masks()[nj].sum()), 1.0)
        if not 0.25 <= (hidden_i if behind else hidden_j) <= 0.6:  # the occluded one is 25-60% hidden
            continue
        return EditCase("move", src, truth, ni, ni, src.masks()[ni], vis,
                        dx=float(moved[ni].cx - src.objects[ni].cx), dy=float(moved[ni].cy - src.objects[ni].cy),
                        params={"i": ni, "dx": dx, "dy": dy, "occluder": nj, "behind": behind})
    return None
