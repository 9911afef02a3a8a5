"""A cheap picture of what an edit will start from (no model, no guidance): for DiffEditor Canvas.

* move / paste: the object (cut from the source, or from the reference image for paste), scaled about its
  centroid and shifted by the displacement rounded to whole latent cells (as the engine does), composited
  over the source; the area it leaves is tinted blue and its landing place outlined in yellow;
* drag: each handle's and target's 3x3 feature-cell patch (red / blue squares, clipped at the border as the
  engine clips them), a yellow arrow from handle to target, and the area outside the editable region dimmed.

They run on one intra-op thread (many tiny tensor ops; see ``canvas_state.one_thread``).

Images are ``[H, W, 3]`` floats in 0..1 (ComfyUI IMAGE without the batch); masks bool ``[H, W]``. A 512x512
preview takes a few tens of milliseconds on a CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .canvas_state import _segment_cover, one_thread
from .grids import FEATURE_STRIDE, LATENT_STRIDE

__all__ = ["landing", "preview_move", "preview_drag", "rounded_shift"]

_YELLOW = (1.0, 0.85, 0.1)
_RED = (0.95, 0.15, 0.15)
_BLUE = (0.2, 0.5, 1.0)


def rounded_shift(dx: float, dy: float) -> tuple[int, int]:
    """The displacement the engine applies: rounded (half up) to whole latent cells, in pixels."""
    return (LATENT_STRIDE * math.floor(dx / LATENT_STRIDE + 0.5), LATENT_STRIDE * math.floor(dy / LATENT_STRIDE + 0.5))


def _centroid(mask: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5


def landing(mask: torch.Tensor, dx: float, dy: float, scale: float):
    """Where the object lands: ``(source_x, source_y, valid)`` index maps ``[H, W]`` (nearest neighbour) of
    the map "scale about the centroid, then shift by the rounded displacement"; ``valid`` marks target pixels
    whose source lies inside the image *and* in the object."""
    H, W = mask.shape
    cx, cy = _centroid(mask)
    sx, sy = rounded_shift(dx, dy)
    px = torch.arange(W, dtype=torch.float64) + 0.5
    py = torch.arange(H, dtype=torch.float64) + 0.5
    qx = cx + (px - cx - sx) / scale
    qy = cy + (py - cy - sy) / scale
    vx, vy = (qx >= 0) & (qx < W), (qy >= 0) & (qy < H)
    jx = torch.floor(qx).long().clamp(0, W - 1)
    iy = torch.floor(qy).long().clamp(0, H - 1)
    valid = (vy[:, None] & vx[None, :]) & mask[iy[:, None], jx[None, :]]
    return jx, iy, valid


def _bbox(mask: torch.Tensor, pad: int = 0):
    """Row and column slices of the bounding box of a bool mask, grown by ``pad`` (None if empty)."""
    rows, cols = torch.nonzero(mask.any(1)), torch.nonzero(mask.any(0))
    if rows.numel() == 0:
        return None
    H, W = mask.shape
    return (slice(max(0, int(rows[0]) - pad), min(H, int(rows[-1]) + 1 + pad)),
            slice(max(0, int(cols[0]) - pad), min(W, int(cols[-1]) + 1 + pad)))


def _edge(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The inner border of a bool mask, ``width`` pixels thick (computed on its bounding box)."""
    out = torch.zeros_like(mask)
    box = _bbox(mask, width)
    if box is None:
        return out
    m = mask[box]
    outside = F.pad((~m).float()[None, None], (width,) * 4, value=1.0)
    near = F.max_pool2d(outside, 2 * width + 1, stride=1)[0, 0] > 0
    out[box] = m & near
    return out


def _paint(out: torch.Tensor, where: torch.Tensor, colour, alpha: float = 1.0) -> None:
    box = _bbox(where)
    if box is None:
        return
    region, w = out[box], where[box][..., None]
    c = torch.tensor(colour, dtype=out.dtype)
    out[box] = torch.where(w, region * (1 - alpha) + c * alpha, region)


def _paint_rect_outline(out: torch.Tensor, box, width: int, colour) -> None:
    """Paint the inner border (``width`` px) of the pixel box [x0, y0, x1, y1) in ``colour``."""
    H, W = out.shape[:2]
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(W, box[2]), min(H, box[3])
    if x0 >= x1 or y0 >= y1:
        return
    c = torch.tensor(colour, dtype=out.dtype)
    out[y0:min(y1, y0 + width), x0:x1] = c
    out[max(y0, y1 - width):y1, x0:x1] = c
    out[y0:y1, x0:min(x1, x0 + width)] = c
    out[y0:y1, max(x0, x1 - width):x1] = c


