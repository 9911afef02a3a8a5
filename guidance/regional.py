"""Regional gradient guidance (DiffEditor paper Eq. 8; reference §1.7 "Regional gradients", §1.8).

The guidance is the gradient of the *edit* energy inside the edit region ``m`` and the gradient of the
*content* energy outside it:

    g = kappa * eta * [ grad E_edit (.) m  +  grad E_content (.) (1 - m) ]

with ``eta`` the energy scale (UI value x 1000) and ``kappa`` the task's fixed multiplier (§1.10).
``regional=False`` is the "global guidance" ablation: both gradients apply everywhere.

**Coordinates.** The official code works in diffusers ("VP") coordinates ``z_t = sqrt(a) x0 + sqrt(1-a) eps``
and takes ``g`` w.r.t. ``z``. ComfyUI samplers work in sigma ("VE") coordinates ``x = z * sqrt(1 + sigma^2)``
(``a = 1 / (1 + sigma^2)``) and return the denoised estimate ``D``. :func:`guided_denoised` converts the
official update exactly (see its docstring); :func:`grad_z_from_grad_x` and friends are the pieces.
"""
from __future__ import annotations

import math

import torch

from .grids import resize_mask


# ------------------------------------------------------------------------------------------------- masks
def latent_mask(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The edit mask at the latent resolution of ``like [B, C, h, w]``: ``[1 or B, 1, h, w]`` float of 0/1.

    ``m`` may be ``[h', w']``, ``[1, h', w']`` or ``[1 or B, 1, h', w']`` at any resolution (e.g. the feature
    grid); it is resized with nearest interpolation and thresholded at ``> 0`` (official).
    """
    m = torch.as_tensor(m).to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)
    while m.ndim < 4:
        m = m.unsqueeze(0)
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"m_edit must be [h, w], [1, h, w] or [1|B, 1, h, w], got {tuple(m.shape)} for a latent "
                         f"of shape {tuple(like.shape)}")
    m = resize_mask(m, like.shape[-2:], "nearest")
    return (m > 0).to(m.dtype)


# ---------------------------------------------------------------------------------------------- gradient
def loss_scale_for(factor: float, max_exp: int = 14) -> float:
    """The power of two nearest to ``factor`` (clamped to ``1 .. 2**max_exp``): a loss scale for autograd.

    The official code multiplies each energy by ``kappa * eta`` (hundreds to thousands) *before* autograd,
    which is what keeps the backward pass of an fp16 UNet above fp16's underflow. Scaling by a power of two
    instead, and dividing the gradient by it afterwards, is exact in every float format (no rounding), so
    fp32 results are bit-for-bit those of the unscaled gradient, while fp16/bf16 get the official headroom.
    """
    f = float(factor)
    if not math.isfinite(f) or f <= 1.0:
        return 1.0
    return float(2.0 ** min(max_exp, max(0, round(math.log2(f)))))


def _scaled_grad(e: torch.Tensor, x: torch.Tensor, loss_scale: float, retain: bool) -> torch.Tensor:
    """``d e / d x`` taken of ``e * loss_scale`` and divided back; on overflow (non-finite) the scale backs off
    by 2**4 until it is 1 (dynamic loss scaling), so a too-large scale never silently turns into NaN."""
    s = float(loss_scale)
    while True:
        last = s <= 1.0
        g = torch.autograd.grad(e.reshape(()) * s if s != 1.0 else e.reshape(()), x,
                                retain_graph=retain or not last, allow_unused=True)[0]
        if g is None:
            return torch.zeros_like(x)
        if last or bool(torch.isfinite(g).all()):
            return g / s if s != 1.0 else g
        s = max(1.0, s / 16.0)


def regional_gradient(x: torch.Tensor, E_edit: torch.Tensor, E_content: torch.Tensor, m_edit: torch.Tensor,
                      regional: bool = True, *, kappa: float = 1.0, energy_scale: float = 1.0,
                      edit_first: bool = True, loss_scale: float | None = None):
    """Regional combination of the two energy gradients w.r.t. ``x`` (paper Eq. 8).

    Two separate ``torch.autograd.grad`` calls over the same graph (the first retains it), as official.
    Returns ``(g_edit_part, g_content_part, g_total)``, all detached and shaped like ``x``:

    * ``regional=True``:  ``g_edit_part = kappa*eta * grad E_edit (.) m``,
      ``g_content_part = kappa*eta * grad E_content (.) (1 - m)``;
    * ``regional=False`` (global ablation): ``g_edit_part = kappa*eta * grad E_edit``,
      ``g_content_part = kappa*eta * grad E_content`` (everywhere);

    and ``g_total = g_edit_part + g_content_part``. ``m`` is ``m_edit`` brought to ``x``'s resolution
    (:func:`latent_mask`, nearest, ``> 0``). An energy that does not depend on ``x`` (no ``grad_fn``, e.g. a
    zero content energy) contributes zeros. ``edit_first`` only picks the order of the two backward passes
    (official: edit first for move/drag, content first for appearance/paste); the result is the same.

    The gradient is w.r.t. whatever ``x`` is: to reproduce the official step size pass the diffusers latent
    ``z`` (or a sigma-space gradient through :func:`guided_denoised`, which adds the ``sqrt(1+sigma^2)``).

    ``loss_scale`` (default: :func:`loss_scale_for` ``(kappa * energy_scale)``) multiplies each energy before
    its backward pass and divides the gradient after (a power of two: exact, so fp32 results do not change);
    it keeps fp16/bf16 UNets' small gradients from underflowing to zero, as the official pre-multiplied energy
    does. Callers that apply ``kappa * energy_scale`` later (the samplers) pass it here explicitly.
    """
    if not x.requires_grad:
        raise ValueError("x must require grad (the energies must be computed from it)")
    energies = [("E_edit", E_edit), ("E_content", E_content)]
    if not edit_first:
        energies.reverse()
    live = [(n, e) for n, e in energies if torch.is_tensor(e) and e.requires_grad]
    for n, e in energies:
        if not torch.is_tensor(e) or e.numel() != 1:
            raise ValueError(f"{n} must be a scalar tensor")
    ls = loss_scale_for(float(kappa) * float(energy_scale)) if loss_scale is None else float(loss_scale)
    grads = {n: _scaled_grad(e, x, ls, retain=j + 1 < len(live)) for j, (n, e) in enumerate(live)}
    g_e = grads.get("E_edit", torch.zeros_like(x)).detach()
    g_c = grads.get("E_content", torch.zeros_like(x)).detach()
    scale = float(kappa) * float(energy_scale)
    if regional:
        m = latent_mask(m_edit, x)
        g_e = g_e * m
        g_c = g_c * (1 - m)
    g_e, g_c = g_e * scale, g_c * scale
    return g_e, g_c, g_e + g_c


# ------------------------------------------------------------------------------------ sigma-space helpers
def _bcast(sigma, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if s.ndim == 0:
        return s
    s = s.reshape(-1)
    if s.numel() == 1:
        return s.reshape(())
    if s.numel() != like.shape[0]:
        raise ValueError(f"sigma has {s.numel()} values but the latent has batch {like.shape[0]}")
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def z_from_x(x: torch.Tensor, sigma) -> torch.Tensor:
    """Diffusers (VP) latent from the sigma-space latent: ``z = x / sqrt(1 + sigma^2)``."""
    s = _bcast(sigma, x)
    return x / torch.sqrt(1 + s * s)


def x_from_z(z: torch.Tensor, sigma) -> torch.Tensor:
    """Sigma-space latent from the diffusers (VP) latent: ``x = z * sqrt(1 + sigma^2)``."""
    s = _bcast(sigma, z)
    return z * torch.sqrt(1 + s * s)


def grad_z_from_grad_x(grad_x: torch.Tensor, sigma) -> torch.Tensor:
    """``grad_z E = sqrt(1 + sigma^2) * grad_x E`` (chain rule through ``x = z * sqrt(1 + sigma^2)``)."""
    s = _bcast(sigma, grad_x)
    return grad_x * torch.sqrt(1 + s * s)


def guided_denoised(D: torch.Tensor, sigma, grad_x: torch.Tensor, kappa: float, energy_scale: float,
                    param=None) -> torch.Tensor:
    """The guided clean-latent estimate in ComfyUI sigma space: ``D' = D - sigma * kappa*eta*sqrt(1+sigma^2) * grad_x E``.

    Derivation. Let ``a = alpha_bar_t = 1/(1+sigma^2)``, ``z = sqrt(a) x`` the diffusers latent and
    ``D = x - sigma*eps_cfg`` ComfyUI's denoised estimate (eps-prediction). The official guided step adds
    ``g = kappa*eta*grad_z E`` to the noise prediction of the clean estimate only::

        x0_hat = (z - sqrt(1-a) (eps_cfg + g)) / sqrt(a)
               = x - sigma*eps_cfg - sigma*g            (sqrt(1-a)/sqrt(a) = sigma, z/sqrt(a) = x)
               = D - sigma*g,

    and the DDIM direction keeps the unguided ``eps_cfg = (x - D)/sigma``. Since ``x = z*sqrt(1+sigma^2)``,
    ``grad_z E = sqrt(1+sigma^2) grad_x E``, hence ``g = kappa*eta*sqrt(1+sigma^2) grad_x E`` and
    ``D' = D - sigma*kappa*eta*sqrt(1+sigma^2)*grad_x E``. The next latent is then
    ``x_next = D' + (x - D)/sigma * sigma_next`` (+ the regional noise term), which equals the official
    ``z_{t-1} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps_cfg`` times ``sqrt(1+sigma_next^2)``.

    ``sigma`` is a float, a 0-d tensor or one value per batch item; ``grad_x`` is the (regional) gradient
    w.r.t. the sigma-space latent ``x`` (e.g. ``g_total`` of :func:`regional_gradient` with ``kappa = eta = 1``).

    ``param``: the model family (``samplers/param.py``); ``None`` is EPS, exactly the formula above. A flow
    model's network input is ``x`` itself, so its factor is ``sigma`` (``D' = D - sigma*kappa*eta*grad_x E``).
    """
    s = _bcast(sigma, D)
    if param is not None and param.name != "eps":
        return D - param.guidance_factor(s) * float(kappa) * float(energy_scale) * grad_x.to(D.dtype)
    return D - s * float(kappa) * float(energy_scale) * torch.sqrt(1 + s * s) * grad_x.to(D.dtype)
