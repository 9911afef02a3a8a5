"""DragDiffusion-style drag loss: motion supervision, masked regulariser and point tracking (pure torch).

Reference doc §2.3-§2.5. Feature maps are ``[1, C, h, w]`` on the *supervision grid* (decoder features resized
to half the image resolution); points are ``(row, col)`` floats on that grid.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

Point = tuple[float, float]
REACHED = 2.0  # a handle within 2 grid cells (Euclidean, strict) of its target counts as reached (official)


def _xy(p, device) -> torch.Tensor:
    return torch.as_tensor([float(p[0]), float(p[1])], dtype=torch.float32, device=device)


def _window(center: torch.Tensor, radius: int, h: int, w: int) -> torch.Tensor:
    """``center + (dy, dx)`` for ``|dy|, |dx| <= radius``, keeping the points inside the map (border clipping);
    ``[P, 2]`` (row, col), row-major. At least the clamped centre is kept."""
    r = torch.arange(-radius, radius + 1, device=center.device, dtype=torch.float32)
    ys, xs = center[0] + r, center[1] + r
    ys = ys[(ys >= 0) & (ys <= h - 1)]
    xs = xs[(xs >= 0) & (xs <= w - 1)]
    if ys.numel() == 0:
        ys = center[:1].clamp(0, h - 1)
    if xs.numel() == 0:
        xs = center[1:].clamp(0, w - 1)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def sample_points(feat: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear features at sub-cell ``(row, col)`` points ``[P, 2]`` (clamped to the map): ``[C, P]``.

    Differentiable with respect to ``feat``; cell centres are at integer coordinates (``align_corners=True``).
    """
    _, _, h, w = feat.shape
    ys = pts[:, 0].clamp(0, h - 1)
    xs = pts[:, 1].clamp(0, w - 1)
    grid = torch.stack([xs / max(w - 1, 1) * 2 - 1, ys / max(h - 1, 1) * 2 - 1], -1)[None, None]  # [1,1,P,2]
    return F.grid_sample(feat[:1], grid.to(feat.dtype), mode="bilinear", align_corners=True)[0, :, 0]


def bilinear_patch(feat: torch.Tensor, center: Point | torch.Tensor, radius: int,
                   shift: Point | torch.Tensor | None = None) -> torch.Tensor:
    """Features of the ``(2r+1)^2`` patch around ``center``: ``[C, P]`` (``P`` smaller where the patch is
    clipped at the border). Sub-cell centres are read bilinearly.

    ``shift`` moves the same (already clipped) patch by a sub-cell offset; shifted points falling outside the
    map read the border (clamped), so the source and shifted patches always have the same points.
    """
    _, _, h, w = feat.shape
    pts = _window(_xy(center, feat.device), int(radius), h, w)
    if shift is not None:
        pts = pts + _xy(shift, feat.device)
    return sample_points(feat, pts)


def motion_supervision_loss(feat: torch.Tensor, handles: Sequence[Point], targets: Sequence[Point],
                            r_m: int = 1, reached: float = REACHED) -> torch.Tensor:
    """``sum_k (2r_m+1)^2 * mean|sg(F[Omega(h_k)]) - F[Omega(h_k) + d_k]|``, ``d_k`` the unit vector toward
    the target; both patches from the *current* ``feat``. Pairs within ``reached`` cells are skipped."""
    if len(handles) != len(targets):
        raise ValueError(f"handles/targets: {len(handles)} handles but {len(targets)} targets")
    loss = feat.new_zeros((), dtype=torch.float32)
    for hk, gk in zip(handles, targets):
        hv, gv = _xy(hk, feat.device), _xy(gk, feat.device)
        dist = float(torch.linalg.vector_norm(gv - hv))
        if dist < reached:
            continue
        d = (gv - hv) / dist
        src = bilinear_patch(feat.detach(), hv, r_m)
        moved = bilinear_patch(feat, hv, r_m, shift=d)
        loss = loss + (2 * r_m + 1) ** 2 * (src.float() - moved.float()).abs().mean()
    return loss


def mask_regulariser(z_next: torch.Tensor, z_next_orig: torch.Tensor, mask: torch.Tensor | None,
                     lam: float = 0.1) -> torch.Tensor:
    """``lam * || (z_next - z_next_orig) * (1 - M) ||_1`` (a sum, not a mean).

    ``z_next``: the one-step DDIM output of the current latent; ``z_next_orig`` that of the initial latent;
    ``M``: editable region (1 = may change) at latent size, broadcastable; ``None`` = no fixed region (0).
    """
    if mask is None:
        return z_next.new_zeros((), dtype=torch.float32)
    diff = (z_next.float() - z_next_orig.float()).abs() * (1 - mask.to(device=z_next.device, dtype=torch.float32))
    return lam * diff.sum()


