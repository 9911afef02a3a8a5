"""Edit specifications, their geometry on the feature and latent grids, and start-latent initialisation.

Inputs are in **pixels** of the (already resized) image that was encoded: masks ``[H, W]`` (ComfyUI ``MASK``
``[1, H, W]`` is accepted), displacements and points in pixels. The builders convert them to

* the **feature grid** ``(gh, gw) = (H/4, W/4)`` = 2x the latent resolution (reference §1.5), where all energy
  masks live (bool ``[gh, gw]``), and
* the **latent grid** ``(h, w) = (H/8, W/8)``, where the edit region ``m_edit``, the regional-SDE mask and the
  start latent live (``[1, 1, h, w]`` float 0/1).

One coordinate frame serves both grids: a cell ``(i, j)`` of stride ``s`` (4 or 8 pixels) is the pixel square
``[j*s, (j+1)*s) x [i*s, (i+1)*s)`` and is represented by its centre. Pixel masks become feature-grid masks by
majority (a cell is in the mask when at least half of its 16 pixels are); feature masks become latent masks
by "any" (a latent cell is in when any of its 2x2 feature cells is).

Fixes of the official quirks (reference §1.13): move/paste scale about the **object's centroid** (not the
image centre); shifts never wrap around (content moved past the border is cut; moving the object entirely
off the canvas raises); masks and latents are moved in the same frame (the displacement is rounded to whole
latent cells, 8 px, so the latent shift and the feature-mask shift agree exactly); drag points clip x with the
grid width.

Task objects (:class:`GuidanceTask`, built by :func:`make_task`) satisfy the ``EditTask`` protocol of
``samplers/edit.py``: ``edit_mask``, ``sde_mask``, ``ref_mask_latent``, ``reference``, ``energy()`` and
``init_latent()``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from .energies import TASK_DEFAULTS, appearance_energy, drag_energy, move_energy, paste_energy

Point = tuple[float, float]
PointPair = tuple[Point, Point]

LATENT_STRIDE = 8  # pixels per latent cell
FEATURE_STRIDE = 4  # pixels per feature-grid cell (2x latent resolution)


# ------------------------------------------------------------------------------------------------- specs
@dataclass
class MoveSpec:
    """Move / resize an object. ``mask`` ``[H, W]`` (pixels, > 0.5 = object); ``dx``, ``dy`` in pixels
    (positive = right / down); ``scale`` resizes about the object's centroid; ``ref_mask`` (optional, pixels)
    is the region whose appearance should fill the vacated area (default: the background ``M_other``)."""

    mask: torch.Tensor
    dx: float
    dy: float
    scale: float = 1.0
    ref_mask: torch.Tensor | None = None


@dataclass
class DragSpec:
    """Content drag. ``points``: list of ``((x_handle, y_handle), (x_target, y_target))`` in pixels;
    ``mask``: optional editable region ``[H, W]`` (None = the whole image is editable)."""

    points: Sequence[PointPair]
    mask: torch.Tensor | None = None


@dataclass
class AppearanceSpec:
    """Appearance replacement. ``mask``: object in the base image; ``ref_mask``: object in the reference
    image (resized to the base image size beforehand), both ``[H, W]`` pixels."""

    mask: torch.Tensor
    ref_mask: torch.Tensor


@dataclass
class PasteSpec:
    """Object paste. ``mask``: the object on the *reference* image ``[H, W]``; it is scaled by ``scale``
    about its centroid and pasted displaced by ``(dx, dy)`` pixels into the base image. The reference image
    must be rescaled the same way before inversion: :func:`paste_reference_image`."""

    mask: torch.Tensor
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


Spec = Union[MoveSpec, DragSpec, AppearanceSpec, PasteSpec]


_NUM = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
_PAIR_RE = re.compile(rf"^\(?{_NUM},{_NUM}\)?\s*->\s*\(?{_NUM},{_NUM}\)?$")


def parse_points(text: str, width: int | None = None, height: int | None = None) -> list[PointPair]:
    """Parse ``"x1,y1->x2,y2; x3,y3->x4,y4"`` (pixels; ``;`` or newlines between pairs) into point pairs.

    Raises ``ValueError`` for malformed text, a point outside a ``width`` x ``height`` image (when given:
    ``0 <= x < width``, ``0 <= y < height``) and a pair whose handle equals its target.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("points: expected text like 'x1,y1->x2,y2; x3,y3->x4,y4', got nothing")
    pairs: list[PointPair] = []
    chunks = [c for c in re.split(r"[;\n]", text) if c.strip()]
    for n, chunk in enumerate(chunks, 1):
        m = _PAIR_RE.match(chunk.strip())
        if m is None:
            raise ValueError(f"points: pair {n} {chunk.strip()!r} is malformed; expected 'x1,y1->x2,y2' "
                             "(handle -> target, pixels)")
        x1, y1, x2, y2 = (float(v) for v in m.groups())
        pair = ((x1, y1), (x2, y2))
        _check_pair(pair, n, width, height)
        pairs.append(pair)
    return pairs


