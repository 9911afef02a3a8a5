"""SLD — Safe Latent Diffusion guidance (diffusers ``StableDiffusionPipelineSafe``), pure torch.

See ``docs/diffeditor-reference.md`` §4.2. Per sampling step ``i`` with unconditional, conditional and safety-concept
noise predictions ``ε_u, ε_c, ε_S`` (all elementwise):

    γ  = min(1, s_S |ε_c − ε_S|)
    μ  = γ ⊙ 1[ε_c − ε_S < λ_th]
    ψ  = μ ⊙ (ε_S − ε_u) + s_m ν
    ν ← β_m ν + (1 − β_m) ψ                 (ν starts at 0; updated every step, also during warm-up)
    ε  = ε_u + w [(ε_c − ε_u) − ψ · 1[i ≥ i_warm]]

``ψ`` uses the momentum *before* the update. With ``s_S = 0`` we get γ = 0, so ψ = s_m ν with ν ≡ 0: the result is
plain CFG ``ε_u + w (ε_c − ε_u)``, bit for bit.

The state (momentum ν and the step counter ``i``) is explicit: an :class:`SLDState` that :func:`sld_guidance`
updates in place. Use one state per sampling run (``SLDState()`` or ``state.reset()`` before a new run).

Sigma space (ComfyUI). ComfyUI's ``sampler_cfg_function`` receives ``cond = x − D_c`` and ``uncond = x − D_u``
(``D`` = denoised estimate, ``x`` in the VE parameterisation ``x = x0 + σ ε``), and the guided result is
``x − returned``. For an ε-prediction model ``D = x − σ ε``, so ``x − D = σ ε`` and ``ε = (x − D)/σ``.
Because γ and the threshold are nonlinear and defined on the ε scale, :func:`sld_guidance_sigma` divides by σ to
compute ψ, then works linearly in noise space: it returns ``n_u + w[(n_c − n_u) − σ ψ 1[i ≥ i_warm]]`` with
``n = x − D``, i.e. exactly ``σ ·`` :func:`sld_guidance` (and exactly ComfyUI's noise-space CFG when ψ = 0).
Derived for ε-prediction models; flow/v models would need a re-derivation of what "ε" means.

As an *additive correction* (:func:`sld_correction_sigma`): the only difference SLD makes to CFG is the term
``− w σ ψ 1[i ≥ i_warm]`` in noise space, i.e. ``+ w σ ψ 1[i ≥ i_warm]`` on the guided denoised estimate. So SLD
can be added after whatever guidance produced that estimate (ComfyUI's ``sampler_post_cfg_function``), and
composes with any other guidance instead of replacing it; on top of plain CFG it is exactly
:func:`sld_guidance_sigma` (up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

import torch

__all__ = ["SLDConfig", "SLDState", "SLD_PRESETS", "sld_correction_sigma", "sld_guidance", "sld_guidance_sigma",
           "sld_preset"]


@dataclass(frozen=True)
class SLDConfig:
    """SLD hyper-parameters (names as in the reference table; diffusers' ``sld_*`` in brackets).

    warmup_steps   i_warm  [sld_warmup_steps]   ψ is applied from step index ``warmup_steps`` on (0-based)
    guidance_scale s_S     [sld_guidance_scale] 0 disables SLD (plain CFG)
    threshold      λ_th    [sld_threshold]
    momentum_scale s_m     [sld_momentum_scale]
    momentum_beta  β_m     [sld_mom_beta]
    """

    warmup_steps: int = 10
    guidance_scale: float = 1000.0
    threshold: float = 0.01
    momentum_scale: float = 0.3
    momentum_beta: float = 0.4

    def __post_init__(self):
        if int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.momentum_scale < 0:
            raise ValueError(f"momentum_scale must be >= 0, got {self.momentum_scale}")
        if not (0.0 <= self.momentum_beta <= 1.0):
            raise ValueError(f"momentum_beta must be in [0, 1], got {self.momentum_beta}")


# diffusers' SafetyConfig (pipelines/stable_diffusion_safe). NOTE on WEAK: diffusers uses sld_guidance_scale = 20;
# some reimplementations use 200 for WEAK (MEDIUM/STRONG/MAX agree everywhere). We follow diffusers and the
# reference table; check against the SLD paper (Schramowski et al., CVPR 2023) before relying on WEAK.
SLD_PRESETS: dict[str, SLDConfig] = {
    "weak": SLDConfig(warmup_steps=15, guidance_scale=20.0, threshold=0.0, momentum_scale=0.0, momentum_beta=0.0),
    "medium": SLDConfig(warmup_steps=10, guidance_scale=1000.0, threshold=0.01, momentum_scale=0.3,
                        momentum_beta=0.4),
    "strong": SLDConfig(warmup_steps=7, guidance_scale=2000.0, threshold=0.025, momentum_scale=0.5,
                        momentum_beta=0.7),
    "max": SLDConfig(warmup_steps=0, guidance_scale=5000.0, threshold=1.0, momentum_scale=0.5, momentum_beta=0.7),
}


def sld_preset(name: str) -> SLDConfig:
    """Preset by name (case-insensitive): weak, medium, strong, max."""
    key = str(name).strip().lower()
    if key not in SLD_PRESETS:
        raise ValueError(f"unknown SLD preset {name!r}; choose one of {sorted(SLD_PRESETS)}")
    return SLD_PRESETS[key]


@dataclass
class SLDState:
    """Explicit SLD state: momentum ``ν`` (``None`` = zeros) and the index of the *next* step."""

    momentum: Optional[torch.Tensor] = None
    step: int = 0

    def reset(self) -> None:
        self.momentum = None
        self.step = 0

    def copy(self) -> "SLDState":
        return replace(self, momentum=None if self.momentum is None else self.momentum.clone())


def _safety_term(eps_u: torch.Tensor, eps_c: torch.Tensor, eps_s: torch.Tensor, config: SLDConfig,
                 state: SLDState) -> tuple[torch.Tensor, bool]:
    """Compute ψ for the current step, update ``state`` (ν and step) and say whether ψ applies."""
    if not (eps_u.shape == eps_c.shape == eps_s.shape):
        raise ValueError(f"SLD needs equal shapes, got uncond {tuple(eps_u.shape)}, cond {tuple(eps_c.shape)}, "
                         f"safety {tuple(eps_s.shape)}")
    nu = state.momentum
    if nu is None:
        nu = torch.zeros_like(eps_c)
    elif nu.shape != eps_c.shape:
        raise ValueError(f"SLD momentum has shape {tuple(nu.shape)} but the predictions have "
                         f"{tuple(eps_c.shape)}; reset the SLDState at the start of each sampling run")
    else:
        nu = nu.to(device=eps_c.device, dtype=eps_c.dtype)
    diff = eps_c - eps_s
    gamma = torch.clamp(torch.abs(diff) * config.guidance_scale, max=1.0)
    mu = torch.where(diff < config.threshold, gamma, torch.zeros_like(gamma))
    psi = mu * (eps_s - eps_u) + config.momentum_scale * nu
    state.momentum = config.momentum_beta * nu + (1.0 - config.momentum_beta) * psi
    apply = state.step >= config.warmup_steps
    state.step += 1
    return psi, apply


def sld_guidance(eps_u: torch.Tensor, eps_c: torch.Tensor, eps_s: torch.Tensor, cfg_scale: float,
                 config: SLDConfig, state: SLDState) -> torch.Tensor:
    """One SLD-guided noise prediction ``ε = ε_u + w[(ε_c − ε_u) − ψ·1[i ≥ i_warm]]``.

    ``eps_u``/``eps_c``/``eps_s``: unconditional, prompt and safety-concept ε predictions (same shape).
    ``cfg_scale``: the CFG scale ``w``. ``state`` is updated in place (momentum, step += 1).
    """
    psi, apply = _safety_term(eps_u, eps_c, eps_s, config, state)
    g = eps_c - eps_u
    if apply:
        g = g - psi
    return eps_u + cfg_scale * g


def _sigma_like(sigma: Union[float, torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=ref.dtype, device=ref.device)
    if s.dim() == 0:
        return s
    s = s.flatten()
    if s.numel() == 1:
        return s.reshape(())
    if s.numel() != ref.shape[0]:
        raise ValueError(f"sigma has {s.numel()} entries for a batch of {ref.shape[0]}")
    return s.reshape(-1, *([1] * (ref.dim() - 1)))


def sld_guidance_sigma(x: torch.Tensor, sigma: Union[float, torch.Tensor], cond_denoised: torch.Tensor,
                       uncond_denoised: torch.Tensor, safety_denoised: torch.Tensor, cond_scale: float,
                       config: SLDConfig, state: SLDState) -> torch.Tensor:
    """SLD on denoised estimates, for ComfyUI's ``sampler_cfg_function``; returns the *noise-like* tensor.

    ``x``: the sampler input (ComfyUI ``args["input"]``); ``sigma``: scalar or ``[B]`` (``args["sigma"]``);
    ``*_denoised``: ``D`` for prompt, unconditional and safety-concept conditioning. The caller returns the result
    from the cfg function (ComfyUI then uses ``x − result`` as denoised). Result = ``σ ·`` :func:`sld_guidance`
    applied to ``ε = (x − D)/σ``; with ψ = 0 it equals ``n_u + w (n_c − n_u)``, ``n = x − D``, exactly.
    """
    sig = _sigma_like(sigma, x)
    if (sig <= 0).any():
        raise ValueError("sld_guidance_sigma needs sigma > 0 (at sigma = 0 there is no noise to guide)")
    n_c = x - cond_denoised
    n_u = x - uncond_denoised
    n_s = x - safety_denoised
    psi, apply = _safety_term(n_u / sig, n_c / sig, n_s / sig, config, state)
    g = n_c - n_u
    if apply:
        g = g - sig * psi
    return n_u + cond_scale * g


def sld_correction_sigma(x: torch.Tensor, sigma: Union[float, torch.Tensor], cond_denoised: torch.Tensor,
                         uncond_denoised: torch.Tensor, safety_denoised: torch.Tensor, cond_scale: float,
                         config: SLDConfig, state: SLDState) -> torch.Tensor:
    """The SLD term to *add* to a guided denoised estimate: ``w σ ψ`` from the warm-up step on, zeros before.

    Same arguments as :func:`sld_guidance_sigma`; ``state`` is updated the same way (also during warm-up).
    ``x − sld_guidance_sigma(...)`` equals
    ``uncond_denoised + w (cond_denoised − uncond_denoised) + sld_correction_sigma(...)``.
    """
    sig = _sigma_like(sigma, x)
    if (sig <= 0).any():
        raise ValueError("sld_correction_sigma needs sigma > 0 (at sigma = 0 there is no noise to guide)")
    psi, apply = _safety_term((x - uncond_denoised) / sig, (x - cond_denoised) / sig, (x - safety_denoised) / sig,
                              config, state)
    if not apply:
        return torch.zeros_like(psi)
    return cond_scale * sig * psi
