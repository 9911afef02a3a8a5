"""DragDiffusion-style latent optimisation at one step of the trajectory (motion supervision + point tracking).

Reference doc §2.3-§2.5. Defaults: features of the third decoder level (``default_feature_levels(n)[-1]``,
``up_blocks[2]`` for SD1.5) resized bilinearly to half the image resolution; ``r_m = 1``, ``r_p = 3``,
``lam = 0.1``, Adam with lr 0.01, at most 80 iterations, stop once every handle is within 2 supervision cells of
its target. Point tracking runs from the second iteration on, before the loss.

**Where the inversion strength goes:** this function optimises the latent it is given, at ``sigma``. The caller
picks the step: DragDiffusion inverts to strength 0.7 of 50 steps, i.e. optimises the latent of sampling step
``strength_step(50, 0.7) == 15`` (t = 681) and then denoises the remaining 35 steps.

**Coordinates.** ``x`` is in sigma space (``x = x0 + sigma * eps``, as every host call). DragDiffusion optimises
the diffusers latent ``z_t = x / sqrt(1 + sigma^2)`` with Adam at lr 0.01, and its regulariser compares the
diffusers one-step output ``z_{t-1} = x_next / sqrt(1 + sigma_next^2)``. Both are reproduced: Adam steps on
``z_t`` (so ``lr`` has the official meaning; on ``x`` it would be ~3.25 times smaller at t = 681) and the
regulariser is taken on ``z_{t-1}``. Adam is invariant to the scale of the loss, not to that of the parameters,
which is why this matters.

Cost per iteration: one truncated feature forward plus, with a mask, one conditional forward for the
regulariser (both with backward); DragDiffusion gets both from a single forward of its UNet.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..guidance.drag_loss import all_reached, mask_regulariser, motion_supervision_loss, track_points
from .hooks import EditHost, default_feature_levels

DEFAULTS = dict(steps=80, lr=0.01, r_m=1, r_p=3, lam=0.1, strength=0.7)
#: the drag loss is multiplied by this power of two before backward and its gradient divided back (exact),
#: so a half-precision UNet's small gradients do not flush to zero; fp32 results are unchanged bit for bit
_LOSS_SCALE = 1024.0


def strength_step(steps: int, strength: float = 0.7) -> int:
    """The sampling step at which an inversion of ``strength`` (fraction of the steps) stops: 15 for 0.7 of 50."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return steps - int(round(strength * steps))


def _check_points(points: Sequence, name: str, hw) -> list[tuple[float, float]]:
    H, W = hw
    out = []
    for p in points:
        try:
            px, py = (float(c) for c in p)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected (x, y) pixel pairs, got {p!r}") from None
        if not (math.isfinite(px) and math.isfinite(py) and 0 <= px <= W - 1 and 0 <= py <= H - 1):
            raise ValueError(f"{name}: point ({px:g}, {py:g}) is outside the {W}x{H} image")
        out.append((px, py))
    return out


