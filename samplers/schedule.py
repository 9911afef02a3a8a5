"""Noise schedules and step windows in ComfyUI sigma space (plain torch, no host imports).

Sigma space ("VE" / k-diffusion coordinates) for eps-prediction models: a latent ``x`` at noise level
``sigma`` is ``x = x0 + sigma * eps``; the diffusers ("VP") latent is ``z = x / sqrt(1 + sigma**2)`` and
``alpha_bar = 1 / (1 + sigma**2)``.

Every schedule of the editing algorithms is expressed as a fraction of the step count
(:class:`StepWindow`, defined in ``guidance/windows.py`` and re-exported here) so it scales to any number of
steps and reproduces the official step indices exactly at 50 steps.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..guidance.windows import StepWindow, window_steps

__all__ = ["StepWindow", "window_steps", "scaled_linear_alphas_cumprod", "sigma_from_alpha_bar", "ddim_timesteps",
           "ddim_sigmas", "check_sigmas", "check_latent", "match_step"]


def scaled_linear_alphas_cumprod(num_train: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """The Stable Diffusion ("scaled linear") cumulative alpha product, float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


def ddim_timesteps(steps: int, num_train: int = 1000, offset: int = 1) -> list[int]:
    """DDIM's uniform ("leading") timesteps, noisiest first: 981, 961, ..., 1 for 50 steps."""
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ratio = num_train // steps
    return [i * ratio + offset for i in range(steps)][::-1]


def ddim_sigmas(steps: int, alphas_cumprod: torch.Tensor | None = None, final: str = "zero") -> torch.Tensor:
    """Descending sigmas for ``steps`` DDIM steps (``steps + 1`` values).

    ``final="zero"`` ends at sigma 0 as ComfyUI does; ``final="alpha0"`` ends at the sigma of
    ``alphas_cumprod[0]`` as diffusers does with ``set_alpha_to_one=False``.
    """
    ac = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
    ts = ddim_timesteps(steps, num_train=ac.shape[0])
    sig = sigma_from_alpha_bar(ac[ts])
    last = torch.zeros(1, dtype=torch.float64) if final == "zero" else sigma_from_alpha_bar(ac[:1])
    return torch.cat([sig, last]).float()


def check_sigmas(sigmas: torch.Tensor, name: str = "sigmas", descending: bool = True) -> None:
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D tensor with at least 2 values (steps + 1), got shape {tuple(sigmas.shape)}")
    d = sigmas[1:] - sigmas[:-1]
    ok = bool((d < 0).all()) if descending else bool((d > 0).all())
    if not ok:
        order = "descending" if descending else "ascending"
        raise ValueError(f"{name} must be strictly {order}, got {sigmas.tolist()}")
    if not torch.isfinite(sigmas).all() or bool((sigmas < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")


def check_latent(x: torch.Tensor, name: str = "latent") -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``x`` is a finite ``[B, C, H, W]`` latent."""
    if x.ndim != 4:
        raise ValueError(f"{name} must be a [B, C, H, W] latent, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def match_step(sigma: float, schedule: Sequence[float] | torch.Tensor, rtol: float = 1e-4) -> int | None:
    """Index of ``sigma`` in ``schedule`` (relative tolerance), or ``None``."""
    s = torch.as_tensor(schedule, dtype=torch.float64)
    d = (s - float(sigma)).abs()
    i = int(torch.argmin(d))
    return i if float(d[i]) <= rtol * max(abs(float(sigma)), 1e-8) + 1e-9 else None
