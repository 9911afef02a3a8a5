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

from ..guidance.drag_loss import (all_reached, mask_regulariser, motion_supervision_loss, preserving_motion_loss,
                                   track_points, track_points_checked)
from ..guidance.grids import resize_mask
from .hooks import EditHost, host_levels
from .param import param_of

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
    return resize_mask(m, latent_hw, "nearest").to(device=like.device, dtype=torch.float32)


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
    level = host_levels(host)[-1] if feature_level is None else int(feature_level)
    gh, gw = max(H // 2, 1), max(W // 2, 1)  # supervision grid: half the image resolution
    to_grid = lambda p: (p[1] * gh / H, p[0] * gw / W)  # (x, y) px -> (row, col) cells  # noqa: E731
    h0 = [to_grid(p) for p in hp]
    tg = [to_grid(p) for p in tp]
    m = editable_mask(mask, x.shape[-2:], x)
    use_reg = m is not None and lam > 0

    param = param_of(host)  # sigma space -> the network's input units (diffusers latent for EPS, x for FLOW)
    c, c_next = param.input_divisor(s), param.input_divisor(s_next)
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


# ------------------------------------------------------------------------------- alternating drag (AlDD)
#: GoodDrag's defaults (its ``GoodDragger``): radii and step in supervision-grid cells (half the image
#: resolution), 10 denoising steps with dragging, 10 tracking rounds per step of at most 10 Adam steps each
#: (a round also ends once the motion loss is below ``loss_threshold * (2 r_m)^2``), regulariser 0.2.
ALDD_DEFAULTS = dict(drag_steps=10, tracks=10, iters_per_track=10, lr=0.01, r_m=4, r_p=12, beta=4.0, lam=0.2,
                     loss_threshold=4.0, max_no_change=10, strength=0.75)


def alternating_drag(host: EditHost, trajectory, sigmas: torch.Tensor, start: int, handles_px: Sequence,
                     targets_px: Sequence, mask: torch.Tensor | None = None, drag_steps: int = 10, tracks: int = 10,
                     iters_per_track: int = 10, lr: float = 0.01, r_m: int = 4, r_p: int = 12, beta: float = 4.0,
                     lam: float = 0.2, loss_threshold: float = 4.0, max_no_change: int = 10,
                     feature_level: int | None = None, image_size=None,
                     progress: Callable[[int, int], None] | None = None, like: torch.Tensor | None = None):
    """GoodDrag's Alternating Drag and Denoising on an inverted ``trajectory`` (latents in sigma space).

    From sampling step ``start`` on, for up to ``drag_steps`` steps: re-track the handles on the new step,
    then ``tracks`` rounds of (at most ``iters_per_track`` Adam steps on the latent with
    :func:`~..guidance.drag_loss.preserving_motion_loss` plus the masked regulariser against the source's
    one-step output, then a bidirectionally checked point tracking), then one deterministic conditional DDIM
    step. Dragging stops once every handle is reached or the handles stop moving for ``max_no_change``
    rounds. The drag is spread over the steps instead of piled on one noisy latent (DragDiffusion), which is
    what keeps the content intact.

    Returns ``(x, step, final_handles_px, info)``: the latent at sampling step ``step`` (sample on from
    ``sigmas[step:]``), the tracked handles in ``(x, y)`` pixels and ``info`` with the counted calls:
    ``feature_forwards`` (each with a backward pass, plus one per re-tracking), ``cond_forwards`` (regulariser
    passes with backward, the regulariser's source targets and the denoising steps), ``backward_passes``,
    ``iterations``, ``drag_steps`` (steps dragged), ``rejected_tracks``, ``reached``.
    """
    n = len(sigmas) - 1
    if not 0 <= int(start) < n:
        raise ValueError(f"start: the drag step must be in [0, {n - 1}], got {start}")
    for name, v in (("drag_steps", drag_steps), ("tracks", tracks), ("iters_per_track", iters_per_track)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be > 0, got {beta}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be >= 0, got {lam}")
    x = trajectory.at(int(start), like=like)  # ``like``: the device and dtype to drag on (default: stored)
    H, W = (int(v) for v in image_size) if image_size is not None else (8 * x.shape[-2], 8 * x.shape[-1])
    hp = _check_points(handles_px, "handles", (H, W))
    tp = _check_points(targets_px, "targets", (H, W))
    if len(hp) == 0 or len(hp) != len(tp):
        raise ValueError(f"handles/targets: give the same, non-zero number of handle and target points "
                         f"(got {len(hp)} handles, {len(tp)} targets)")
    level = host_levels(host)[-1] if feature_level is None else int(feature_level)
    gh, gw = max(H // 2, 1), max(W // 2, 1)
    to_grid = lambda p: (p[1] * gh / H, p[0] * gw / W)  # noqa: E731
    h0, tg = [to_grid(p) for p in hp], [to_grid(p) for p in tp]
    m = editable_mask(mask, x.shape[-2:], x)
    use_reg = m is not None and lam > 0
    s_in = x.new_ones([x.shape[0]])
    param = param_of(host)
    count = dict(feature_forwards=0, cond_forwards=0, backward_passes=0, iterations=0, rejected_tracks=0)
    threshold = float(loss_threshold) * (2 * r_m) ** 2

    def feats(xs, s):
        count["feature_forwards"] += 1
        f = host.features(xs, s * s_in, [level])[level]
        return F.interpolate(f.float(), size=(gh, gw), mode="bilinear", align_corners=False)

    def phi(xs, s, s_next):  # the one-step DDIM output in the network's input units
        count["cond_forwards"] += 1
        d = host.denoise_cond(xs, s * s_in)
        return (d + (xs - d) * (s_next / s)) / param.input_divisor(s_next)

    handles = list(h0)
    done = False
    no_change = 0
    step = int(start)
    with host.grad_context():
        x = x.detach().clone()
        for j in range(int(drag_steps)):
            if step >= n or float(sigmas[step + 1]) <= 0:
                break
            s, s_next = float(sigmas[step]), float(sigmas[step + 1])
            c = param.input_divisor(s)
            src = trajectory.at(step, like=x)
            with torch.no_grad():
                f0 = feats(src, s)
                phi0 = phi(src, s, s_next).detach() if use_reg else None
                if j > 0:  # the denoising step moved the content: find the handles again
                    handles, rej = track_points_checked(feats(x, s), f0, handles, h0, r_p)
                    count["rejected_tracks"] += rej
            z = (x.float() / c).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(int(tracks)):
                host.check_interrupt()
                if all_reached(handles, tg):
                    done = True
                    break
                f = None
                for _ in range(int(iters_per_track)):
                    xs = (z * c).to(x.dtype)
                    f = feats(xs, s)
                    lm = preserving_motion_loss(f, f0, handles, h0, tg, r_m, beta)
                    loss = lm + mask_regulariser(phi(xs, s, s_next), phi0, m, lam) if use_reg else lm
                    opt.zero_grad(set_to_none=True)
                    if loss.requires_grad:
                        (loss * _LOSS_SCALE).backward()
                        z.grad.div_(_LOSS_SCALE)
                        count["backward_passes"] += 1
                    opt.step()
                    count["iterations"] += 1
                    if float(lm.detach()) <= threshold:
                        break
                new, rej = track_points_checked(f.detach(), f0, handles, h0, r_p)
                count["rejected_tracks"] += rej
                no_change = no_change + 1 if new == handles else 0
                handles = new
                if no_change >= int(max_no_change):
                    done = True
                    break
            x = (z.detach() * c).to(x.dtype)
            with torch.no_grad():  # one deterministic conditional DDIM step
                count["cond_forwards"] += 1
                d = host.denoise_cond(x, s * s_in)
                x = d + (x - d) * (s_next / s)
            step += 1
            if progress is not None:
                progress(j + 1, int(drag_steps))
            if done or all_reached(handles, tg):
                break
    final_px = [(col * W / gw, row * H / gh) for row, col in handles]
    info = dict(count, drag_steps=step - int(start), reached=all_reached(handles, tg), feature_level=level,
                grid=(gh, gw), handles_grid=handles)
    return x.detach(), step, final_px, info