def _check_pair(pair, n: int, width: int | None, height: int | None) -> None:
    try:
        (x1, y1), (x2, y2) = pair
        vals = [float(v) for v in (x1, y1, x2, y2)]
    except (TypeError, ValueError):
        raise ValueError(f"points: pair {n} must be ((x1, y1), (x2, y2)), got {pair!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"points: pair {n} has a non-finite coordinate: {pair!r}")
    x1, y1, x2, y2 = vals
    for name, (x, y) in (("handle", (x1, y1)), ("target", (x2, y2))):
        if width is not None and height is not None and not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"points: pair {n} {name} ({x:g}, {y:g}) lies outside the {width}x{height} image")
    if (x1, y1) == (x2, y2):
        raise ValueError(f"points: pair {n} has its handle equal to its target ({x1:g}, {y1:g})")


# ------------------------------------------------------------------------------------------ mask helpers
def _latent_hw(latent_size) -> tuple[int, int]:
    if torch.is_tensor(latent_size):
        latent_size = latent_size.shape[-2:]
    try:
        h, w = (int(v) for v in tuple(latent_size)[-2:])
    except (TypeError, ValueError):
        raise ValueError(f"latent_size must be (h, w) or a [B, C, h, w] latent, got {latent_size!r}") from None
    if h < 3 or w < 3:
        raise ValueError(f"latent is too small ({h}x{w}); need at least 3x3 latent cells")
    return h, w


def pixel_mask(mask, name: str, latent_size) -> torch.Tensor:
    """Validate a pixel mask against the latent size and binarise it (``> 0.5``): bool ``[H, W]``.

    Accepts ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]`` (tensor or array). Raises ``ValueError`` naming
    ``name`` for a wrong rank, a size that is not 8x the latent size, or an empty mask.
    """
    h, w = _latent_hw(latent_size)
    if mask is None:
        raise ValueError(f"{name} is missing")
    m = torch.as_tensor(mask).detach().cpu()  # geometry is built on the CPU (small index tensors)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"{name} must be a single [H, W] mask, got shape {tuple(torch.as_tensor(mask).shape)}")
    H, W = h * LATENT_STRIDE, w * LATENT_STRIDE
    if tuple(m.shape) != (H, W):
        raise ValueError(f"{name} is {m.shape[1]}x{m.shape[0]} pixels (WxH) but the latent is {w}x{h}: the mask "
                         f"must be {W}x{H} pixels (8 pixels per latent cell)")
    m = m > 0.5 if m.dtype != torch.bool else m
    if not bool(m.any()):
        raise ValueError(f"{name} is empty (no pixel > 0.5)")
    return m


