"""Multi-turn editing with stability tracking (seed paper 000, Algorithm 4), with a concrete back-off ladder.

Each turn proposes an edit, measures how much it changed the image *outside* the edited region (the
"drift", as a PSNR against the turn's input), and when that falls below a threshold re-runs the edit less
aggressively, up to a limit:

====== ==========================================================================================
level  what the edit runs with
====== ==========================================================================================
0      the settings as given
1      half the guidance energy and half the regional-SDE strength
2      level 1 + the background locked to the inverted trajectory outside the edit region
3      level 2 + a hard composite: outside a one-cell margin around the edit region, the turn's input
====== ==========================================================================================

Level 3 cannot drift outside its margin (the input is copied there), so tracking always ends below the
threshold or at it. :func:`stable_edit` runs the ladder with any edit function; the hosts give it one
(the diffusers pipeline, the ComfyUI node).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from .edit import EditSchedule

LEVELS = ("as given", "gentler guidance and SDE", "background locked", "input kept outside the edit")


def drift_psnr(out: torch.Tensor, ref: torch.Tensor, outside: torch.Tensor) -> float:
    """PSNR (dB) of ``out`` against ``ref`` on the cells where ``outside`` is true, with the peak taken as
    ``ref``'s value range (latents have no fixed range); ``inf`` when they are identical there."""
    m = outside.to(device=out.device, dtype=torch.bool).expand_as(out)
    if not bool(m.any()):
        return math.inf
    mse = float(((out.float() - ref.float())[m]).square().mean())
    peak = float(ref.float().max() - ref.float().min())
    return math.inf if mse <= 0 else 10 * math.log10(max(peak, 1e-8) ** 2 / mse)


def backoff(schedule: EditSchedule, level: int) -> tuple[EditSchedule, bool, bool]:
    """``(schedule, lock_background, composite)`` of back-off ``level`` (see the module doc)."""
    if not 0 <= level < len(LEVELS):
        raise ValueError(f"back-off level must be in [0, {len(LEVELS) - 1}], got {level}")
    s = schedule
    if level >= 1:
        s = replace(s, energy_scale=s.energy_scale * 0.5, eta_in=s.eta_in * 0.5, eta_out=s.eta_out * 0.5)
    return s, level >= 2, level >= 3


def keep_outside(out: torch.Tensor, ref: torch.Tensor, edit_mask: torch.Tensor, margin: int = 1) -> torch.Tensor:
    """``out`` inside the edit region grown by ``margin`` cells, ``ref`` elsewhere."""
    m = (edit_mask.float() > 0.5).float()
    while m.ndim < 4:
        m = m[None]
    if margin > 0:
        m = F.max_pool2d(m, 2 * margin + 1, 1, margin)
    m = m.to(device=out.device, dtype=out.dtype)
    return out * m + ref.to(out) * (1 - m)


@dataclass
class StabilityReport:
    """What the tracking did: one entry per attempt (level, its name, drift in dB) and the accepted one."""

    threshold_db: float
    attempts: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> dict:
        return self.attempts[-1]

    def text(self) -> str:
        rows = [f"level {a['level']} ({a['name']}): outside PSNR {a['drift_db']:.2f} dB" for a in self.attempts]
        verdict = ("kept" if self.accepted["drift_db"] >= self.threshold_db else "best effort (limit reached)")
        return "\n".join(rows + [f"threshold {self.threshold_db:.1f} dB -> {verdict}: level {self.accepted['level']}"])


def stable_edit(run: Callable[[EditSchedule, bool], torch.Tensor], schedule: EditSchedule, source: torch.Tensor,
                edit_mask: torch.Tensor, threshold_db: float = 35.0, max_level: int = 3,
                margin: int = 1) -> tuple[torch.Tensor, StabilityReport]:
    """Run ``run(schedule, lock_background)`` and back off while the drift outside ``edit_mask`` (latent
    resolution, 1 = edited) is below ``threshold_db``; ``max_level`` caps the ladder (0 = never back off).

    ``source`` is the turn's input latent (the trajectory's clean latent). Returns the accepted edit and the
    report. An edit that stays above the threshold is returned after one call of ``run``.
    """
    if not math.isfinite(threshold_db):
        raise ValueError(f"threshold_db: expected a finite number, got {threshold_db}")
    if not 0 <= int(max_level) < len(LEVELS):
        raise ValueError(f"max_level: expected 0..{len(LEVELS) - 1}, got {max_level}")
    m = (edit_mask.float() > 0.5)
    while m.ndim < 4:
        m = m[None]
    outside = ~(F.max_pool2d(m.float(), 2 * margin + 1, 1, margin) > 0.5) if margin > 0 else ~m
    report = StabilityReport(float(threshold_db))
    out = source
    for level in range(int(max_level) + 1):
        sched, lock, composite = backoff(schedule, level)
        out = run(sched, lock)
        if composite:
            out = keep_outside(out, source, m, margin)
        d = drift_psnr(out, source, outside)
        report.attempts.append({"level": level, "name": LEVELS[level], "drift_db": d})
        if d >= threshold_db:
            break
    return out, report
