"""DragDiffusion-style drag loss: motion supervision, masked regulariser and point tracking (pure torch).

Coordinates are on the *supervision grid* (decoder features resized to half the image resolution), as
``(row, col)`` floats. Reference doc §2.3-§2.5.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Point = tuple[float, float]


def _offsets(radius: int, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)  # [(2r+1)^2, 2] (dy, dx)


def bilinear_patch(feat: torch.Tensor, center: Point | torch.Tensor, radius: int) -> torch.Tensor:
    """Features of the ``(2r+1)^2`` patch around ``center`` (sub-cell, bilinear, border-clamped): ``[C, P]``."""
    _, _, h, w = feat.shape
    c = torch.as_tensor(center, dtype=torch.float32, device=feat.device)
    pts = c[None] + _offsets(radius, feat.device)
    ys = pts[:, 0].clamp(0, h - 1)
    xs = pts[:, 1].clamp(0, w - 1)
    grid = torch.stack([xs / max(w - 1, 1) * 2 - 1, ys / max(h - 1, 1) * 2 - 1], -1)[None, None]  # [1,1,P,2]
    return F.grid_sample(feat[:1], grid.to(feat.dtype), mode="bilinear", align_corners=True)[0, :, 0]


def motion_supervision_loss(feat: torch.Tensor, handles: Sequence[Point], targets: Sequence[Point],
                            r_m: int = 1, reached: float = 2.0) -> torch.Tensor:
    """Sum over pairs of ``(2r_m+1)^2 * mean|sg(F[patch(h)]) - F[patch(h) + d]|``, ``d`` the unit step to the target.

    Pairs within ``reached`` cells of their target are skipped (DragDiffusion).
    """
    loss = feat.new_zeros(())
    for h, g in zip(handles, targets):
        hv = torch.as_tensor(h, dtype=torch.float32, device=feat.device)
        gv = torch.as_tensor(g, dtype=torch.float32, device=feat.device)
        dist = torch.linalg.vector_norm(gv - hv)
        if float(dist) < reached:
            continue
        d = (gv - hv) / dist
        src = bilinear_patch(feat.detach(), hv, r_m)
        moved = bilinear_patch(feat, hv + d, r_m)
        loss = loss + (2 * r_m + 1) ** 2 * (src - moved).abs().mean()
    return loss


def mask_regulariser(z_next: torch.Tensor, z_next_orig: torch.Tensor, mask: torch.Tensor | None,
                     lam: float = 0.1) -> torch.Tensor:
    """``lam * sum |(z_next - z_next_orig) * (1 - M)|`` (sum, not mean; ``M`` = editable region at latent size)."""
    diff = (z_next - z_next_orig).abs()
    if mask is not None:
        diff = diff * (1 - mask.to(diff.dtype))
    return lam * diff.sum()


@torch.no_grad()
def track_points(feat: torch.Tensor, feat0: torch.Tensor, handles: Sequence[Point], handles0: Sequence[Point],
                 r_p: int = 3) -> list[Point]:
    """Move each handle to the cell of its ``(2r_p+1)^2`` window whose feature is nearest (channel-summed L1)
    to the *initial* feature at the *initial* handle."""
    _, _, h, w = feat.shape
    out = []
    for cur, init in zip(handles, handles0):
        ref = bilinear_patch(feat0, init, 0)[:, 0]  # [C]
        cy, cx = int(round(cur[0])), int(round(cur[1]))
        y0, y1 = max(cy - r_p, 0), min(cy + r_p + 1, h)
        x0, x1 = max(cx - r_p, 0), min(cx + r_p + 1, w)
        win = feat[0, :, y0:y1, x0:x1]
        d = (win - ref[:, None, None]).abs().sum(0)
        k = int(torch.argmin(d))
        out.append((float(y0 + k // (x1 - x0)), float(x0 + k % (x1 - x0))))
    return out


def all_reached(handles: Sequence[Point], targets: Sequence[Point], tol: float = 2.0) -> bool:
    return all(((h[0] - g[0]) ** 2 + (h[1] - g[1]) ** 2) ** 0.5 <= tol for h, g in zip(handles, targets))
