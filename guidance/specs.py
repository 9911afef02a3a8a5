"""Edit specifications: what to edit, in image pixels (the small API a front end plugs into).

A spec says *what* to edit in the pixels of the image that was encoded; :mod:`.geometry` turns it into masks
on the feature and latent grids. The API:

* the four spec types :class:`MoveSpec`, :class:`DragSpec`, :class:`AppearanceSpec`, :class:`PasteSpec`
  (``spec.task`` names the task);
* :func:`parse_points` — text (``"x1,y1->x2,y2; ..."``) or JSON (``[[[x1, y1], [x2, y2]], ...]``) to drag
  point pairs;
* :func:`validate_spec` — check a spec against an image size (mask sizes, points inside, finite offsets),
  raising ``ValueError`` that names the offending field; geometry building runs the same checks;
* ``spec.rescaled(k)`` — the same edit on an image ``k`` times larger (every pixel a ``k x k`` block).

Masks are ``[H, W]`` (ComfyUI ``MASK`` ``[1, H, W]`` is accepted), values > 0.5 = in.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import ClassVar, Sequence, Union

import torch

from .grids import LATENT_STRIDE, check_mask_size, check_scale, resize_mask

Point = tuple[float, float]
PointPair = tuple[Point, Point]


def _upsampled(mask, k: int, name: str):
    """Every pixel of ``mask`` (``[..., H, W]``) as a ``k x k`` block (nearest, exact), in its own dtype."""
    if mask is None:
        return None
    m = torch.as_tensor(mask)
    if m.ndim < 2:
        raise ValueError(f"{name} must be an [H, W] mask, got shape {tuple(m.shape)}")
    H, W = m.shape[-2:]
    up = resize_mask(m.reshape(-1, H, W), (H * k, W * k), "nearest")
    return up.reshape(*m.shape[:-2], H * k, W * k).to(m.dtype)


@dataclass
class MoveSpec:
    """Move / resize an object. ``mask`` ``[H, W]`` (pixels, > 0.5 = object); ``dx``, ``dy`` in pixels
    (positive = right / down); ``scale`` resizes about the object's centroid; ``ref_mask`` (optional, pixels)
    is the region whose appearance should fill the vacated area (default: the background ``M_other``)."""

    task: ClassVar[str] = "move"
    mask: torch.Tensor
    dx: float
    dy: float
    scale: float = 1.0
    ref_mask: torch.Tensor | None = None

    def rescaled(self, k: int) -> "MoveSpec":
        return MoveSpec(_upsampled(self.mask, k, "mask"), self.dx * k, self.dy * k, self.scale,
                        _upsampled(self.ref_mask, k, "ref_mask"))

    def validate(self, image_hw) -> None:
        _masks(image_hw, mask=self.mask, ref_mask=self.ref_mask)
        _offsets(self.dx, self.dy)
        check_scale(self.scale)


@dataclass
class DragSpec:
    """Content drag. ``points``: list of ``((x_handle, y_handle), (x_target, y_target))`` in pixels;
    ``mask``: optional editable region ``[H, W]`` (None = the whole image is editable)."""

    task: ClassVar[str] = "drag"
    points: Sequence[PointPair]
    mask: torch.Tensor | None = None

    def rescaled(self, k: int) -> "DragSpec":
        pts = [((float(h[0]) * k, float(h[1]) * k), (float(g[0]) * k, float(g[1]) * k)) for h, g in self.points]
        return DragSpec(pts, _upsampled(self.mask, k, "mask"))

    def validate(self, image_hw) -> None:
        H, W = (int(v) for v in image_hw)
        pts = list(self.points) if self.points is not None else []
        if not pts:
            raise ValueError("points: give at least one 'x1,y1->x2,y2' pair")
        for n, pair in enumerate(pts, 1):
            check_pair(pair, n, W, H)
        _masks(image_hw, mask=self.mask)


@dataclass
class AppearanceSpec:
    """Appearance replacement. ``mask``: object in the base image; ``ref_mask``: object in the reference
    image (resized to the base image size beforehand), both ``[H, W]`` pixels."""

    task: ClassVar[str] = "appearance"
    mask: torch.Tensor
    ref_mask: torch.Tensor

    def rescaled(self, k: int) -> "AppearanceSpec":
        return AppearanceSpec(_upsampled(self.mask, k, "mask"), _upsampled(self.ref_mask, k, "ref_mask"))

    def validate(self, image_hw) -> None:
        _masks(image_hw, mask=self.mask, ref_mask=self.ref_mask)


@dataclass
class PasteSpec:
    """Object paste. ``mask``: the object on the *reference* image ``[H, W]``; it is scaled by ``scale``
    about its centroid and pasted displaced by ``(dx, dy)`` pixels into the base image. The reference image
    must be rescaled the same way before inversion: :func:`~.geometry.paste_reference` does both (and then
    ``scale`` is 1 on the rescaled mask)."""

    task: ClassVar[str] = "paste"
    mask: torch.Tensor
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def rescaled(self, k: int) -> "PasteSpec":
        return PasteSpec(_upsampled(self.mask, k, "mask"), self.dx * k, self.dy * k, self.scale)

    def validate(self, image_hw) -> None:
        _masks(image_hw, mask=self.mask)
        _offsets(self.dx, self.dy)
        check_scale(self.scale)


Spec = Union[MoveSpec, DragSpec, AppearanceSpec, PasteSpec]
SPEC_TYPES = (MoveSpec, DragSpec, AppearanceSpec, PasteSpec)


def _masks(image_hw, **masks) -> None:
    H, W = (int(v) for v in image_hw)
    if H % LATENT_STRIDE or W % LATENT_STRIDE:
        raise ValueError(f"the image is {W}x{H} pixels; its sides must be multiples of {LATENT_STRIDE}")
    for name, m in masks.items():
        if m is not None:
            check_mask_size(m, name, (H // LATENT_STRIDE, W // LATENT_STRIDE))


def _offsets(dx, dy) -> None:
    for name, v in (("dx", dx), ("dy", dy)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v}")


def validate_spec(spec: Spec, image_hw) -> None:
    """Check ``spec`` against an image of ``image_hw = (H, W)`` pixels; ``ValueError`` names the field."""
    if not isinstance(spec, SPEC_TYPES):
        raise ValueError(f"spec must be a MoveSpec, DragSpec, AppearanceSpec or PasteSpec, got {type(spec).__name__}")
    spec.validate(image_hw)


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
    if not isinstance(spec, SPEC_TYPES):
        raise ValueError(f"spec must be a MoveSpec, DragSpec, AppearanceSpec or PasteSpec, got {type(spec).__name__}")
    k = LATENT_STRIDE // ppl
    return spec if k == 1 else spec.rescaled(k)


# ---------------------------------------------------------------------------------------------- points
_NUM = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
_PAIR_RE = re.compile(rf"^\(?{_NUM},{_NUM}\)?\s*->\s*\(?{_NUM},{_NUM}\)?$")
FORMAT = "'x1,y1->x2,y2; x3,y3->x4,y4' (handle -> target, pixels)"


def parse_points(text: str, width: int | None = None, height: int | None = None) -> list[PointPair]:
    """Drag point pairs from text: ``"x1,y1->x2,y2; x3,y3->x4,y4"`` (pixels; ``;`` or newlines between
    pairs), or JSON ``[[[x1, y1], [x2, y2]], ...]`` / ``[{"handle": [x, y], "target": [x, y]}, ...]``.

    Every message starts with ``points:``. Raises ``ValueError`` for malformed text, no pair, a point outside
    a ``width`` x ``height`` image (when given: ``0 <= x < width``, ``0 <= y < height``) and a pair whose
    handle equals its target.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"points: expected text like {FORMAT}, got nothing")
    s = text.strip()
    pairs = _json_pairs(s) if s[0] in "[{" else _text_pairs(s)
    if not pairs:
        raise ValueError(f"points: give at least one pair, as {FORMAT}")
    for n, pair in enumerate(pairs, 1):
        check_pair(pair, n, width, height)
    return [((float(a), float(b)), (float(c), float(d))) for (a, b), (c, d) in pairs]