@torch.no_grad()
def track_points(feat: torch.Tensor, feat0: torch.Tensor, handles: Sequence[Point], handles0: Sequence[Point],
                 r_p: int = 3) -> list[Point]:
    """Move each handle to the cell of the ``(2r_p+1)^2`` window around its *current* position (clipped to the
    map) whose feature in ``feat`` is nearest, in channel-summed L1 distance, to the *initial* feature
    ``feat0`` at the *initial* handle (read bilinearly for a sub-cell initial handle). Returns integer cells as
    floats; ties go to the first cell in row-major order."""
    if len(handles) != len(handles0):
        raise ValueError(f"track_points: {len(handles)} handles but {len(handles0)} initial handles")
    _, _, h, w = feat.shape
    out = []
    for cur, init in zip(handles, handles0):
        ref = sample_points(feat0, _xy(init, feat0.device)[None])[:, 0].to(feat.dtype)  # [C]
        cy = min(max(int(math.floor(float(cur[0]) + 0.5)), 0), h - 1)
        cx = min(max(int(math.floor(float(cur[1]) + 0.5)), 0), w - 1)
        y0, y1 = max(cy - r_p, 0), min(cy + r_p + 1, h)
        x0, x1 = max(cx - r_p, 0), min(cx + r_p + 1, w)
        dist = (feat[0, :, y0:y1, x0:x1] - ref[:, None, None]).abs().sum(0)
        k = int(torch.argmin(dist))
        out.append((float(y0 + k // (x1 - x0)), float(x0 + k % (x1 - x0))))
    return out


def all_reached(handles: Sequence[Point], targets: Sequence[Point], tol: float = REACHED) -> bool:
    """Every handle strictly within ``tol`` cells (Euclidean) of its target (DragDiffusion's stop test)."""
    return all(math.hypot(float(h[0]) - float(g[0]), float(h[1]) - float(g[1])) < tol
               for h, g in zip(handles, targets))


# ------------------------------------------------------------------------------ GoodDrag (AlDD) variants
def preserving_motion_loss(feat: torch.Tensor, feat0: torch.Tensor, handles: Sequence[Point],
                           handles0: Sequence[Point], targets: Sequence[Point], r_m: int = 1, beta: float = 1.0,
                           reached: float = REACHED) -> torch.Tensor:
    """GoodDrag's information-preserving motion supervision: the patch at ``h_k + d_k`` in the current
    ``feat`` is pulled toward the patch of the *original* features ``feat0`` at the *initial* handle
    ``h0_k`` (not toward the current handle's features, which drift over many drag steps), with
    ``d_k`` = the unit direction to the target times ``min(beta, distance)``:
    ``sum_k (2r_m+1)^2 * mean|sg(F0[Omega(h0_k)]) - F[Omega(h_k) + d_k]|``. Pairs within ``reached`` cells
    are skipped."""
    if not (len(handles) == len(handles0) == len(targets)):
        raise ValueError(f"handles/targets: {len(handles)} handles, {len(handles0)} initial handles, "
                         f"{len(targets)} targets")
    loss = feat.new_zeros((), dtype=torch.float32)
    for hk, h0, gk in zip(handles, handles0, targets):
        hv, gv = _xy(hk, feat.device), _xy(gk, feat.device)
        dist = float(torch.linalg.vector_norm(gv - hv))
        if dist < reached:
            continue
        d = (gv - hv) / dist * min(float(beta), dist)
        src = bilinear_patch(feat0.detach(), _xy(h0, feat0.device), r_m)
        moved = bilinear_patch(feat, hv, r_m, shift=d)
        n = min(src.shape[1], moved.shape[1])  # a patch clipped differently at the border: compare the common part
        loss = loss + (2 * r_m + 1) ** 2 * (src[:, :n].float() - moved[:, :n].float()).abs().mean()
    return loss


@torch.no_grad()
def track_points_checked(feat: torch.Tensor, feat0: torch.Tensor, handles: Sequence[Point],
                         handles0: Sequence[Point], r_p: int = 3, tol: float = 1.5) -> tuple[list[Point], int]:
    """:func:`track_points` with a bidirectional check, so a handle cannot jump to a look-alike distractor.

    The forward match ``q`` (the cell near the current handle whose ``feat`` is nearest to the initial
    feature) is kept only if the backward match - the cell near the *initial* handle whose *original*
    feature ``feat0`` is nearest to ``feat[q]`` - lies within ``tol`` cells of the initial handle; otherwise
    the handle stays where it was. Returns ``(handles, rejected)`` with the number of rejected moves."""
    fwd = track_points(feat, feat0, handles, handles0, r_p)
    _, _, h, w = feat0.shape
    out, rejected = [], 0
    for cur, q, init in zip(handles, fwd, handles0):
        fq = feat[0, :, int(q[0]), int(q[1])].to(feat0.dtype)
        iy = min(max(int(math.floor(float(init[0]) + 0.5)), 0), h - 1)
        ix = min(max(int(math.floor(float(init[1]) + 0.5)), 0), w - 1)
        y0, y1 = max(iy - r_p, 0), min(iy + r_p + 1, h)
        x0, x1 = max(ix - r_p, 0), min(ix + r_p + 1, w)
        k = int(torch.argmin((feat0[0, :, y0:y1, x0:x1] - fq[:, None, None]).abs().sum(0)))
        back = (y0 + k // (x1 - x0), x0 + k % (x1 - x0))
        if math.hypot(back[0] - float(init[0]), back[1] - float(init[1])) <= tol:
            out.append(q)
        else:
            out.append((float(cur[0]), float(cur[1])))
            rejected += 1
    return out, rejected