def to_grid(mask: torch.Tensor, stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """Pixel mask ``[H, W]`` -> bool ``[H/stride, W/stride]``: a cell is in when >= half its pixels are."""
    m = mask.float()[None, None]
    return F.avg_pool2d(m, stride)[0, 0] >= 0.5


def to_latent(mask: torch.Tensor) -> torch.Tensor:
    """Feature-grid mask ``[gh, gw]`` -> latent mask ``[1, 1, gh/2, gw/2]`` float: any of the 2x2 cells."""
    return F.max_pool2d(mask.float()[None, None], 2)


def _nonempty_grid(mask: torch.Tensor, name: str) -> torch.Tensor:
    g = to_grid(mask)
    if not bool(g.any()):
        raise ValueError(f"{name} is too small: it covers no 4x4-pixel feature cell by majority")
    return g


def centroid(mask: torch.Tensor) -> tuple[float, float]:
    """Centroid ``(cx, cy)`` of a pixel mask in continuous pixel coordinates (pixel ``(i, j)`` centred at
    ``(j + 0.5, i + 0.5)``)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5


def warp_source(grid_hw, stride: int, centre: Point, shift: Point, scale: float):
    """Nearest-neighbour source cells of the map "scale by ``scale`` about ``centre``, then shift by ``shift``".

    For every cell of a ``grid_hw`` grid of the given pixel ``stride`` (raster order), its centre ``p`` comes
    from ``q = centre + (p - centre - shift) / scale``. Returns ``(src, valid)``: ``src`` the flat index of the
    cell containing ``q`` (clamped into the grid) and ``valid`` whether ``q`` lies inside the canvas (no wrap).
    """
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    cx, cy = float(centre[0]), float(centre[1])
    dx, dy = float(shift[0]), float(shift[1])
    px = (torch.arange(gw, dtype=torch.float64) + 0.5) * stride
    py = (torch.arange(gh, dtype=torch.float64) + 0.5) * stride
    qx = cx + (px - cx - dx) / scale
    qy = cy + (py - cy - dy) / scale
    vx = (qx >= 0) & (qx < gw * stride)
    vy = (qy >= 0) & (qy < gh * stride)
    jx = torch.floor(qx / stride).long().clamp(0, gw - 1)
    iy = torch.floor(qy / stride).long().clamp(0, gh - 1)
    src = (iy[:, None] * gw + jx[None, :]).flatten()
    valid = (vy[:, None] & vx[None, :]).flatten()
    return src, valid


def shift_no_wrap(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims of ``t`` by whole cells (``dx`` right, ``dy`` down); vacated cells are 0
    (False), content moved past the border is cut (no wrap-around)."""
    out = torch.zeros_like(t)
    H, W = t.shape[-2], t.shape[-1]
    dy, dx = int(dy), int(dx)
    if abs(dy) >= H or abs(dx) >= W:
        return out
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _latent_shift(dx: float, dy: float) -> tuple[int, int]:
    """The displacement rounded to whole latent cells: ``(kx, ky)``, pixels = ``8 * k``."""
    for name, v in (("dx", dx), ("dy", dy)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v}")
    return _round_half_up(float(dx) / LATENT_STRIDE), _round_half_up(float(dy) / LATENT_STRIDE)


def _check_scale(scale: float) -> float:
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    return s


# ---------------------------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """Common fields: the task name, grids, and the latent-resolution masks used by the sampler."""

    task: str
    latent_size: tuple[int, int]
    m_edit: torch.Tensor  # [1,1,h,w] float 0/1: regional-gradient edit region (edit gradient inside)
    sde_mask: torch.Tensor  # [1,1,h,w] float 0/1: regional-SDE region

    @property
    def grid_size(self) -> tuple[int, int]:
        return 2 * self.latent_size[0], 2 * self.latent_size[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return LATENT_STRIDE * self.latent_size[0], LATENT_STRIDE * self.latent_size[1]

    @property
    def ref_mask_latent(self):
        """Reference-image mask at latent resolution (appearance / paste composite K,V injection), else None."""
        return None


@dataclass
class MoveGeometry(Geometry):
    """Move / resize masks on the feature grid (bool ``[gh, gw]``) and the latent warp.

    ``m_org`` object at its place; ``m_tar`` object resized by ``scale`` about its centroid, not yet shifted
    (cut at the border); ``m_cur`` resized and shifted; ``m_other = not (m_cur or m_org)``;
    ``m_ovl = m_cur and m_org``; ``m_no = m_org minus m_ovl`` (vacated); ``m_ref`` the inpaint reference
    region (user's, or ``m_other``). ``src_index[j]``: flat feature cell of the source object shown by the
    ``j``-th cell of ``m_cur`` (raster order). ``latent_src``: flat latent cell feeding each latent cell;
    ``m_moved_latent`` where the moved latent is pasted (= ``m_edit``).
    """

    m_org: torch.Tensor = None
    m_tar: torch.Tensor = None
    m_cur: torch.Tensor = None
    m_other: torch.Tensor = None
    m_ovl: torch.Tensor = None
    m_no: torch.Tensor = None
    m_ref: torch.Tensor = None
    src_index: torch.Tensor = None
    latent_src: torch.Tensor = None
    centre: Point = (0.0, 0.0)
    shift_px: tuple[int, int] = (0, 0)  # effective (dx, dy) in pixels (multiples of 8)
    scale: float = 1.0


@dataclass
class DragGeometry(Geometry):
    """Drag patches: ``handle_index`` / ``target_index`` ``[N, 9]`` flat feature-grid cells of the 3x3 patches
    (cell ``j`` of a target patch corresponds to cell ``j`` of its handle patch); ``latent_handle`` /
    ``latent_target`` ``[N, 2]`` latent patch centres ``(row, col)``; ``m_editable`` / ``m_other`` feature
    masks (inside / outside the user's editable region)."""

    handle_index: torch.Tensor = None
    target_index: torch.Tensor = None
    latent_handle: torch.Tensor = None
    latent_target: torch.Tensor = None
    m_editable: torch.Tensor = None
    m_other: torch.Tensor = None

    def patch_mask(self, which: str = "handle") -> torch.Tensor:
        """Union of the handle (or target) patches as a feature-grid mask."""
        idx = self.handle_index if which == "handle" else self.target_index
        m = torch.zeros(self.grid_size[0] * self.grid_size[1], dtype=torch.bool)
        m[idx.flatten()] = True
        return m.view(*self.grid_size)


@dataclass
class AppearanceGeometry(Geometry):
    """``m_b`` object in the base image, ``m_r`` object in the reference image (feature grid)."""

    m_b: torch.Tensor = None
    m_r: torch.Tensor = None
    m_r_latent: torch.Tensor = None

    @property
    def ref_mask_latent(self):
        return self.m_r_latent


@dataclass
class PasteGeometry(Geometry):
    """``m_b`` where the (scaled) object lands in the base image; ``m_r`` the same cells in the (rescaled)
    reference image, i.e. ``m_b`` translated back by the displacement (feature grid)."""

    m_b: torch.Tensor = None
    m_r: torch.Tensor = None
    m_r_latent: torch.Tensor = None
    centre: Point = (0.0, 0.0)
    shift_px: tuple[int, int] = (0, 0)
    scale: float = 1.0

    @property
    def ref_mask_latent(self):
        return self.m_r_latent


AnyGeometry = Union[MoveGeometry, DragGeometry, AppearanceGeometry, PasteGeometry]


def build_move_geometry(spec: MoveSpec, latent_size) -> MoveGeometry:
    """Move / resize masks (reference §1.6) with the §1.13 fixes: scale about the object's centroid, shift
    without wrap-around (cut at the border), displacement rounded to whole latent cells (8 px).

    Raises ``ValueError`` for an empty/mis-sized mask, a non-positive scale, or a move that puts the object
    entirely outside the canvas.
    """
    h, w = _latent_hw(latent_size)
    gh, gw = 2 * h, 2 * w
    obj = pixel_mask(spec.mask, "move mask", (h, w))
    scale = _check_scale(spec.scale)
    kx, ky = _latent_shift(spec.dx, spec.dy)
    d = (kx * LATENT_STRIDE, ky * LATENT_STRIDE)
    c = centroid(obj)
    m_org = _nonempty_grid(obj, "move mask")
    org_flat = m_org.flatten()

    src, valid = warp_source((gh, gw), FEATURE_STRIDE, c, d, scale)
    m_cur = (valid & org_flat[src]).view(gh, gw)
    if not bool(m_cur.any()):
        raise ValueError(f"move dx={spec.dx:g}, dy={spec.dy:g} (scale {scale:g}) puts the object entirely outside "
                         f"the {gw * FEATURE_STRIDE}x{gh * FEATURE_STRIDE} image")
    src_index = src[m_cur.flatten()]
    src0, valid0 = warp_source((gh, gw), FEATURE_STRIDE, c, (0.0, 0.0), scale)
    m_tar = (valid0 & org_flat[src0]).view(gh, gw)

    m_ovl = m_cur & m_org
    m_no = m_org & ~m_ovl
    m_other = ~(m_cur | m_org)
    if spec.ref_mask is not None:
        m_ref = _nonempty_grid(pixel_mask(spec.ref_mask, "move reference mask", (h, w)), "move reference mask")
    else:
        m_ref = m_other.clone()

    latent_src, _ = warp_source((h, w), LATENT_STRIDE, c, d, scale)
    m_cur_lat = to_latent(m_cur)
    sde = torch.maximum(m_cur_lat, to_latent(m_org))
    return MoveGeometry(task="move", latent_size=(h, w), m_edit=m_cur_lat, sde_mask=sde, m_org=m_org, m_tar=m_tar,
                        m_cur=m_cur, m_other=m_other, m_ovl=m_ovl, m_no=m_no, m_ref=m_ref, src_index=src_index,
                        latent_src=latent_src, centre=c, shift_px=d, scale=scale)


def _patch(cy: int, cx: int, gw: int) -> list[int]:
    return [(cy + a) * gw + (cx + b) for a in (-1, 0, 1) for b in (-1, 0, 1)]


def build_drag_geometry(spec: DragSpec, latent_size) -> DragGeometry:
    """Drag patches (reference §1.6): each point becomes a 3x3-cell patch on the feature grid centred on the
    cell containing it, the centre clipped so the patch stays inside (x with the grid *width*, y with the
    *height*: the official code clips x with the height). Latent patch centres are the feature centres // 2,
    clipped the same way on the latent grid. ``spec.mask=None`` makes the whole image editable (no content
    term)."""
    h, w = _latent_hw(latent_size)
    gh, gw = 2 * h, 2 * w
    H, W = h * LATENT_STRIDE, w * LATENT_STRIDE
    pts = list(spec.points) if spec.points is not None else []
    if not pts:
        raise ValueError("drag points are empty: give at least one 'x1,y1->x2,y2' pair")
    hi, ti, lh, lt = [], [], [], []
    for n, pair in enumerate(pts, 1):
        _check_pair(pair, n, W, H)
        (x1, y1), (x2, y2) = ((float(a), float(b)) for a, b in pair)
        cells = []
        for x, y in ((x1, y1), (x2, y2)):
            fx, fy = int(math.floor(x / FEATURE_STRIDE)), int(math.floor(y / FEATURE_STRIDE))
            cells.append((min(max(fy, 1), gh - 2), min(max(fx, 1), gw - 2),
                          min(max(fy // 2, 1), h - 2), min(max(fx // 2, 1), w - 2)))
        (hy, hx, lhy, lhx), (ty, tx, lty, ltx) = cells
        hi.append(_patch(hy, hx, gw))
        ti.append(_patch(ty, tx, gw))
        lh.append((lhy, lhx))
        lt.append((lty, ltx))
    if spec.mask is None:
        m_editable = torch.ones(gh, gw, dtype=torch.bool)
    else:
        m_editable = _nonempty_grid(pixel_mask(spec.mask, "drag editable mask", (h, w)), "drag editable mask")
    m_lat = to_latent(m_editable)
    return DragGeometry(task="drag", latent_size=(h, w), m_edit=m_lat, sde_mask=m_lat.clone(),
                        handle_index=torch.tensor(hi, dtype=torch.long), target_index=torch.tensor(ti, dtype=torch.long),
                        latent_handle=torch.tensor(lh, dtype=torch.long), latent_target=torch.tensor(lt, dtype=torch.long),
                        m_editable=m_editable, m_other=~m_editable)


def build_appearance_geometry(spec: AppearanceSpec, latent_size) -> AppearanceGeometry:
    """Appearance masks (reference §1.6): ``m_b`` base object, ``m_r`` reference object; edit and SDE region
    = ``m_b`` at latent resolution; ``ref_mask_latent`` = ``m_r`` (for the composite K,V injection)."""
    h, w = _latent_hw(latent_size)
    m_b = _nonempty_grid(pixel_mask(spec.mask, "appearance mask", (h, w)), "appearance mask")
    m_r = _nonempty_grid(pixel_mask(spec.ref_mask, "appearance reference mask", (h, w)), "appearance reference mask")
    mb_lat = to_latent(m_b)
    return AppearanceGeometry(task="appearance", latent_size=(h, w), m_edit=mb_lat, sde_mask=mb_lat.clone(),
                              m_b=m_b, m_r=m_r, m_r_latent=to_latent(m_r))


def build_paste_geometry(spec: PasteSpec, latent_size) -> PasteGeometry:
    """Paste masks (reference §1.6) with the §1.13 fixes: the reference object is scaled about its centroid
    (the reference image must be rescaled identically: :func:`paste_reference_image`), then translated by the
    displacement rounded to whole latent cells, without wrap-around. ``m_b`` = landing cells in the base
    image (cut at the border), ``m_r`` = ``m_b`` translated back (same cell count, raster correspondence)."""
    h, w = _latent_hw(latent_size)
    gh, gw = 2 * h, 2 * w
    obj = pixel_mask(spec.mask, "paste mask", (h, w))
    scale = _check_scale(spec.scale)
    kx, ky = _latent_shift(spec.dx, spec.dy)
    c = centroid(obj)
    m_src = _nonempty_grid(obj, "paste mask")
    src0, valid0 = warp_source((gh, gw), FEATURE_STRIDE, c, (0.0, 0.0), scale)
    m_scaled = (valid0 & m_src.flatten()[src0]).view(gh, gw)
    if not bool(m_scaled.any()):
        raise ValueError(f"paste scale {scale:g} shrinks the object to nothing")
    m_b = shift_no_wrap(m_scaled, 2 * ky, 2 * kx)
    if not bool(m_b.any()):
        raise ValueError(f"paste dx={spec.dx:g}, dy={spec.dy:g} puts the object entirely outside the "
                         f"{gw * FEATURE_STRIDE}x{gh * FEATURE_STRIDE} image")
    m_r = shift_no_wrap(m_b, -2 * ky, -2 * kx)
    mb_lat = to_latent(m_b)
    return PasteGeometry(task="paste", latent_size=(h, w), m_edit=mb_lat, sde_mask=mb_lat.clone(), m_b=m_b, m_r=m_r,
                         m_r_latent=to_latent(m_r), centre=c, shift_px=(kx * LATENT_STRIDE, ky * LATENT_STRIDE),
                         scale=scale)


_BUILDERS = {MoveSpec: build_move_geometry, DragSpec: build_drag_geometry,
             AppearanceSpec: build_appearance_geometry, PasteSpec: build_paste_geometry}


def build_geometry(spec: Spec, latent_size) -> AnyGeometry:
    """Dispatch to the builder of ``spec``'s type."""
    for cls, fn in _BUILDERS.items():
        if isinstance(spec, cls):
            return fn(spec, latent_size)
    raise ValueError(f"unknown edit spec type {type(spec).__name__}")


# ---------------------------------------------------------------------------------------- image helpers
def scale_image_about(image: torch.Tensor, scale: float, centre: Point) -> torch.Tensor:
    """Rescale ``image [B, C, H, W]`` by ``scale`` about ``centre = (cx, cy)`` (pixels), bilinear, keeping the
    canvas size; areas with no source become 0 (for a [-1, 1] image that is mid-grey, for [0, 1] black)."""
    if image.ndim != 4:
        raise ValueError(f"image must be [B, C, H, W], got {tuple(image.shape)}")
    scale = _check_scale(scale)
    B, _, H, W = image.shape
    cx, cy = float(centre[0]), float(centre[1])
    px = (torch.arange(W, dtype=torch.float64) + 0.5)
    py = (torch.arange(H, dtype=torch.float64) + 0.5)
    qx = cx + (px - cx) / scale
    qy = cy + (py - cy) / scale
    gx = (2 * qx / W - 1).to(image.dtype if image.is_floating_point() else torch.float32)
    gy = (2 * qy / H - 1).to(gx.dtype)
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None].expand(B, H, W, 2)
    return F.grid_sample(image.to(gx.dtype), grid.to(image.device), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def paste_reference_image(image: torch.Tensor, geom: PasteGeometry) -> torch.Tensor:
    """The reference image ``[B, C, H, W]`` rescaled as the paste geometry assumes (about the object centroid),
    to be encoded and inverted; identity for ``scale == 1``."""
    if tuple(image.shape[-2:]) != geom.image_size:
        raise ValueError(f"reference image is {tuple(image.shape[-2:])} pixels but the paste mask is {geom.image_size}")
    if geom.scale == 1.0:
        return image
    return scale_image_about(image, geom.scale, geom.centre)


# ------------------------------------------------------------------------------------------ start latent
def _check_z(z: torch.Tensor, geom: Geometry, name: str) -> None:
    if not torch.is_tensor(z) or z.ndim != 4:
        raise ValueError(f"{name} must be a [B, C, h, w] latent, got "
                         f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
    if tuple(z.shape[-2:]) != tuple(geom.latent_size):
        raise ValueError(f"{name} is {tuple(z.shape[-2:])} latent cells but the {geom.task} masks are for "
                         f"{tuple(geom.latent_size)} (mask pixels / 8)")


def init_move_latent(z_T: torch.Tensor, geom: MoveGeometry) -> torch.Tensor:
    """Move start latent: ``z_T`` resized by ``scale`` about the object centroid (nearest) and shifted by the
    displacement (whole latent cells, no wrap), pasted under the moved-object mask:
    ``z_in = z_T (1 - m) + z_T^moved m`` with ``m = m_edit`` (``m_cur`` at latent resolution)."""
    _check_z(z_T, geom, "z_T")
    moved = z_T.flatten(2).index_select(2, geom.latent_src.to(z_T.device)).view_as(z_T)
    m = geom.m_edit.to(device=z_T.device) > 0
    return torch.where(m, moved, z_T)


def init_drag_latent(z_T: torch.Tensor, geom: DragGeometry) -> torch.Tensor:
    """Drag start latent: for each pair, the 3x3 latent patch at the handle is copied onto the target
    (patches read from the original ``z_T``, written in pair order)."""
    _check_z(z_T, geom, "z_T")
    out = z_T.clone()
    for (hy, hx), (ty, tx) in zip(geom.latent_handle.tolist(), geom.latent_target.tolist()):
        out[..., ty - 1:ty + 2, tx - 1:tx + 2] = z_T[..., hy - 1:hy + 2, hx - 1:hx + 2]
    return out


def init_paste_latent(z_T: torch.Tensor, ref_z_T: torch.Tensor, geom: PasteGeometry) -> torch.Tensor:
    """Paste start latent: the (rescaled) reference ``ref_z_T`` shifted by the displacement in latent cells
    (no wrap) and pasted into the base ``z_T`` under ``m_b`` at latent resolution."""
    _check_z(z_T, geom, "z_T")
    if ref_z_T is None:
        raise ValueError("paste needs the reference image's inverted latent (ref_z_T)")
    _check_z(ref_z_T, geom, "ref_z_T")
    if ref_z_T.shape[1] != z_T.shape[1] or ref_z_T.shape[0] not in (1, z_T.shape[0]):
        raise ValueError(f"ref_z_T {tuple(ref_z_T.shape)} does not match z_T {tuple(z_T.shape)}")
    kx, ky = geom.shift_px[0] // LATENT_STRIDE, geom.shift_px[1] // LATENT_STRIDE
    moved = shift_no_wrap(ref_z_T.to(z_T), ky, kx).expand_as(z_T)
    m = geom.m_edit.to(device=z_T.device) > 0
    return torch.where(m, moved, z_T)


def init_appearance_latent(z_T: torch.Tensor, geom: AppearanceGeometry | None = None) -> torch.Tensor:
    """Appearance start latent: the base image's ``z_T``, unchanged (a copy)."""
    if geom is not None:
        _check_z(z_T, geom, "z_T")
    return z_T.clone()


def init_latent(geom: AnyGeometry, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
    """Start latent of any task (reference §1.6)."""
    if isinstance(geom, MoveGeometry):
        return init_move_latent(z_T, geom)
    if isinstance(geom, DragGeometry):
        return init_drag_latent(z_T, geom)
    if isinstance(geom, PasteGeometry):
        return init_paste_latent(z_T, ref_z_T, geom)
    if isinstance(geom, AppearanceGeometry):
        return init_appearance_latent(z_T, geom)
    raise ValueError(f"unknown geometry {type(geom).__name__}")


# ------------------------------------------------------------------------------------------ task object
_WEIGHT_KEYS = {"move": ("w_edit", "w_content", "w_contrast", "w_inpaint"),
                "drag": ("w_edit", "w_content", "w_inpaint"),
                "appearance": ("w_edit", "w_content"),
                "paste": ("w_edit", "w_content")}


@dataclass
class GuidanceTask:
    """A task for ``samplers.edit.sample_edit`` (the ``EditTask`` protocol).

    ``weights`` override the official defaults of :data:`TASK_DEFAULTS`; ``reference`` is the reference
    image's ``EditTrajectory`` (appearance / paste), set by the caller; ``consistent_cos`` maps every move
    term with ``s`` (see :func:`~.energies.move_energy`).
    """

    geometry: AnyGeometry
    weights: dict = field(default_factory=dict)
    reference: Any = None
    consistent_cos: bool = False

    def __post_init__(self):
        t = self.geometry.task
        allowed = _WEIGHT_KEYS[t]
        bad = sorted(set(self.weights) - set(allowed))
        if bad:
            raise ValueError(f"{t} takes weights {list(allowed)}, not {bad}")
        w = {k: TASK_DEFAULTS[t][k] for k in allowed}
        for k, v in self.weights.items():
            if v is None or not math.isfinite(float(v)) or float(v) < 0:
                raise ValueError(f"weight {k} must be a finite number >= 0, got {v}")
            w[k] = float(v)
        self.weights = w

    @property
    def task(self) -> str:
        return self.geometry.task

    @property
    def edit_mask(self) -> torch.Tensor:
        return self.geometry.m_edit

    @property
    def sde_mask(self) -> torch.Tensor:
        return self.geometry.sde_mask

    @property
    def ref_mask_latent(self):
        return self.geometry.ref_mask_latent

    @property
    def edit_first(self) -> bool:
        """Official order of the two backward passes (edit first for move/drag)."""
        return self.task in ("move", "drag")

    def energy(self, feats, ref_feats, ref2_feats=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E_edit, E_content)`` of the task from the current / source / reference-image features."""
        g, w = self.geometry, self.weights
        if isinstance(g, MoveGeometry):
            return move_energy(feats, ref_feats, m_cur=g.m_cur, src_index=g.src_index, m_other=g.m_other,
                               m_no=g.m_no, m_ref=g.m_ref, consistent_cos=self.consistent_cos, **w)
        if isinstance(g, DragGeometry):
            return drag_energy(feats, ref_feats, handle_index=g.handle_index, target_index=g.target_index,
                               m_other=g.m_other, **w)
        if ref2_feats is None:
            raise ValueError(f"{self.task} needs the reference image's features (ref2_feats)")
        fn = appearance_energy if isinstance(g, AppearanceGeometry) else paste_energy
        return fn(feats, ref_feats, ref2_feats, m_b=g.m_b, m_r=g.m_r, **w)

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
        return init_latent(self.geometry, z_T, ref_z_T)


def _upsample_mask(mask, k: int, name: str):
    if mask is None:
        return None
    m = torch.as_tensor(mask)
    if m.ndim < 2:
        raise ValueError(f"{name} must be an [H, W] mask, got shape {tuple(m.shape)}")
    return m.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def rescale_spec(spec: Spec, pixels_per_latent: int) -> Spec:
    """The same edit expressed in the canonical frame of :data:`LATENT_STRIDE` (8) pixels per latent cell.

    For an autoencoder with another downsampling factor (the demo model's is 4), every pixel becomes a
    ``k x k`` block, ``k = 8 / pixels_per_latent``: masks are upsampled by nearest neighbour, offsets and
    points multiplied by ``k``, scales unchanged, so the geometry is exactly that of the original image.
    """
    ppl = int(pixels_per_latent)
    if ppl != pixels_per_latent or ppl < 1 or LATENT_STRIDE % ppl:
        raise ValueError(f"pixels_per_latent must be 1, 2, 4 or 8 (a divisor of {LATENT_STRIDE}), "
                         f"got {pixels_per_latent!r}")
    k = LATENT_STRIDE // ppl
    if k == 1:
        return spec
    if isinstance(spec, MoveSpec):
        return MoveSpec(_upsample_mask(spec.mask, k, "mask"), spec.dx * k, spec.dy * k, spec.scale,
                        _upsample_mask(spec.ref_mask, k, "ref_mask"))
    if isinstance(spec, DragSpec):
        pts = [((float(h[0]) * k, float(h[1]) * k), (float(g[0]) * k, float(g[1]) * k)) for h, g in spec.points]
        return DragSpec(pts, _upsample_mask(spec.mask, k, "mask"))
    if isinstance(spec, AppearanceSpec):
        return AppearanceSpec(_upsample_mask(spec.mask, k, "mask"), _upsample_mask(spec.ref_mask, k, "ref_mask"))
    if isinstance(spec, PasteSpec):
        return PasteSpec(_upsample_mask(spec.mask, k, "mask"), spec.dx * k, spec.dy * k, spec.scale)
    raise ValueError(f"spec must be a MoveSpec, DragSpec, AppearanceSpec or PasteSpec, got {type(spec).__name__}")


def make_task(spec: Spec, latent_size, *, reference: Any = None, consistent_cos: bool = False,
              pixels_per_latent: int = LATENT_STRIDE, **weights) -> GuidanceTask:
    """Build the geometry of ``spec`` for a latent of ``latent_size`` (``(h, w)`` or a latent tensor) and wrap
    it as a :class:`GuidanceTask`; ``weights`` (``w_edit=...``) override the official defaults.

    ``pixels_per_latent`` is the autoencoder's downsampling factor (8 for Stable Diffusion; the spec's
    pixels are then those of the image the latent was encoded from, see :func:`rescale_spec`)."""
    spec = rescale_spec(spec, pixels_per_latent)
    return GuidanceTask(build_geometry(spec, latent_size), dict(weights), reference, consistent_cos)