def _text_pairs(text: str) -> list:
    pairs = []
    chunks = [c for c in re.split(r"[;\n]", text) if c.strip()]
    for n, chunk in enumerate(chunks, 1):
        m = _PAIR_RE.match(chunk.strip())
        if m is None:
            raise ValueError(f"points: pair {n} {chunk.strip()!r} is malformed; expected {FORMAT}")
        x1, y1, x2, y2 = (float(v) for v in m.groups())
        pairs.append(((x1, y1), (x2, y2)))
    return pairs


def _json_pairs(text: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"points: not valid JSON ({e.msg} at character {e.pos}); expected {FORMAT} or "
                         "[[[x1, y1], [x2, y2]], ...]") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("points: JSON points must be a list of [[x1, y1], [x2, y2]] pairs")
    pairs = []
    for n, item in enumerate(data, 1):
        if isinstance(item, dict):
            item = (item.get("handle"), item.get("target"))
        pairs.append(item)
        check_pair(item, n, None, None)
    return pairs


def check_pair(pair, n: int, width: int | None, height: int | None) -> None:
    """Raise ``ValueError`` (``points: pair n ...``) unless ``pair`` is ``((x1, y1), (x2, y2))`` of finite
    numbers inside a ``width`` x ``height`` image (when given) with the handle distinct from the target."""
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


def points_text(pairs: Sequence[PointPair]) -> str:
    """Point pairs back to the text form :func:`parse_points` reads (one pair per line)."""
    return "\n".join(f"{h[0]:g},{h[1]:g}->{t[0]:g},{t[1]:g}" for h, t in pairs)


__all__ = ["MoveSpec", "DragSpec", "AppearanceSpec", "PasteSpec", "Spec", "SPEC_TYPES", "Point", "PointPair",
           "parse_points", "points_text", "check_pair", "validate_spec", "rescale_spec"]
