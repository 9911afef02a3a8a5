"""Dense warps of an object region for the warp-and-inpaint start (Inpaint4Drag-style), on the latent grid.

A :class:`LatentWarp` says, for every latent cell, whether the warped object lands there (``target``), where
in the source it comes from (``grid``, a backward map in ``F.grid_sample`` coordinates), which cells the
object occupied before (``source``) and which of those it uncovers (``hole = source & ~target``, filled
by inpainting). Cells outside ``target`` keep the base latent exactly.

The maps are built in image pixels and sampled at latent-cell centres (``stride`` pixels per cell):

* move / resize / paste: the affine map "scale by ``s`` about the object's centroid, then shift by
  ``(dx, dy)``", inverted in closed form;
* drag: one handle → target pair is a translation, two a similarity, three or more a thin-plate spline
  (kornia's ``get_tps_transform`` / ``warp_points_tps``) fitted from the targets back to the handles; the
  region that moves is the drag's mask (the object, as in Inpaint4Drag), or a disc around each handle.

The *forward* footprint of the object (``target``) is its mask sampled through the *backward* map, so
every target cell has exactly one source position (no splatting holes), and the bidirectional pair
(forward footprint, backward colours) is consistent. Sampling is torch's ``grid_sample``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .grids import resize_mask
from .specs import DragSpec, MoveSpec, PasteSpec


@dataclass
class LatentWarp:
    """A backward map on a ``[h, w]`` latent grid and the object's footprints (bool ``[h, w]``)."""

    grid: torch.Tensor  # [1, h, w, 2] float, x/y in -1..1 (align_corners=False), valid where target
    target: torch.Tensor  # where the warped object lands
    source: torch.Tensor  # where the object was (in the base image; empty for a paste)
    stride: int  # pixels per latent cell
    kind: str

    @property
    def hole(self) -> torch.Tensor:
        """Cells the object uncovers: in its old footprint, not in its new one."""
        return self.source & ~self.target

    @property
    def changed(self) -> torch.Tensor:
        """Every cell whose content changes: the new footprint and the hole."""
        return self.target | self.hole

    def sample(self, latent: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """``latent [B, C, h, w]`` read through the backward map (meaningful inside ``target``)."""
        g = self.grid.to(device=latent.device, dtype=latent.dtype).expand(latent.shape[0], -1, -1, -1)
        return F.grid_sample(latent, g, mode=mode, padding_mode="border", align_corners=False)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
        """``base`` with the warped object (read from ``source``, default ``base``) composited inside ``target``."""
        src = base if source is None else source
        if tuple(src.shape[-2:]) != tuple(base.shape[-2:]) or tuple(base.shape[-2:]) != tuple(self.target.shape):
            raise ValueError(f"the warp is for a {tuple(self.target.shape)} latent; got base "
                             f"{tuple(base.shape[-2:])} and source {tuple(src.shape[-2:])}")
        m = self.target.to(base.device)[None, None]
        return torch.where(m, self.sample(src, mode), base)


# ------------------------------------------------------------------------------------------- building
def _check_mask(mask, hw: tuple[int, int], stride: int, name: str) -> torch.Tensor:
    m = torch.as_tensor(mask).detach().float().cpu()
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    H, W = hw[0] * stride, hw[1] * stride
    if m.ndim != 2 or tuple(m.shape) != (H, W):
        raise ValueError(f"{name}: expected a {W}x{H}-pixel mask for a {hw[1]}x{hw[0]} latent "
                         f"({stride} px per cell), got shape {tuple(torch.as_tensor(mask).shape)}")
    if not bool((m > 0.5).any()):
        raise ValueError(f"{name}: the mask is empty")
    return m


def _cell_centres(hw, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(px, py)`` ``[h, w]`` of every latent cell's centre (float64)."""
    py = (torch.arange(hw[0], dtype=torch.float64) + 0.5) * stride
    px = (torch.arange(hw[1], dtype=torch.float64) + 0.5) * stride
    return px[None, :].expand(hw[0], -1), py[:, None].expand(-1, hw[1])


def _to_grid(qx: torch.Tensor, qy: torch.Tensor, hw, stride: int) -> torch.Tensor:
    """Pixel positions -> ``grid_sample`` coordinates (align_corners=False: -1/1 are the outer pixel edges)."""
    W, H = hw[1] * stride, hw[0] * stride
    return torch.stack([qx / W * 2 - 1, qy / H * 2 - 1], -1)[None].float()


def _footprint(mask_px: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel mask -> latent-cell mask (cells at least half covered; the pack's one mask-resizing helper)."""
    H, W = mask_px.shape[-2:]
    return resize_mask(mask_px[..., :H - H % stride, :W - W % stride], (H // stride, W // stride), "majority")[0, 0]


def _inside(qx, qy, hw, stride):
    return (qx >= 0) & (qx < hw[1] * stride) & (qy >= 0) & (qy < hw[0] * stride)


def _warp_from_map(mask_px: torch.Tensor, qx, qy, hw, stride: int, kind: str, source=None) -> LatentWarp:
    grid = _to_grid(qx, qy, hw, stride)
    fp = _footprint(mask_px, stride).float()[None, None]
    landed = F.grid_sample(fp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0] >= 0.5
    target = landed & _inside(qx, qy, hw, stride)
    src = _footprint(mask_px, stride) if source is None else source
    if not bool(target.any()):
        raise ValueError("the warped object lands entirely outside the image; use a smaller offset")
    return LatentWarp(grid, target, src, stride, kind)


def affine_warp(mask, hw, stride: int, dx: float, dy: float, scale: float = 1.0, *, paste: bool = False,
                name: str = "mask") -> LatentWarp:
    """Scale by ``scale`` about the mask's centroid, then shift by ``(dx, dy)`` pixels (move, resize, paste).

    ``paste=True``: the object comes from another (reference) image, so nothing is uncovered in the base.
    """
    for n, v in (("dx", dx), ("dy", dy), ("scale", scale)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{n}: expected a finite number, got {v}")
    if float(scale) <= 0:
        raise ValueError(f"scale: expected a number > 0, got {scale}")
    m = _check_mask(mask, hw, stride, name)
    ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
    cx, cy = float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5
    px, py = _cell_centres(hw, stride)
    qx = cx + (px - cx - float(dx)) / float(scale)
    qy = cy + (py - cy - float(dy)) / float(scale)
    empty = torch.zeros(hw, dtype=torch.bool)
    return _warp_from_map(m, qx, qy, hw, stride, "paste" if paste else "move", source=empty if paste else None)


def _similarity_back(handles: torch.Tensor, targets: torch.Tensor):
    """Closed-form similarity (rotation, uniform scale, shift) mapping two targets onto their two handles."""
    t, h = targets.double(), handles.double()
    vt, vh = t[1] - t[0], h[1] - h[0]
    zt, zh = complex(*vt.tolist()), complex(*vh.tolist())
    if abs(zt) < 1e-9:
        raise ValueError("points: the two targets coincide; give distinct targets")
    a = zh / zt  # rotation + scale as one complex factor

    def back(qx, qy):
        z = (qx - t[0, 0]) + 1j * (qy - t[0, 1])
        w = z * a
        return w.real + h[0, 0], w.imag + h[0, 1]
    return back


def drag_warp(points, hw, stride: int, mask=None, radius: float | None = None, mask_name: str = "mask") -> LatentWarp:
    """The drag's region moved by its handle → target points (see the module doc); ``mask_name`` names
    the mask in errors."""
    if not points:
        raise ValueError("points: give at least one handle -> target pair")
    handles = torch.tensor([p[0] for p in points], dtype=torch.float64)
    targets = torch.tensor([p[1] for p in points], dtype=torch.float64)
    H, W = hw[0] * stride, hw[1] * stride
    if mask is not None:
        m = _check_mask(mask, hw, stride, mask_name)
    else:  # a disc around every handle
        r = float(radius) if radius is not None else min(H, W) / 8
        yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                                torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
        d = torch.stack([(xx - hx) ** 2 + (yy - hy) ** 2 for hx, hy in handles.tolist()]).amin(0)
        m = (d <= r * r).float()
    px, py = _cell_centres(hw, stride)
    n = len(points)
    if n == 1:
        d = targets[0] - handles[0]
        qx, qy = px - d[0], py - d[1]
    elif n == 2:
        qx, qy = _similarity_back(handles, targets)(px, py)
    else:
        from kornia.geometry.transform import get_tps_transform, warp_points_tps

        src = (targets / torch.tensor([W, H]) * 2 - 1).float()[None]  # TPS in normalised coordinates
        dst = (handles / torch.tensor([W, H]) * 2 - 1).float()[None]
        kernel_w, affine_w = get_tps_transform(src, dst)
        q = torch.stack([px / W * 2 - 1, py / H * 2 - 1], -1).reshape(1, -1, 2).float()
        back = warp_points_tps(q, src, kernel_w, affine_w)[0].double()
        qx = ((back[:, 0] + 1) / 2 * W).reshape(hw)
        qy = ((back[:, 1] + 1) / 2 * H).reshape(hw)
    return _warp_from_map(m, qx, qy, hw, stride, "drag")


def warp_for_spec(spec, hw, stride: int, object_mask=None) -> LatentWarp:
    """The warp of a Move/Drag/Paste spec on an ``hw`` latent grid (``stride`` pixels per cell).

    ``object_mask`` (drag only): the region that moves, instead of the drag's editable mask.
    """
    if object_mask is not None and not isinstance(spec, DragSpec):
        raise ValueError("object_mask: only a drag takes an object mask (move and paste specs carry theirs)")
    if isinstance(spec, MoveSpec):
        return affine_warp(spec.mask, hw, stride, spec.dx, spec.dy, spec.scale)
    if isinstance(spec, PasteSpec):
        return affine_warp(spec.mask, hw, stride, spec.dx, spec.dy, spec.scale, paste=True)
    if isinstance(spec, DragSpec):
        if object_mask is not None:
            return drag_warp(spec.points, hw, stride, object_mask, mask_name="object_mask")
        return drag_warp(spec.points, hw, stride, spec.mask)
    raise ValueError(f"spec: the warp start supports move, resize, drag and paste specs, not {type(spec).__name__}")
