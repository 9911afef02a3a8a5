"""Analytic object detector for the synthetic scenes (numpy only).

Colour segmentation against the known object palette: each pixel takes its nearest object colour when
that colour is within ``threshold`` (RGB Euclidean); connected components per colour (4-connectivity, a
vectorised min-label propagation, no scipy); small or halo-like components are dropped:

* components smaller than ``min_area`` px;
* "halos": thin rings of mixed edge colour around a larger object of another colour (blur / anti-aliasing
  can push an edge blend towards a third palette colour), i.e. components of which most pixels lie within
  2 px of a larger component of a different colour.

Every detection: ``{"color", "mask", "centroid" (x, y), "area", "bbox" (x0, y0, x1, y1) inclusive px,
"shape_guess"}``. The shape guess re-renders every shape at the detection's centroid with the size
implied by its area over a sweep of angles and keeps the best IoU (a guess: stretched shapes may fail).

:func:`match` pairs detections with truth objects (same colour, best IoU, greedy) for the metrics.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .scenes import COLOR_NAMES, COLORS, SHAPES, Obj

PALETTE_RGB = np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32)
DEFAULT_THRESHOLD = 0.25
DEFAULT_MIN_AREA = 10


def classify(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-pixel index into :data:`COLOR_NAMES` of the nearest object colour, or -1 (background)."""
    img = np.asarray(image, np.float32)[..., :3]
    d = np.linalg.norm(img[:, :, None, :] - PALETTE_RGB[None, None], axis=-1)
    k = d.argmin(-1)
    return np.where(d.min(-1) < threshold, k, -1)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels ``1..n`` of a bool mask (0 = background), by min-label propagation."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        nb = np.minimum.reduce([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        nb = np.where(mask, nb, big)
        # pointer jumping: follow each label to the label of the pixel it names (fast convergence)
        flat = nb.ravel()
        idx = np.where(flat < big, flat - 1, 0)
        jumped = np.where(flat < big, np.minimum(flat, flat[idx]), big).reshape(h, w)
        if np.array_equal(jumped, lab):
            break
        lab = jumped
    out = np.zeros((h, w), np.int64)
    uniq, inv = np.unique(lab[mask], return_inverse=True)
    out[mask] = inv.ravel() + 1
    return out, len(uniq)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    m = mask
    for _ in range(r):
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:] | \
            p[:-2, :-2] | p[:-2, 2:] | p[2:, :-2] | p[2:, 2:]
    return m


def _unit_area(shape: str, n: int = 400) -> float:
    """Area of the shape at ``size == 1`` (px^2 per px^2 of size)."""
    o = Obj(shape, "red", n / 2, n / 2, n / 2.5)
    return float(o.mask(n, n).sum()) / (n / 2.5) ** 2


_UNIT_AREA: dict[str, float] = {}


def guess_shape(mask: np.ndarray, centroid: tuple[float, float]) -> str:
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    pad = 3
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, mask.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, mask.shape[1])
    crop = mask[y0:y1, x0:x1]
    cx, cy = centroid[0] - x0, centroid[1] - y0
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        if shape not in _UNIT_AREA:
            _UNIT_AREA[shape] = _unit_area(shape)
        size = math.sqrt(area / _UNIT_AREA[shape])
        period = {"circle": 1, "square": 90, "cross": 90, "diamond": 180, "triangle": 120}[shape]
        for ang in (np.arange(0, period, 5) if period > 1 else [0.0]):
            m = Obj(shape, "red", cx, cy, size, float(ang)).mask(*crop.shape)
            inter = float((m & crop).sum())
            iou = inter / max(float((m | crop).sum()), 1.0)
            if iou > best_iou:
                best, best_iou = shape, iou
    return best


def detect(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = DEFAULT_MIN_AREA,
           shapes: bool = True) -> list[dict]:
    """Detections sorted by (row, column) of their centroid. ``shapes=False`` skips the shape guess."""
    cls = classify(image, threshold)
    comps = []
    for k in np.unique(cls[cls >= 0]):
        lab, n = connected_components(cls == k)
        for c in range(1, n + 1):
            m = lab == c
            a = int(m.sum())
            if a >= min_area:
                comps.append((int(k), m, a))
    keep = []
    for k, m, a in comps:
        bigger = [m2 for k2, m2, a2 in comps if k2 != k and a2 > a]
        if bigger:
            near = _dilate(np.logical_or.reduce(bigger), 2)
            if (m & near).sum() > 0.5 * a:
                continue
        keep.append((k, m, a))
    dets = []
    for k, m, a in keep:
        ys, xs = np.nonzero(m)
        cen = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
        dets.append({
            "color": COLOR_NAMES[k], "mask": m, "centroid": cen, "area": a,
            "bbox": (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
            "shape_guess": guess_shape(m, cen) if shapes else None,
        })
    dets.sort(key=lambda d: (d["centroid"][1], d["centroid"][0]))
    return dets


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = float((a | b).sum())
    return float((a & b).sum()) / u if u else 1.0


def match(detections: Sequence[dict], truth_objects: Sequence[Obj], truth_masks: Optional[Sequence[np.ndarray]] = None,
          min_iou: float = 0.1) -> dict:
    """Greedy one-to-one matching by IoU among same-colour pairs (IoU >= ``min_iou``).

    ``truth_masks`` default to each object's rendered mask on the detections' canvas. Returns
    ``{"pairs": [(truth_i, det_j, iou, centroid_error_px)], "missed": [truth_i], "spurious": [det_j],
    "recall", "precision"}``.
    """
    if truth_masks is None:
        if detections:
            h, w = detections[0]["mask"].shape
        else:
            h = w = 64
        truth_masks = [o.mask(h, w) for o in truth_objects]
    cand = []
    for i, (o, tm) in enumerate(zip(truth_objects, truth_masks)):
        for j, d in enumerate(detections):
            if d["color"] != o.color:
                continue
            v = iou(tm, d["mask"])
            if v >= min_iou:
                cand.append((v, i, j))
    cand.sort(key=lambda t: -t[0])
    used_t, used_d, pairs = set(), set(), []
    for v, i, j in cand:
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        ys, xs = np.nonzero(truth_masks[i])
        tc = (xs.mean() + 0.5, ys.mean() + 0.5) if len(xs) else (truth_objects[i].cx, truth_objects[i].cy)
        dc = detections[j]["centroid"]
        pairs.append((i, j, v, float(math.hypot(tc[0] - dc[0], tc[1] - dc[1]))))
    pairs.sort()
    missed = [i for i in range(len(truth_objects)) if i not in used_t]
    spurious = [j for j in range(len(detections)) if j not in used_d]
    n_t, n_d = len(truth_objects), len(detections)
    return {"pairs": pairs, "missed": missed, "spurious": spurious,
            "recall": len(pairs) / n_t if n_t else 1.0, "precision": len(pairs) / n_d if n_d else 1.0}
