"""Model parameterisations: what a latent at noise level ``sigma`` is, for the two families the engine edits.

Every engine function works in ComfyUI's sigma space and talks to the model through ``model(x, sigma) ->
denoised``. The families differ only in how a clean latent and noise make ``x``:

* ``EPS`` (SD1.x, SD2.x, SDXL; ComfyUI ``EPS`` on a discrete schedule, "VE" coordinates):
  ``x = x0 + sigma * eps``; the model sees ``x / sqrt(1 + sigma^2)`` (the diffusers latent).
* ``FLOW`` (Flux, SD3, Qwen-Image; ComfyUI ``CONST``, rectified flow): ``x = (1 - sigma) x0 + sigma * eps``
  with ``sigma`` in ``[0, 1]``; the model sees ``x`` itself and ``denoised = x - sigma * v``.

Both are ``x = a(sigma) x0 + sigma * eps`` with the signal coefficient ``a`` = 1 or ``1 - sigma``. Three
consequences keep one editing loop for both:

* the deterministic DDIM step is the same first-order step in either family,
  ``x' = x + (sigma' - sigma) (x - D) / sigma``, so the trajectory anchor, its ``anchor_denoised`` and the
  time-travel roll-back are family neutral; ``(x - D) / sigma`` is eps for EPS and the velocity for FLOW;
* a step with a *guided* x0 estimate or with fresh noise composes ``a(sigma') x0 + down * eps + up * n``;
  FLOW's ``down, up`` are DDIM's (``eta = 1`` is the DDPM posterior) computed through the equivalent VE
  ratio ``sigma / a(sigma)`` (a flow model is a VP model with another time variable; DDIM does not depend on
  the time variable), well defined at ``sigma = 1`` where that ratio is infinite;
* the energy gradient is taken w.r.t. ``x``; DiffEditor's official step size is defined w.r.t. the model input,
  ``grad_in = grad_x * input_divisor`` with ``input_divisor`` = ``sqrt(1 + sigma^2)`` (EPS) or 1 (FLOW); FLOW's
  x0 correction is ``sigma * grad_in`` as EPS's (bounded at ``sigma = 1``; the eps-shift reading would divide
  by ``1 - sigma``), so ``guidance_strength`` is the knob that calibrates a DiT's energies.

The EPS methods call the original functions of ``ddim.py`` / ``regional.py`` unchanged, so every published
preset stays bit for bit what it was. No host imports; adapters pick the object from the model's sampling type
(``host.param``).
"""
from __future__ import annotations

import math

import torch