def _paint_segment(out: torch.Tensor, a, b, r: float, colour) -> None:
    """Paint every pixel whose centre lies within ``r`` of segment ``a``-``b`` (on the segment's box only)."""
    H, W = out.shape[:2]
    j0, j1 = max(0, math.floor(min(a[0], b[0]) - r - 0.5)), min(W, math.ceil(max(a[0], b[0]) + r + 0.5))
    i0, i1 = max(0, math.floor(min(a[1], b[1]) - r - 0.5)), min(H, math.ceil(max(a[1], b[1]) + r + 0.5))
    if j0 >= j1 or i0 >= i1:
        return
    local = torch.zeros(i1 - i0, j1 - j0, dtype=torch.bool)
    _segment_cover(local, (a[0] - j0, a[1] - i0), (b[0] - j0, b[1] - i0), r, True)
    region = out[i0:i1, j0:j1]
    out[i0:i1, j0:j1] = torch.where(local[..., None], torch.tensor(colour, dtype=out.dtype), region)


def _line_width(H: int, W: int) -> int:
    return max(1, round(max(H, W) / 256))


@one_thread
def preview_move(image: torch.Tensor, mask: torch.Tensor, dx: float, dy: float, scale: float,
                 source: torch.Tensor | None = None) -> torch.Tensor:
    """Move / resize (``source`` None: the object is cut from ``image``) or paste (``source`` = the
    reference image the object ``mask`` is on) composited over ``image``."""
    img = image.detach().float().cpu().clamp(0, 1)
    src = img if source is None else source.detach().float().cpu().clamp(0, 1)
    H, W = mask.shape
    jx, iy, valid = landing(mask, dx, dy, scale)
    out = img.clone()
    lw = _line_width(H, W)
    if source is None:  # the place the object leaves
        _paint(out, mask & ~valid, _BLUE, 0.35)
        _paint(out, _edge(mask, lw), _BLUE, 0.8)
    out = torch.where(valid[..., None], src[iy[:, None], jx[None, :]], out)
    _paint(out, _edge(valid, lw), _YELLOW)
    return out


def _patch_box(x: float, y: float, W: int, H: int) -> tuple[int, int, int, int]:
    """Pixel box [x0, y0, x1, y1) of the engine's 3x3 feature-cell patch around point (x, y)."""
    gw, gh = W // FEATURE_STRIDE, H // FEATURE_STRIDE
    fx = min(max(int(math.floor(x / FEATURE_STRIDE)), 1), gw - 2)
    fy = min(max(int(math.floor(y / FEATURE_STRIDE)), 1), gh - 2)
    return ((fx - 1) * FEATURE_STRIDE, (fy - 1) * FEATURE_STRIDE, (fx + 2) * FEATURE_STRIDE,
            (fy + 2) * FEATURE_STRIDE)


@one_thread
def preview_drag(image: torch.Tensor, points, region: torch.Tensor | None = None) -> torch.Tensor:
    """Drag: patches, arrows and the editable region over ``image``; ``points`` = [((hx, hy), (tx, ty)), ...]."""
    out = image.detach().float().cpu().clamp(0, 1)
    H, W = out.shape[:2]
    lw = _line_width(H, W)
    if region is not None:
        out = torch.where(region[..., None], out, out * 0.45)
        _paint(out, _edge(region, lw), (1.0, 1.0, 1.0), 0.6)
    else:
        out = out.clone()
    for (hx, hy), (tx, ty) in points:
        for (x, y), colour in (((hx, hy), _RED), ((tx, ty), _BLUE)):
            _paint_rect_outline(out, _patch_box(x, y, W, H), lw, colour)
        a, b = (hx + 0.5, hy + 0.5), (tx + 0.5, ty + 0.5)
        _paint_segment(out, a, b, lw * 0.75, _YELLOW)
        length = math.hypot(b[0] - a[0], b[1] - a[1])
        if length > 0:
            ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
            head = min(length * 0.4, 6.0 * lw + 4.0)
            for sx in (1, -1):  # two barbs at +-30 degrees
                cx = ux * math.cos(math.pi / 6) - sx * uy * math.sin(math.pi / 6)
                cy = uy * math.cos(math.pi / 6) + sx * ux * math.sin(math.pi / 6)
                _paint_segment(out, b, (b[0] - head * cx, b[1] - head * cy), lw * 0.75, _YELLOW)
    return out