def editable_mask(mask: torch.Tensor | None, latent_hw, like: torch.Tensor) -> torch.Tensor | None:
    """The user's editable region ``M`` nearest-resized to the latent, ``[1, 1, h, w]`` in {0, 1}.

    As DragDiffusion, any nonzero mask value counts as editable (``mask > 0``).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3, 4) or mask.numel() == 0:
        raise ValueError(f"mask: expected a [H, W], [1, H, W] or [1, 1, H, W] tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    m = mask.detach().float()
    while m.ndim < 4:
        m = m.unsqueeze(0)
    m = (m[:1, :1] > 0).float()
    return F.interpolate(m, size=tuple(latent_hw), mode="nearest").to(device=like.device, dtype=torch.float32)


def optimize_drag(host: EditHost, x: torch.Tensor, sigma, sigma_next, handles_px: Sequence, targets_px: Sequence,
                  mask: torch.Tensor | None = None, steps: int = 80, lr: float = 0.01, r_m: int = 1, r_p: int = 3,
                  lam: float = 0.1, feature_level: int | None = None, image_size=None,
                  progress: Callable[[int, int], None] | None = None):
    """Optimise the latent ``x`` (sigma space, at ``sigma``) so each handle's content moves to its target.

    * ``handles_px`` / ``targets_px``: ``(x, y)`` image pixels (``0 <= x <= W-1``, ``0 <= y <= H-1``);
      they are mapped to ``(row, col)`` on the supervision grid ``(H // 2, W // 2)``.
    * ``mask``: editable region (1 = may change), any resolution; outside it the regulariser
      ``lam * ||(Phi(z) - Phi(z0)) * (1 - M)||_1`` keeps the one-step DDIM output ``Phi`` (computed with
      ``host.denoise_cond``: ``x_next = D + (x - D) / sigma * sigma_next``) unchanged. ``None``: no regulariser
      (everything editable).
    * ``image_size``: ``(H, W)`` of the image; default ``8 *`` the latent size.
    * ``progress(i, steps)`` after each iteration (and ``(steps, steps)`` on an early stop).

    Returns ``(x_opt, final_handles_px, info)``: ``x_opt`` in sigma space (detached), the tracked handles in
    ``(x, y)`` pixels and ``info`` = ``iterations`` (optimiser steps taken), ``losses`` (total loss per step),
    ``motion_losses``, ``reached``, ``feature_level``, ``grid``, ``handles_grid``.
    """
    if int(steps) != steps or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    steps = int(steps)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if r_m < 0 or r_p < 1:
        raise ValueError(f"r_m must be >= 0 and r_p >= 1, got r_m={r_m}, r_p={r_p}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be >= 0, got {lam}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x: expected one latent [1, C, h, w], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    s, s_next = float(sigma), float(sigma_next)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be > 0 (the drag step cannot be the clean latent), got {s}")
    if not (math.isfinite(s_next) and 0 <= s_next < s):
        raise ValueError(f"sigma_next must lie in [0, sigma={s:g}), got {s_next}")
    if len(handles_px) == 0 or len(handles_px) != len(targets_px):
        raise ValueError(f"handles/targets: give the same, non-zero number of handle and target points "
                         f"(got {len(handles_px)} handles, {len(targets_px)} targets)")
    H, W = (int(v) for v in image_size) if image_size is not None else (8 * x.shape[-2], 8 * x.shape[-1])
    if H < 2 or W < 2:
        raise ValueError(f"image_size must be at least 2x2, got {(H, W)}")
    hp = _check_points(handles_px, "handles", (H, W))
    tp = _check_points(targets_px, "targets", (H, W))
    for h, g in zip(hp, tp):
        if h == g:
            raise ValueError(f"handles: the handle {h} equals its target; give a distinct target point")
    level = default_feature_levels(host.num_up_blocks)[-1] if feature_level is None else int(feature_level)
    gh, gw = max(H // 2, 1), max(W // 2, 1)  # supervision grid: half the image resolution
    to_grid = lambda p: (p[1] * gh / H, p[0] * gw / W)  # (x, y) px -> (row, col) cells  # noqa: E731
    h0 = [to_grid(p) for p in hp]
    tg = [to_grid(p) for p in tp]
    m = editable_mask(mask, x.shape[-2:], x)
    use_reg = m is not None and lam > 0

    c, c_next = math.sqrt(1 + s * s), math.sqrt(1 + s_next * s_next)  # sigma space -> diffusers latent scale
    s_in = x.new_ones([x.shape[0]])

    def feats(xs):
        f = host.features(xs, s * s_in, [level])[level]
        return F.interpolate(f.float(), size=(gh, gw), mode="bilinear", align_corners=False)

    def phi(xs):  # the diffusers one-step DDIM output z_{t-1}
        d = host.denoise_cond(xs, s * s_in)
        return (d + (xs - d) * (s_next / s)) / c_next

    handles = list(h0)
    losses, motion = [], []
    it = 0
    with host.grad_context():
        x0 = x.detach().clone()
        with torch.no_grad():
            f0 = feats(x0)
            phi0 = phi(x0).detach() if use_reg else None
        z = (x0.float() / c).requires_grad_(True)  # optimised in diffusers latent units (official lr), fp32
        opt = torch.optim.Adam([z], lr=lr)
        for i in range(steps):
            host.check_interrupt()
            xs = (z * c).to(x.dtype)
            f = feats(xs)
            if i > 0:
                handles = track_points(f.detach(), f0, handles, h0, r_p)
            if all_reached(handles, tg):
                if progress is not None:
                    progress(steps, steps)
                break
            lm = motion_supervision_loss(f, handles, tg, r_m)
            loss = lm + mask_regulariser(phi(xs), phi0, m, lam) if use_reg else lm
            opt.zero_grad(set_to_none=True)
            if loss.requires_grad:  # loss-scaled backward (exact power of two): no fp16/bf16 gradient underflow
                (loss * _LOSS_SCALE).backward()
                z.grad.div_(_LOSS_SCALE)
            opt.step()
            it = i + 1
            losses.append(float(loss.detach()))
            motion.append(float(lm.detach()))
            if progress is not None:
                progress(it, steps)
        x_opt = x0 if it == 0 else (z.detach() * c).to(x.dtype)
    final_px = [(col * W / gw, row * H / gh) for row, col in handles]
    info = {"iterations": it, "losses": losses, "motion_losses": motion, "reached": all_reached(handles, tg),
            "feature_level": level, "grid": (gh, gw), "handles_grid": handles}
    return x_opt, final_px, info