class Parameterization:
    """Base: the EPS family (ComfyUI sigma space for eps-prediction models)."""

    name = "eps"
    label = "eps prediction (SD1.x / SD2.x / SDXL)"

    # -- coordinates ---------------------------------------------------------------------------------
    def signal(self, sigma):
        """``a(sigma)``, the clean latent's coefficient in ``x = a x0 + sigma eps``."""
        return 1.0

    def input_divisor(self, sigma: float) -> float:
        """``x / input_divisor`` is the model input (the latent the network sees): ``sqrt(1 + sigma^2)``."""
        s = float(sigma)
        return math.sqrt(1 + s * s)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """The latent at ``sigma`` made of a clean latent and unit noise."""
        return x0 + noise * sigma

    def eps(self, x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
        """The noise estimate of ``x`` given its denoised estimate."""
        return (x - denoised) / sigma

    # -- steps ---------------------------------------------------------------------------------------
    def step(self, x, denoised, sigma, sigma_next, eta=0.0, noise=None, denoised_guided=None):
        """One DDIM step ``sigma -> sigma_next`` (see :func:`.ddim.ddim_step`)."""
        from .ddim import ddim_step
        return ddim_step(x, denoised, sigma, sigma_next, eta, noise, denoised_guided)

    def invert_input(self, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
        """The plain inversion step's model input: the latent of ``sigma`` read at ``sigma_next`` with the
        network input unchanged (official DiffEditor: ``eps(z_prev, t_next)``)."""
        from .ddim import rescale_to_sigma
        return rescale_to_sigma(x, sigma, sigma_next)

    def guidance_factor(self, sigma) -> torch.Tensor | float:
        """``D' = D - factor * kappa * eta * grad_x E``: ``sigma * input_divisor`` (official step size)."""
        return sigma * torch.sqrt(1 + sigma * sigma) if isinstance(sigma, torch.Tensor) else \
            float(sigma) * math.sqrt(1 + float(sigma) ** 2)

    def check_sigmas(self, sigmas: torch.Tensor, name: str = "sigmas") -> None:
        """Family-specific range check (EPS: any non-negative schedule)."""

    def __repr__(self):
        return self.name.upper()

    def __reduce__(self):  # module-level singletons survive pickling/deepcopy as themselves
        return (param_for, (self.name,))

    def __deepcopy__(self, memo):
        return self


class FlowParameterization(Parameterization):
    """Rectified flow (ComfyUI ``CONST``): ``x = (1 - sigma) x0 + sigma eps``, sigma in [0, 1]."""

    name = "flow"
    label = "rectified flow (Flux / SD3 / Qwen-Image)"

    def signal(self, sigma):
        return 1 - sigma

    def input_divisor(self, sigma: float) -> float:
        return 1.0

    def noised(self, x0, noise, sigma):
        return x0 * (1 - sigma) + noise * sigma

    def eps(self, x, denoised, sigma):
        return (x - denoised * (1 - sigma)) / sigma

    def ancestral(self, sigma, sigma_next, eta):
        """``(down, up)`` of a DDIM step with ``eta`` (float or tensor): ``x' = a' x0 + down eps + up n``.

        ``up = eta * sigma' * sqrt(1 - r^2)``, ``r = (sigma' a) / (a' sigma)`` (the ratio of the equivalent VE
        sigmas), ``down = sqrt(sigma'^2 - up^2)``; ``eta = 1`` is the DDPM posterior, ``eta = 0`` the ODE.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        sn = torch.as_tensor(sigma_next, dtype=torch.float64)
        eta = torch.as_tensor(eta)
        r = (sn * (1 - sigma)) / ((1 - sn) * sigma)
        up = eta.double() * sn * torch.sqrt(torch.clamp(1 - r * r, min=0))
        up = torch.minimum(up, sn.expand_as(up))
        down = torch.sqrt(torch.clamp(sn * sn - up * up, min=0))
        return down.to(eta.dtype if eta.is_floating_point() else torch.float32), \
            up.to(eta.dtype if eta.is_floating_point() else torch.float32)

    def step(self, x, denoised, sigma, sigma_next, eta=0.0, noise=None, denoised_guided=None):
        x0 = denoised if denoised_guided is None else denoised_guided
        sn = float(sigma_next)
        if sn == 0.0:
            return x0
        s = sigma if isinstance(sigma, torch.Tensor) else float(sigma)
        e = self.eps(x, denoised, s)
        if isinstance(eta, (int, float)) and eta == 0:
            if denoised_guided is None:  # the plain Euler form, fewest roundings
                return x + (x - denoised) * ((sn - float(s)) / float(s))
            return x0 * (1 - sn) + e * sn
        down, up = self.ancestral(float(s), sn, eta.cpu() if isinstance(eta, torch.Tensor) else eta)
        down = down.to(device=x.device, dtype=x.dtype)
        up = up.to(device=x.device, dtype=x.dtype)
        out = x0 * (1 - sn) + e * down
        if bool((up > 0).any()):
            if noise is None:
                raise ValueError("a flow step with eta > 0 needs a noise tensor")
            out = out + noise * up
        return out

    def invert_input(self, x, sigma, sigma_next):
        return x  # the network input is x itself

    def guidance_factor(self, sigma):
        return sigma  # input_divisor 1: the gradient w.r.t. the model input is grad_x

    def check_sigmas(self, sigmas: torch.Tensor, name: str = "sigmas") -> None:
        if float(sigmas.max()) > 1.0 + 1e-6:
            raise ValueError(f"{name}: a flow model's sigmas lie in [0, 1], got a largest sigma of "
                             f"{float(sigmas.max()):.4g}; use the MODEL's own scheduler (e.g. 'simple' or "
                             "'beta' through BasicScheduler) rather than sigmas made for another model")


EPS = Parameterization()
FLOW = FlowParameterization()
PARAMS = {EPS.name: EPS, FLOW.name: FLOW}


def param_for(name: str | Parameterization | None) -> Parameterization:
    """The parameterisation called ``name`` (``None`` -> EPS)."""
    if name is None:
        return EPS
    if isinstance(name, Parameterization):
        return name
    try:
        return PARAMS[name]
    except KeyError:
        raise ValueError(f"unknown model parameterisation {name!r}; expected one of {sorted(PARAMS)}") from None


def param_of(host) -> Parameterization:
    """The parameterisation of an :class:`~.hooks.EditHost` (EPS when the host does not say)."""
    return param_for(getattr(host, "param", None))
