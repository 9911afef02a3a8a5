"""Each task's geometry on the feature and latent grids (reference §1.6), with its own energy and start latent.

``Geometry.of(spec, latent_size)`` builds the geometry of a spec (:mod:`.specs`); every geometry class
carries what differs between the tasks:

* ``build(spec, latent_size)``: the masks and cell correspondences;
* ``energy(feats, ref_feats, ref2_feats, weights)``: ``(E_edit, E_content)`` (:mod:`.energies`);
* ``init_latent(z_T, ref_z_T)``: the start latent;
* ``edit_first``: the official order of the two backward passes; ``ref_mask_latent``: the reference-image
  region for the composite K,V injection (appearance, paste).

Pixel masks become feature-grid masks by majority (a cell is in when at least half of its 16 pixels are);
feature masks become latent masks by "any" (a latent cell is in when any of its 2x2 feature cells is).

Fixes of the official quirks (reference §1.13): move/paste scale about the **object's centroid** (not the
image centre); shifts never wrap around (content moved past the border is cut; moving the object entirely
off the canvas raises); masks and latents are moved in the same frame (the displacement is rounded to whole
latent cells, 8 px, so the latent shift and the feature-mask shift agree exactly); drag points clip x with the
grid width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .energies import appearance_energy, drag_energy, move_energy, paste_energy
from .grids import (FEATURE_STRIDE, LATENT_STRIDE, Point, centroid, check_scale, latent_hw, latent_shift,
                    nonempty_grid, pixel_mask, scale_image_about, shift_no_wrap, to_latent, warp_source)
from .specs import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, Spec, check_pair


@dataclass
class Geometry:
    """Common fields: the grids and the latent-resolution masks used by the sampler."""

    task: ClassVar[str] = ""
    edit_first: ClassVar[bool] = True  # official order of the two backward passes (edit first for move/drag)

    latent_size: tuple[int, int]
    m_edit: torch.Tensor  # [1,1,h,w] float 0/1: regional-gradient edit region (edit gradient inside)
    sde_mask: torch.Tensor  # [1,1,h,w] float 0/1: regional-SDE region

    @staticmethod
    def of(spec: Spec, latent_size) -> "Geometry":
        """The geometry of ``spec`` for a latent of ``latent_size`` (``(h, w)`` or a latent tensor)."""
        cls = GEOMETRIES.get(type(spec))
        if cls is None:
            raise ValueError(f"unknown edit spec type {type(spec).__name__}")
        return cls.build(spec, latent_size)

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

    def check_z(self, z: torch.Tensor, name: str) -> None:
        if not torch.is_tensor(z) or z.ndim != 4:
            raise ValueError(f"{name} must be a [B, C, h, w] latent, got "
                             f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
        if tuple(z.shape[-2:]) != tuple(self.latent_size):
            raise ValueError(f"{name} is {tuple(z.shape[-2:])} latent cells but the {self.task} masks are for "
                             f"{tuple(self.latent_size)} (mask pixels / 8)")

    def _paste_under_edit(self, z_T: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        m = self.m_edit.to(device=z_T.device) > 0
        return torch.where(m, moved, z_T)


# --------------------------------------------------------------------------------------------------- move
@dataclass
class MoveGeometry(Geometry):
    """Move / resize masks on the feature grid (bool ``[gh, gw]``) and the latent warp.

    ``m_org`` object at its place; ``m_tar`` object resized by ``scale`` about its centroid, not yet shifted
    (cut at the border); ``m_cur`` resized and shifted; ``m_other = not (m_cur or m_org)``;
    ``m_ovl = m_cur and m_org``; ``m_no = m_org minus m_ovl`` (vacated); ``m_ref`` the inpaint reference
    region (user's, or ``m_other``). ``src_index[j]``: flat feature cell of the source object shown by the
    ``j``-th cell of ``m_cur`` (raster order). ``latent_src``: flat latent cell feeding each latent cell;
    the moved latent is pasted under ``m_edit``.
    """

    task: ClassVar[str] = "move"

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

    @classmethod
    def build(cls, spec: MoveSpec, latent_size) -> "MoveGeometry":
        """Move / resize masks (reference §1.6) with the §1.13 fixes: scale about the object's centroid, shift
        without wrap-around (cut at the border), displacement rounded to whole latent cells (8 px).

        Raises ``ValueError`` for an empty/mis-sized mask, a non-positive scale, or a move that puts the object
        entirely outside the canvas.
        """
        h, w = latent_hw(latent_size)
        gh, gw = 2 * h, 2 * w
        obj = pixel_mask(spec.mask, "move mask", (h, w))
        scale = check_scale(spec.scale)
        kx, ky = latent_shift(spec.dx, spec.dy)
        d = (kx * LATENT_STRIDE, ky * LATENT_STRIDE)
        c = centroid(obj)
        m_org = nonempty_grid(obj, "move mask")
        org_flat = m_org.flatten()

        src, valid = warp_source((gh, gw), FEATURE_STRIDE, c, d, scale)
        m_cur = (valid & org_flat[src]).view(gh, gw)
        if not bool(m_cur.any()):
            raise ValueError(f"move dx={spec.dx:g}, dy={spec.dy:g} (scale {scale:g}) puts the object entirely "
                             f"outside the {gw * FEATURE_STRIDE}x{gh * FEATURE_STRIDE} image")
        src_index = src[m_cur.flatten()]
        src0, valid0 = warp_source((gh, gw), FEATURE_STRIDE, c, (0.0, 0.0), scale)
        m_tar = (valid0 & org_flat[src0]).view(gh, gw)

        m_ovl = m_cur & m_org
        m_no = m_org & ~m_ovl
        m_other = ~(m_cur | m_org)
        if spec.ref_mask is not None:
            m_ref = nonempty_grid(pixel_mask(spec.ref_mask, "move reference mask", (h, w)), "move reference mask")
        else:
            m_ref = m_other.clone()

        latent_src, _ = warp_source((h, w), LATENT_STRIDE, c, d, scale)
        m_cur_lat = to_latent(m_cur)
        sde = torch.maximum(m_cur_lat, to_latent(m_org))
        return cls(latent_size=(h, w), m_edit=m_cur_lat, sde_mask=sde, m_org=m_org, m_tar=m_tar, m_cur=m_cur,
                   m_other=m_other, m_ovl=m_ovl, m_no=m_no, m_ref=m_ref, src_index=src_index,
                   latent_src=latent_src, centre=c, shift_px=d, scale=scale)

    def energy(self, feats, ref_feats, ref2_feats, weights: dict, consistent_cos: bool = False):
        return move_energy(feats, ref_feats, m_cur=self.m_cur, src_index=self.src_index, m_other=self.m_other,
                           m_no=self.m_no, m_ref=self.m_ref, consistent_cos=consistent_cos, **weights)

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
        """``z_T`` resized by ``scale`` about the object centroid (nearest) and shifted by the displacement
        (whole latent cells, no wrap), pasted under the moved-object mask:
        ``z_in = z_T (1 - m) + z_T^moved m`` with ``m = m_edit`` (``m_cur`` at latent resolution)."""
        self.check_z(z_T, "z_T")
        moved = z_T.flatten(2).index_select(2, self.latent_src.to(z_T.device)).view_as(z_T)
        return self._paste_under_edit(z_T, moved)


# --------------------------------------------------------------------------------------------------- drag
def _patch(cy: int, cx: int, gw: int) -> list[int]:
    return [(cy + a) * gw + (cx + b) for a in (-1, 0, 1) for b in (-1, 0, 1)]


@dataclass
class DragGeometry(Geometry):
    """Drag patches: ``handle_index`` / ``target_index`` ``[N, 9]`` flat feature-grid cells of the 3x3 patches
    (cell ``j`` of a target patch corresponds to cell ``j`` of its handle patch); ``latent_handle`` /
    ``latent_target`` ``[N, 2]`` latent patch centres ``(row, col)``; ``m_editable`` / ``m_other`` feature
    masks (inside / outside the user's editable region)."""

    task: ClassVar[str] = "drag"

    handle_index: torch.Tensor = None
    target_index: torch.Tensor = None
    latent_handle: torch.Tensor = None
    latent_target: torch.Tensor = None
    m_editable: torch.Tensor = None
    m_other: torch.Tensor = None

    @classmethod
    def build(cls, spec: DragSpec, latent_size) -> "DragGeometry":
        """Drag patches (reference §1.6): each point becomes a 3x3-cell patch on the feature grid centred on the
        cell containing it, the centre clipped so the patch stays inside (x with the grid *width*, y with the
        *height*: the official code clips x with the height). Latent patch centres are the feature centres // 2,
        clipped the same way on the latent grid. ``spec.mask=None`` makes the whole image editable (no content
        term)."""
        h, w = latent_hw(latent_size)
        gh, gw = 2 * h, 2 * w
        H, W = h * LATENT_STRIDE, w * LATENT_STRIDE
        pts = list(spec.points) if spec.points is not None else []
        if not pts:
            raise ValueError("points: give at least one 'x1,y1->x2,y2' pair")
        hi, ti, lh, lt = [], [], [], []
        for n, pair in enumerate(pts, 1):
            check_pair(pair, n, W, H)
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
            m_editable = nonempty_grid(pixel_mask(spec.mask, "drag editable mask", (h, w)), "drag editable mask")
        m_lat = to_latent(m_editable)
        return cls(latent_size=(h, w), m_edit=m_lat, sde_mask=m_lat.clone(),
                   handle_index=torch.tensor(hi, dtype=torch.long), target_index=torch.tensor(ti, dtype=torch.long),
                   latent_handle=torch.tensor(lh, dtype=torch.long), latent_target=torch.tensor(lt, dtype=torch.long),
                   m_editable=m_editable, m_other=~m_editable)

    def patch_mask(self, which: str = "handle") -> torch.Tensor:
        """Union of the handle (or target) patches as a feature-grid mask."""
        idx = self.handle_index if which == "handle" else self.target_index
        m = torch.zeros(self.grid_size[0] * self.grid_size[1], dtype=torch.bool)
        m[idx.flatten()] = True
        return m.view(*self.grid_size)

    def energy(self, feats, ref_feats, ref2_feats, weights: dict, consistent_cos: bool = False):
        return drag_energy(feats, ref_feats, handle_index=self.handle_index, target_index=self.target_index,
                           m_other=self.m_other, **weights)

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
        """For each pair, the 3x3 latent patch at the handle is copied onto the target (patches read from the
        original ``z_T``, written in pair order)."""
        self.check_z(z_T, "z_T")
        out = z_T.clone()
        for (hy, hx), (ty, tx) in zip(self.latent_handle.tolist(), self.latent_target.tolist()):
            out[..., ty - 1:ty + 2, tx - 1:tx + 2] = z_T[..., hy - 1:hy + 2, hx - 1:hx + 2]
        return out


# --------------------------------------------------------------------------------------- appearance/paste
@dataclass
class _TwoImageGeometry(Geometry):
    """``m_b`` the object region in the base image, ``m_r`` the one in the reference image (feature grid)."""

    edit_first: ClassVar[bool] = False  # official: content gradient first for appearance/paste

    m_b: torch.Tensor = None
    m_r: torch.Tensor = None
    m_r_latent: torch.Tensor = None

    @property
    def ref_mask_latent(self):
        return self.m_r_latent

    def _energy_fn(self):
        raise NotImplementedError

    def energy(self, feats, ref_feats, ref2_feats, weights: dict, consistent_cos: bool = False):
        if ref2_feats is None:
            raise ValueError(f"{self.task} needs the reference image's features (ref2_feats)")
        return self._energy_fn()(feats, ref_feats, ref2_feats, m_b=self.m_b, m_r=self.m_r, **weights)


@dataclass
class AppearanceGeometry(_TwoImageGeometry):
    """``m_b`` object in the base image, ``m_r`` object in the reference image (feature grid)."""

    task: ClassVar[str] = "appearance"

    @classmethod
    def build(cls, spec: AppearanceSpec, latent_size) -> "AppearanceGeometry":
        """Appearance masks (reference §1.6): ``m_b`` base object, ``m_r`` reference object; edit and SDE region
        = ``m_b`` at latent resolution; ``ref_mask_latent`` = ``m_r`` (for the composite K,V injection)."""
        h, w = latent_hw(latent_size)
        m_b = nonempty_grid(pixel_mask(spec.mask, "appearance mask", (h, w)), "appearance mask")
        m_r = nonempty_grid(pixel_mask(spec.ref_mask, "appearance reference mask", (h, w)),
                            "appearance reference mask")
        mb_lat = to_latent(m_b)
        return cls(latent_size=(h, w), m_edit=mb_lat, sde_mask=mb_lat.clone(), m_b=m_b, m_r=m_r,
                   m_r_latent=to_latent(m_r))

    def _energy_fn(self):
        return appearance_energy

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
        """The base image's ``z_T``, unchanged (a copy)."""
        self.check_z(z_T, "z_T")
        return z_T.clone()


def paste_reference(image: torch.Tensor | None, mask, scale: float, name: str = "mask",
                    channels_last: bool = False):
    """The paste reference rescaled by ``scale`` about its object's centroid, as the official code does before
    inverting it (reference §1.6): ``(image, mask)``.

    ``image``: ``[B, C, H, W]`` (``[B, H, W, C]`` with ``channels_last``), or None for the mask alone; where a
    smaller scale leaves no source the edge pixels are repeated (the official code pads with zeros, a black or
    grey frame that is far out of an autoencoder's training distribution and spoils the reference's encoding
    and features; the paste only uses the object region). ``mask``: the object ``[H, W]`` (> 0.5 = in),
    rescaled bilinearly and thresholded at 0.5 (bool). Invert the returned image and paste with the returned
    mask at scale 1; a :class:`PasteSpec` with ``scale`` builds its masks from this same function.
    """
    scale = check_scale(scale)
    m = torch.as_tensor(mask).detach()
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"{name} must be a single [H, W] mask, got shape {tuple(torch.as_tensor(mask).shape)}")
    obj = m > 0.5 if m.dtype != torch.bool else m
    if not bool(obj.any()):
        raise ValueError(f"{name} is empty (no pixel > 0.5)")
    if image is not None:
        hw = tuple(image.shape[1:3] if channels_last else image.shape[-2:])
        if hw != tuple(obj.shape):
            raise ValueError(f"the reference image is {hw[1]}x{hw[0]} pixels but {name} is "
                             f"{obj.shape[1]}x{obj.shape[0]}; give the object mask of the reference image")
    if scale == 1.0:
        return image, obj
    c = centroid(obj.cpu())
    scaled = scale_image_about(obj.float()[None, None], scale, c)[0, 0] >= 0.5
    if not bool(scaled.any()):
        raise ValueError(f"scale {scale:g} shrinks the object in {name} to nothing")
    if image is None:
        return None, scaled.to(m.device)
    img = image.permute(0, 3, 1, 2) if channels_last else image
    out = scale_image_about(img, scale, c, padding="border")
    return (out.permute(0, 2, 3, 1) if channels_last else out), scaled.to(m.device)


@dataclass
class PasteGeometry(_TwoImageGeometry):
    """``m_b`` where the (scaled) object lands in the base image; ``m_r`` the same cells in the (rescaled)
    reference image, i.e. ``m_b`` translated back by the displacement (feature grid)."""

    task: ClassVar[str] = "paste"

    centre: Point = (0.0, 0.0)
    shift_px: tuple[int, int] = (0, 0)
    scale: float = 1.0

    @classmethod
    def build(cls, spec: PasteSpec, latent_size) -> "PasteGeometry":
        """Paste masks (reference §1.6) with the §1.13 fixes: the reference object is scaled about its centroid
        by :func:`paste_reference` (the reference image must be rescaled by the same call), then translated by
        the displacement rounded to whole latent cells, without wrap-around. ``m_b`` = landing cells in the
        base image (cut at the border), ``m_r`` = ``m_b`` translated back (same cell count, raster
        correspondence)."""
        h, w = latent_hw(latent_size)
        obj = pixel_mask(spec.mask, "paste mask", (h, w))
        scale = check_scale(spec.scale)
        kx, ky = latent_shift(spec.dx, spec.dy)
        c = centroid(obj)
        _, scaled = paste_reference(None, obj, scale, "paste mask")
        m_scaled = nonempty_grid(obj if scale == 1.0 else scaled, "paste mask")
        m_b = shift_no_wrap(m_scaled, 2 * ky, 2 * kx)
        if not bool(m_b.any()):
            raise ValueError(f"paste dx={spec.dx:g}, dy={spec.dy:g} puts the object entirely outside the "
                             f"{2 * w * FEATURE_STRIDE}x{2 * h * FEATURE_STRIDE} image")
        m_r = shift_no_wrap(m_b, -2 * ky, -2 * kx)
        mb_lat = to_latent(m_b)
        return cls(latent_size=(h, w), m_edit=mb_lat, sde_mask=mb_lat.clone(), m_b=m_b, m_r=m_r,
                   m_r_latent=to_latent(m_r), centre=c, shift_px=(kx * LATENT_STRIDE, ky * LATENT_STRIDE),
                   scale=scale)

    def _energy_fn(self):
        return paste_energy

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
        """The (rescaled) reference ``ref_z_T`` shifted by the displacement in latent cells (no wrap) and pasted
        into the base ``z_T`` under ``m_b`` at latent resolution."""
        self.check_z(z_T, "z_T")
        if ref_z_T is None:
            raise ValueError("paste needs the reference image's inverted latent (ref_z_T)")
        self.check_z(ref_z_T, "ref_z_T")
        if ref_z_T.shape[1] != z_T.shape[1] or ref_z_T.shape[0] not in (1, z_T.shape[0]):
            raise ValueError(f"ref_z_T {tuple(ref_z_T.shape)} does not match z_T {tuple(z_T.shape)}")
        kx, ky = self.shift_px[0] // LATENT_STRIDE, self.shift_px[1] // LATENT_STRIDE
        moved = shift_no_wrap(ref_z_T.to(z_T), ky, kx).expand_as(z_T)
        return self._paste_under_edit(z_T, moved)

    def reference_image(self, image: torch.Tensor) -> torch.Tensor:
        """The reference image ``[B, C, H, W]`` rescaled as this geometry assumes (about the object centroid),
        to be encoded and inverted; identity for ``scale == 1``."""
        if tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"reference image is {tuple(image.shape[-2:])} pixels but the paste mask is "
                             f"{self.image_size}")
        if self.scale == 1.0:
            return image
        return scale_image_about(image, self.scale, self.centre, padding="border")


GEOMETRIES: dict[type, type[Geometry]] = {MoveSpec: MoveGeometry, DragSpec: DragGeometry,
                                          AppearanceSpec: AppearanceGeometry, PasteSpec: PasteGeometry}
