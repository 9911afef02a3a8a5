"""The DiffEditor sampler (foundation part): DDIM in sigma space with regional eta and trajectory anchoring.

k-diffusion convention: ``sample_diffeditor(model, x, sigmas, extra_args, callback, disable, **options)``
with ``model(x, sigma, **extra_args) -> denoised``. The guided editing loop (Algorithm 1) is in
``samplers/edit.py`` and builds on the same step.
"""
from __future__ import annotations

import torch
from tqdm.auto import trange

from .blend import TrajectoryAnchor
from .ddim import ddim_step
from .hooks import EditHooks, KVInjection
from .param import param_for, param_of
from .schedule import StepWindow, check_latent, check_sigmas, match_step
from .trajectory import EditTrajectory


class NoiseSource:
    """Seeded standard-normal noise, generated on the CPU so results do not depend on the device."""

    def __init__(self, seed: int | None):
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(0 if seed is None else int(seed))

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.gen, dtype=torch.float32).to(like.device, like.dtype)


def regional_eta(eta_in: float, eta_out: float, mask: torch.Tensor | None, like: torch.Tensor):
    """Per-element eta: ``eta_in`` inside ``mask`` (1 = region), ``eta_out`` outside; a float without mask."""
    if mask is None:
        return float(eta_in)
    m = mask.to(device=like.device, dtype=like.dtype)
    return eta_in * m + eta_out * (1 - m)


def start_latent(x: torch.Tensor, sigmas: torch.Tensor, trajectory: EditTrajectory | None, model_id=None,
                 param=None):
    """The latent to start from: the trajectory's z_T when one is given (after checking it fits)."""
    if trajectory is None:
        return x
    trajectory.check_compatible(model_id=model_id, sigmas=sigmas, shape=tuple(x.shape), param=param)
    z = trajectory.at(0, like=x)
    if z.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"trajectory has batch {z.shape[0]} but the latent has batch {x.shape[0]}")
    return z.expand_as(x).clone()


@torch.no_grad()
def sample_diffeditor(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                      trajectory: EditTrajectory | None = None, blend: TrajectoryAnchor | None = None,
                      eta: float = 0.0, eta_outside: float = 0.0, eta_mask: torch.Tensor | None = None,
                      eta_window: StepWindow | None = None, seed: int | None = None,
                      hooks: EditHooks | None = None, host=None, model_id: str | None = None,
                      kv: KVInjection | None = None, kv_trajectory: EditTrajectory | None = None,
                      param=None):
    """Deterministic DDIM with optional regional SDE and trajectory lock.

    * ``trajectory``: start from its z_T (``x`` is then only used for its shape/device) — reconstruction;
    * ``eta``/``eta_outside``/``eta_mask``/``eta_window``: stochastic steps with ``eta`` inside the mask and
      ``eta_outside`` outside it, on the steps of ``eta_window`` (all steps when ``None``), one shared noise;
    * ``blend``: keep the latent outside its mask equal to its trajectory (hard lock after each step);
    * ``kv`` + ``kv_trajectory``: share self-attention K,V with the source (MasaCtrl-style visual
      cross-attention, needs ``hooks`` wired into the model); ``sigmas`` may be a tail of the trajectory's
      schedule (e.g. sampling on after a drag optimisation), the bank is read at the matching steps;
    * ``param``: the model family (``samplers/param.py``); default: the host's, else the trajectory's, else EPS.
    """
    extra_args = {} if extra_args is None else extra_args
    check_sigmas(sigmas, "sigmas")
    check_latent(x)
    if param is None:
        anchor_traj = trajectory if trajectory is not None else (blend.trajectory if blend is not None else None)
        param = param_of(host) if host is not None else (param_for(anchor_traj.param) if anchor_traj is not None
                                                         else None)
    param = param_for(param)
    param.check_sigmas(sigmas)
    if seed is None:
        seed = extra_args.get("seed")
    x = start_latent(x, sigmas, trajectory, model_id, param)
    n = len(sigmas) - 1
    eta_steps = None if eta_window is None else frozenset(eta_window.indices(n))
    stochastic = eta > 0 or eta_outside > 0
    noise = NoiseSource(seed) if stochastic else None
    if blend is not None:
        blend.trajectory.check_compatible(sigmas=sigmas, shape=tuple(x.shape), name="blend trajectory", param=param)
    offset = 0
    if kv is not None:
        if hooks is None or kv_trajectory is None:
            raise ValueError("K,V sharing needs the hooks and the trajectory whose bank is shared")
        offset = match_step(float(sigmas[0]), kv_trajectory.sigmas)
        if offset is None or offset + n > kv_trajectory.steps or not torch.allclose(
                sigmas.float().cpu(), kv_trajectory.sigmas[offset:offset + n + 1], rtol=1e-4, atol=1e-6):
            raise ValueError("sigmas: K,V sharing needs the sampling sigmas to be (a tail of) the trajectory's "
                             "schedule")
        saved_inject, hooks.inject = hooks.inject, kv
    s_in = x.new_ones([x.shape[0]])
    for i in trange(n, disable=disable):
        if host is not None:
            host.check_interrupt()
        if hooks is not None:
            hooks.step = i + offset
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        step_eta = 0.0
        if stochastic and (eta_steps is None or i in eta_steps):
            step_eta = regional_eta(eta, eta_outside, eta_mask, x)
        nz = noise(x) if stochastic else None  # drawn every step so the stream does not depend on the window
        x = param.step(x, denoised, sigmas[i], sigmas[i + 1], step_eta, nz)
        if blend is not None:
            x = blend.lock(x, i + 1, i)
    if hooks is not None:
        hooks.step = None
        if kv is not None:
            hooks.inject = saved_inject
    return x
