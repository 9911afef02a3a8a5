"""Trajectory-anchored masked blending.

Outside a (soft, feathered) mask the latent is kept equal to the inverted trajectory at every step of a
schedule ("hard lock"), so the unedited region reproduces the source exactly (zero latent leakage, since
the anchor is the cached inversion trajectory, not a fresh re-noise of the source).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guidance.grids import resize_mask
from .schedule import StepWindow, match_step
from .trajectory import EditTrajectory

BLEND_SCHEDULES = ("every step", "until fraction", "last fraction")


def blend_window(schedule: str, fraction: float = 1.0) -> StepWindow:
    """The steps on which the lock applies: every step, steps before ``fraction``, or the last ``fraction``."""
    if schedule == "every step":
        return StepWindow(0.0, 1.0)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if schedule == "until fraction":
        return StepWindow(0.0, fraction)
    if schedule == "last fraction":
        return StepWindow(1.0 - fraction, 1.0)
    raise ValueError(f"schedule must be one of {BLEND_SCHEDULES}, got {schedule!r}")


def _as_nchw(mask: torch.Tensor, name: str) -> torch.Tensor:
    m = mask.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    elif m.ndim != 4:
        raise ValueError(f"{name} must be [H, W], [B, H, W] or [B, 1, H, W], got shape {tuple(mask.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return m.clamp(0, 1)


def feather_mask(mask: torch.Tensor, feather_px: float = 0.0, grow_px: int = 0, name: str = "mask") -> torch.Tensor:
    """Grow (dilate, or erode if negative) and feather a pixel-space mask with kornia; returns ``[B,1,H,W]``."""
    import kornia

    m = _as_nchw(mask, name)
    if grow_px:
        k = torch.ones(2 * abs(grow_px) + 1, 2 * abs(grow_px) + 1, device=m.device)
        m = kornia.morphology.dilation(m, k) if grow_px > 0 else kornia.morphology.erosion(m, k)
    if feather_px > 0:
        ks = int(2 * round(3 * feather_px) + 1)
        m = kornia.filters.gaussian_blur2d(m, (ks, ks), (feather_px, feather_px), border_type="replicate")
    return m.clamp(0, 1)


def mask_to_latent(mask: torch.Tensor, latent_shape, name: str = "mask", feather_px: float = 0.0,
                   grow_px: int = 0, allow_empty: bool = False) -> torch.Tensor:
    """A pixel (or latent) resolution MASK → a soft ``[B,1,h,w]`` mask at the latent size.

    Pixel masks must be 8× the latent size (or exactly the latent size); batch 1 broadcasts.
    """
    m = _as_nchw(mask, name)
    B, h, w = latent_shape[0], latent_shape[-2], latent_shape[-1]
    H, W = m.shape[-2:]
    if (H, W) not in ((h, w), (8 * h, 8 * w)):
        raise ValueError(f"{name} is {W}x{H} pixels but the latent is {w}x{h} ({8 * w}x{8 * h} pixels); "
                         "give a mask of the image size")
    if m.shape[0] not in (1, B):
        raise ValueError(f"{name} has batch {m.shape[0]} but the latent has batch {B}")
    if not allow_empty and float(m.max()) <= 0:
        raise ValueError(f"{name} is empty (all zeros); paint the region to edit")
    if feather_px > 0 or grow_px:
        m = feather_mask(m, feather_px, grow_px, name)
    return resize_mask(m, (h, w), "area")


@dataclass
class TrajectoryAnchor:
    """Lock the latent outside ``mask`` (1 = editable) to ``trajectory`` on the steps of ``window``."""

    trajectory: EditTrajectory
    mask: torch.Tensor  # [B or 1, 1, h, w] in [0, 1] at latent size
    window: StepWindow = StepWindow(0.0, 1.0)

    def __post_init__(self):
        self._steps = frozenset(self.window.indices(self.trajectory.steps))

    def active(self, i: int) -> bool:
        return i in self._steps

    def lock(self, x: torch.Tensor, i_next: int, i_step: int) -> torch.Tensor:
        """After step ``i_step`` (sigma_i -> sigma_{i+1}), pin the outside to the trajectory at ``i_next``."""
        if not self.active(i_step):
            return x
        m = self.mask.to(device=x.device, dtype=x.dtype)
        return x * m + self.trajectory.at(i_next, like=x) * (1 - m)

    def anchor_denoised(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """The x0 estimate outside the mask with which a DDIM step from trajectory[i] lands on trajectory[i+1]."""
        s = self.trajectory.sigmas
        si, sn = float(s[i]), float(s[i + 1])
        a, b = self.trajectory.at(i, like=like), self.trajectory.at(i + 1, like=like)
        if sn == 0.0:
            return b
        return (b * si - a * sn) / (si - sn)

    def wrap_model(self, model):
        """Wrap a k-diffusion denoiser so *any* sampler follows the trajectory outside the mask.

        At a sigma of the trajectory's schedule (on an active step) the input is pinned outside the mask and
        the returned x0 is the one that makes a deterministic first-order step land on the trajectory.
        """
        anchor = self

        def wrapped(x, sigma, **kwargs):
            i = match_step(float(sigma.flatten()[0]), anchor.trajectory.sigmas)
            if i is None or i >= anchor.trajectory.steps or not anchor.active(i):
                return model(x, sigma, **kwargs)
            m = anchor.mask.to(device=x.device, dtype=x.dtype)
            x_in = x * m + anchor.trajectory.at(i, like=x) * (1 - m)
            d = model(x_in, sigma, **kwargs)
            return d * m + anchor.anchor_denoised(i, x) * (1 - m)

        wrapped.inner_model = getattr(model, "inner_model", None)
        return wrapped
