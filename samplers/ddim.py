"""DDIM in sigma space: the forward step with (per-element) eta, and the inverse step.

Coordinates: ``x = x0 + sigma * eps`` (ComfyUI / k-diffusion, eps models). With ``alpha_bar = 1/(1+sigma^2)``
and the diffusers latent ``z = x * sqrt(alpha_bar)``, the DDIM update

    z' = sqrt(a') x0 + sqrt(1 - a' - s_t^2) eps + s_t n,   s_t = eta * sqrt((1-a')/(1-a)) * sqrt(1 - a/a')

becomes, divided by ``sqrt(a')``,

    x' = x0 + sigma_down * eps + sigma_up * n,
    sigma_up = eta * sigma' * sqrt(sigma^2 - sigma'^2) / sigma,   sigma_down = sqrt(sigma'^2 - sigma_up^2)

exactly (``eta = 1`` is the DDPM posterior variance). ``eta`` may be a tensor broadcast to the latent, so
a region can be stochastic while the rest follows the deterministic ODE.
"""
from __future__ import annotations

import torch


def ancestral_sigmas(sigma, sigma_next, eta):
    """(sigma_down, sigma_up) of a DDIM step with ``eta`` (float or tensor) in sigma space."""
    sigma = torch.as_tensor(sigma)
    sigma_next = torch.as_tensor(sigma_next, dtype=sigma.dtype, device=sigma.device)
    eta = torch.as_tensor(eta, dtype=sigma.dtype, device=sigma.device)
    if float(sigma_next) == 0.0:
        z = torch.zeros_like(eta * sigma)
        return z, z
    up = eta * sigma_next * torch.sqrt(torch.clamp(sigma ** 2 - sigma_next ** 2, min=0)) / sigma
    up = torch.minimum(up, sigma_next.expand_as(up))
    down = torch.sqrt(torch.clamp(sigma_next ** 2 - up ** 2, min=0))
    return down, up


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma, sigma_next, eta=0.0,
              noise: torch.Tensor | None = None, denoised_guided: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step ``sigma -> sigma_next`` (``sigma_next < sigma``).

    ``denoised`` is the model's x0 estimate at ``(x, sigma)``; it defines the direction ``eps = (x - D)/sigma``.
    ``denoised_guided`` (optional) replaces the x0 term only, as DiffEditor's guided update does: the
    direction keeps the unguided prediction. ``noise`` is required when any ``eta > 0``.
    """
    x0 = denoised if denoised_guided is None else denoised_guided
    if float(sigma_next) == 0.0:
        return x0
    eps = (x - denoised) / sigma
    if isinstance(eta, (int, float)) and eta == 0:
        return x0 + eps * sigma_next
    down, up = ancestral_sigmas(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), sigma_next, eta)
    out = x0 + eps * down
    if bool((up > 0).any()):
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs a noise tensor")
        out = out + noise * up
    return out


def rescale_to_sigma(x: torch.Tensor, sigma_from, sigma_to) -> torch.Tensor:
    """The same diffusers latent ``z`` expressed at another sigma: ``x * sqrt(1+s_to^2)/sqrt(1+s_from^2)``."""
    return x * ((1.0 + sigma_to ** 2) / (1.0 + sigma_from ** 2)) ** 0.5


def inversion_step(model_eps, x: torch.Tensor, sigma, sigma_next, exact_iters: int = 0, exact_tol: float = 0.0,
                   param=None):
    """One DDIM inversion step ``sigma -> sigma_next`` (``sigma_next > sigma``; ``sigma`` may be 0).

    ``model_eps(x, s)`` returns the noise prediction of the latent ``x`` at level ``s``.

    The plain step (official DiffEditor inversion) evaluates the noise at the *target* level on the less
    noisy latent, ``eps = eps(z_prev, t_next)``, and moves ``x' = x + (sigma_next - sigma) * eps``. It is
    the mirror of the sampling step only approximately. ``exact_iters > 0`` refines ``x'`` by fixed-point
    iteration of ``x' = x + (sigma_next - sigma) * eps(x', sigma_next)``, whose fixed point is exactly the
    latent that the deterministic sampling step maps back to ``x``. Each iteration costs one model call.
    The iteration contracts when ``|sigma_next - sigma| * Lip(eps) < 1`` (smooth trained models, fine
    schedules); the residuals are returned and stored in the trajectory so a non-converged step is visible.

    ``model_eps`` may equally return the flow velocity ``(x - D) / sigma`` of a flow model: the update and its
    fixed point are the same first-order step there. ``param`` (a :class:`~.param.Parameterization`, EPS by
    default) gives the plain step's model input (EPS rescales to keep the network input; FLOW keeps ``x``).

    Returns ``(x_next, eps_used, iterations_run, residual)``.
    """
    d = sigma_next - sigma
    x_in = rescale_to_sigma(x, sigma, sigma_next) if param is None else param.invert_input(x, sigma, sigma_next)
    eps = model_eps(x_in, sigma_next)
    x_next = x + d * eps
    it, res = 0, float("nan")
    for it in range(1, exact_iters + 1):
        eps = model_eps(x_next, sigma_next)
        x_new = x + d * eps
        res = float((x_new - x_next).norm() / x_new.norm().clamp_min(1e-12))
        x_next = x_new
        if res <= exact_tol:
            break
    return x_next, eps, it, res
