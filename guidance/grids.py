"""The pixel, feature and latent grids of an edit, and the one mask-resizing helper of the pack.

* **pixels** ``(H, W)``: the (already resized) image that was encoded; masks, displacements and points of the
  edit specs live here;
* the **feature grid** ``(gh, gw) = (H/4, W/4)`` = 2x the latent resolution (reference §1.5), where all
  energy masks live (bool ``[gh, gw]``);
* the **latent grid** ``(h, w) = (H/8, W/8)``, where the edit region, the regional-SDE mask and the start
  latent live (``[1, 1, h, w]`` float 0/1).

One coordinate frame serves all grids: a cell ``(i, j)`` of stride ``s`` pixels is the pixel square
``[j*s, (j+1)*s) x [i*s, (i+1)*s)`` and is represented by its centre.

:func:`resize_mask` is the only place a mask changes resolution (edit masks, the regional-gradient mask,
K,V composite token masks, blend masks, the drag editable region, spec rescaling).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .windows import round_half_up

LATENT_STRIDE = 8  # pixels per latent cell
FEATURE_STRIDE = 4  # pixels per feature-grid cell (2x latent resolution)

Point = tuple[float, float]

RESIZE_MODES = ("nearest", "area", "majority", "any")


def resize_mask(mask, size, mode: str = "nearest") -> torch.Tensor:
    """A mask at another resolution: float ``[B, 1, h, w]`` (bool for ``majority``).

    ``mask``: ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` (values kept in their dtype's float form);
    ``size = (h, w)``. Modes:

    * ``nearest``: nearest-neighbour sampling (for integer up-scaling every pixel becomes a ``k x k`` block);
    * ``area``: the mean over each target cell (soft masks, e.g. a feathered blend mask);
    * ``majority``: a cell is in when at least half of its pixels are (pixel mask -> feature grid);
    * ``any``: a cell is in when any of its pixels is (feature grid -> latent grid).

    The mask is returned unchanged in value (only made 4-D float) when it already has the size.
    """
    m = torch.as_tensor(mask)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    elif m.ndim != 4:
        raise ValueError(f"mask must be [H, W], [B, H, W] or [B, 1, H, W], got shape {tuple(m.shape)}")
    if not m.is_floating_point():
        m = m.float()
    size = (int(size[0]), int(size[1]))
    if mode == "majority":
        return F.avg_pool2d(m, _stride(m, size)) >= 0.5 if tuple(m.shape[-2:]) != size else m >= 0.5
    if tuple(m.shape[-2:]) == size:
        return m
    if mode == "any":
        return F.max_pool2d(m, _stride(m, size))
    if mode in ("nearest", "area"):
        return F.interpolate(m, size=size, mode=mode)
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def _stride(m: torch.Tensor, size) -> int:
    H, W = m.shape[-2:]
    k = H // size[0]
    if k < 1 or H != k * size[0] or W != k * size[1]:
        raise ValueError(f"a {W}x{H} mask does not pool evenly onto a {size[1]}x{size[0]} grid")
    return k


# ------------------------------------------------------------------------------------------ pixel masks
def latent_hw(latent_size) -> tuple[int, int]:
    """``(h, w)`` from ``(h, w)`` or a ``[B, C, h, w]`` latent (at least 3x3 cells)."""
    if torch.is_tensor(latent_size):
        latent_size = latent_size.shape[-2:]
    try:
        h, w = (int(v) for v in tuple(latent_size)[-2:])
    except (TypeError, ValueError):
        raise ValueError(f"latent_size must be (h, w) or a [B, C, h, w] latent, got {latent_size!r}") from None
    if h < 3 or w < 3:
        raise ValueError(f"latent is too small ({h}x{w}); need at least 3x3 latent cells")
    return h, w


def check_mask_size(mask, name: str, latent_size, threshold: bool = True) -> torch.Tensor:
    """A single ``[H, W]`` mask of the image size (8x the latent), on the CPU: bool (``> 0.5``) when
    ``threshold``, else its values.

    Accepts ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]`` (tensor or array). Raises ``ValueError`` naming
    ``name`` for a wrong rank or a size that is not 8x the latent size.
    """
    h, w = latent_hw(latent_size)
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
    if not threshold:
        return m
    return m > 0.5 if m.dtype != torch.bool else m


def pixel_mask(mask, name: str, latent_size) -> torch.Tensor:
    """:func:`check_mask_size` binarised (bool ``[H, W]``), and non-empty."""
    m = check_mask_size(mask, name, latent_size)
    if not bool(m.any()):
        raise ValueError(f"{name} is empty (no pixel > 0.5)")
    return m


def to_grid(mask: torch.Tensor, stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """Pixel mask ``[H, W]`` -> bool ``[H/stride, W/stride]``: a cell is in when >= half its pixels are."""
    H, W = mask.shape[-2:]
    return resize_mask(mask.float(), (H // stride, W // stride), "majority")[0, 0]


def to_latent(mask: torch.Tensor) -> torch.Tensor:
    """Feature-grid mask ``[gh, gw]`` -> latent mask ``[1, 1, gh/2, gw/2]`` float: any of the 2x2 cells."""
    gh, gw = mask.shape[-2:]
    return resize_mask(mask.float(), (gh // 2, gw // 2), "any")


def nonempty_grid(mask: torch.Tensor, name: str) -> torch.Tensor:
    g = to_grid(mask)
    if not bool(g.any()):
        raise ValueError(f"{name} is too small: it covers no 4x4-pixel feature cell by majority")
    return g


def centroid(mask: torch.Tensor) -> Point:
    """Centroid ``(cx, cy)`` of a pixel mask in continuous pixel coordinates (pixel ``(i, j)`` centred at
    ``(j + 0.5, i + 0.5)``)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5


# ---------------------------------------------------------------------------------------- moving cells
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


def latent_shift(dx: float, dy: float) -> tuple[int, int]:
    """The displacement rounded to whole latent cells: ``(kx, ky)``, pixels = ``8 * k``."""
    for name, v in (("dx", dx), ("dy", dy)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v}")
    return round_half_up(float(dx) / LATENT_STRIDE), round_half_up(float(dy) / LATENT_STRIDE)


def check_scale(scale: float, name: str = "scale") -> float:
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {scale}")
    return s


def scale_image_about(image: torch.Tensor, scale: float, centre: Point, padding: str = "zeros") -> torch.Tensor:
    """Rescale ``image [B, C, H, W]`` by ``scale`` about ``centre = (cx, cy)`` (pixels), bilinear, keeping the
    canvas size; areas with no source become 0 (``padding="zeros"``: for a [-1, 1] image that is mid-grey, for
    [0, 1] black) or repeat the nearest edge pixel (``padding="border"``)."""
    if image.ndim != 4:
        raise ValueError(f"image must be [B, C, H, W], got {tuple(image.shape)}")
    scale = check_scale(scale)
    B, _, H, W = image.shape
    cx, cy = float(centre[0]), float(centre[1])
    px = (torch.arange(W, dtype=torch.float64) + 0.5)
    py = (torch.arange(H, dtype=torch.float64) + 0.5)
    qx = cx + (px - cx) / scale
    qy = cy + (py - cy) / scale
    gx = (2 * qx / W - 1).to(image.dtype if image.is_floating_point() else torch.float32)
    gy = (2 * qy / H - 1).to(gx.dtype)
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None].expand(B, H, W, 2)
    if padding not in ("zeros", "border"):
        raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")
    return F.grid_sample(image.to(gx.dtype), grid.to(image.device), mode="bilinear", padding_mode=padding,
                         align_corners=False)
