"""DragDiffusion-style latent optimisation at one step of the trajectory (motion supervision + tracking).

Defaults (reference §2): features of the third decoder level (``default_feature_levels(...)[-1]``) resized
bilinearly to half the image resolution; r_m = 1, r_p = 3, lambda = 0.1, Adam lr 0.01, up to 80 steps,
stop when every handle is within 2 supervision cells of its target. The caller picks the step: inversion
strength 0.7 of 50 steps = sampling step 15 (``strength_step``).

Cost per iteration: one truncated feature forward + one conditional forward for the regulariser (both
with backward); DragDiffusion gets both from one forward of its UNet.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..guidance.drag_loss import all_reached, mask_regulariser, motion_supervision_loss, track_points
from .hooks import EditHost, default_feature_levels


def strength_step(steps: int, strength: float = 0.7) -> int:
    """The sampling step at which an inversion of ``strength`` (fraction of the steps) stops."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return steps - int(round(strength * steps))


def _check_points(points: Sequence, name: str, hw) -> None:
    H, W = hw
    for x, y in points:
        if not (0 <= x <= W - 1 and 0 <= y <= H - 1):
            raise ValueError(f"{name}: point ({x}, {y}) is outside the {W}x{H} image")


def optimize_drag(host: EditHost, x: torch.Tensor, sigma, sigma_next, handles_px: Sequence, targets_px: Sequence,
                  mask: torch.Tensor | None = None, steps: int = 80, lr: float = 0.01, r_m: int = 1, r_p: int = 3,
                  lam: float = 0.1, feature_level: int | None = None, image_size=None,
                  progress: Callable[[int, int], None] | None = None):
    """Optimise the latent ``x`` (at ``sigma``) so each handle's content moves to its target.

    ``handles_px`` / ``targets_px``: ``(x, y)`` image pixels; ``mask``: editable region (1 = may change),
    any resolution, resized to the latent. Returns ``(x_opt, final_handles_px, info)``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(handles_px) != len(targets_px) or not handles_px:
        raise ValueError("handles/targets: give the same, non-zero number of handle and target points")
    hw = tuple(image_size) if image_size is not None else (8 * x.shape[-2], 8 * x.shape[-1])
    _check_points(handles_px, "handles", hw)
    _check_points(targets_px, "targets", hw)
    for h, g in zip(handles_px, targets_px):
        if tuple(map(float, h)) == tuple(map(float, g)):
            raise ValueError(f"handles: the handle {tuple(h)} equals its target")
    level = default_feature_levels(host.num_up_blocks)[-1] if feature_level is None else feature_level
    grid = (hw[0] // 2, hw[1] // 2)
    to_grid = lambda p: (float(p[1]) / 2.0, float(p[0]) / 2.0)  # (x, y) px -> (row, col) cells  # noqa: E731
    h0 = [to_grid(p) for p in handles_px]
    tg = [to_grid(p) for p in targets_px]
    m = None
    if mask is not None:
        mm = mask.float()
        while mm.ndim < 4:
            mm = mm.unsqueeze(0)
        m = (F.interpolate(mm[:1, :1], size=x.shape[-2:], mode="nearest") > 0.5).to(x)
    s_in = x.new_ones([x.shape[0]])

    def feats(z):
        f = host.features(z, sigma * s_in, [level])[level]
        return F.interpolate(f.float(), size=grid, mode="bilinear", align_corners=False)

    def one_step(z):
        d = host.denoise_cond(z, sigma * s_in)
        return d + (z - d) / sigma * sigma_next

    with host.grad_context():
        x0 = x.detach().clone()
        with torch.no_grad():
            f0 = feats(x0)
            z_next0 = one_step(x0) if m is not None else None
        z = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        handles = list(h0)
        losses = []
        it = 0
        for it in range(1, steps + 1):
            host.check_interrupt()
            f = feats(z)
            if it > 1:
                handles = track_points(f.detach(), f0, handles, h0, r_p)
            if all_reached(handles, tg):
                it -= 1
                break
            loss = motion_supervision_loss(f, handles, tg, r_m)
            if m is not None:
                loss = loss + mask_regulariser(one_step(z), z_next0, m, lam)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(it, steps)
    final_px = [(c * 2.0, r * 2.0) for r, c in handles]
    return z.detach(), final_px, {"iterations": it, "losses": losses, "reached": all_reached(handles, tg),
                                  "feature_level": level}
