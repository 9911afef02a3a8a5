"""Noise schedules and step windows in ComfyUI sigma space (plain torch, no host imports).

Sigma space ("VE" / k-diffusion coordinates) for eps-prediction models: a latent ``x`` at noise level
``sigma`` is ``x = x0 + sigma * eps``; the diffusers ("VP") latent is ``z = x / sqrt(1 + sigma**2)`` and
``alpha_bar = 1 / (1 + sigma**2)``.

Every schedule of the editing algorithms is expressed as a fraction of the step count
(:class:`StepWindow`) so it scales to any number of steps and reproduces the official step indices exactly
at 50 steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch


def scaled_linear_alphas_cumprod(num_train: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """The Stable Diffusion ("scaled linear") cumulative alpha product, float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


def alpha_bar_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor | float:
    return 1.0 / (1.0 + sigma ** 2)


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


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class StepWindow:
    """Steps ``i`` with ``round(start*n) <= i < round(end*n)`` and ``(i - first) % every == 0``.

    ``start``/``end`` are fractions of the step count ``n`` (0 = noisiest step).
    """

    start: float = 0.0
    end: float = 1.0
    every: int = 1

    def __post_init__(self):
        if not (0.0 <= self.start <= 1.0 and 0.0 <= self.end <= 1.0):
            raise ValueError(f"step window fractions must lie in [0, 1], got start={self.start}, end={self.end}")
        if self.every < 1:
            raise ValueError(f"step window 'every' must be >= 1, got {self.every}")

    def indices(self, n: int) -> list[int]:
        a, b = _round_half_up(self.start * n), _round_half_up(self.end * n)
        return list(range(a, b, self.every))


def window_steps(windows: Iterable[StepWindow] | StepWindow | None, n: int) -> frozenset[int]:
    """Union of the step indices of several windows (``None`` means no step)."""
    if windows is None:
        return frozenset()
    if isinstance(windows, StepWindow):
        windows = [windows]
    out: set[int] = set()
    for w in windows:
        out.update(w.indices(n))
    return frozenset(out)


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


def match_step(sigma: float, schedule: Sequence[float] | torch.Tensor, rtol: float = 1e-4) -> int | None:
    """Index of ``sigma`` in ``schedule`` (relative tolerance), or ``None``."""
    s = torch.as_tensor(schedule, dtype=torch.float64)
    d = (s - float(sigma)).abs()
    i = int(torch.argmin(d))
    return i if float(d[i]) <= rtol * max(abs(float(sigma)), 1e-8) + 1e-9 else None
