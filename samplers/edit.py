"""DiffEditor's editing loop (paper Algorithm 1) in sigma space, every mechanism switchable.

Per step ``i`` (0 = noisiest) of the sampling schedule:

1. **Energy guidance** (on the steps of ``schedule.guidance``): decoder features of the current latent
   (with gradient) and of the source trajectory at the same step (no gradient, cached per step) feed the
   task's energies; the regional gradient ``g`` (edit gradient inside ``m_edit``, content gradient outside)
   corrects only the x0 term: ``D' = D - sigma * kappa * eta * sqrt(1+sigma^2) * grad_x E`` (the official
   step sizes, converted from diffusers coordinates).
2. **Regional SDE** (``schedule.sde``): a DDIM step with ``eta_in`` inside the SDE region and ``eta_out``
   outside, one shared noise sample.
3. **Time travel** (``schedule.time_travel``): the step is repeated ``repeats`` times; between repeats the
   stepped latent is rolled back ``sigma_{i+1} -> sigma_i`` with one deterministic DDIM-inversion step
   (conditional prediction, no bank). The official final, discarded roll-back is not made.
4. **Visual cross-attention**: the source bank's K,V are injected into the decoder self-attention through
   the host hooks (``KVInjection``; replace / concat / composite) on the steps of its window.

The task (move, drag, appearance, paste, ...) is a small object from ``guidance/``: see :class:`EditTask`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from tqdm.auto import trange

from ..guidance.regional import guided_denoised, loss_scale_for, regional_gradient
from .blend import TrajectoryAnchor
from .ddim import ddim_step
from .hooks import EditHooks, EditHost, KVInjection, default_feature_levels
from .inversion import check_latent
from .sampling import NoiseSource, regional_eta
from .schedule import StepWindow, check_sigmas, window_steps
from .trajectory import EditTrajectory


class EditTask(Protocol):
    """What a task provides to the editing loop (built in ``guidance/``)."""

    edit_mask: torch.Tensor  # [1,1,h,w] latent resolution, 1 = edit region (m_edit)
    sde_mask: torch.Tensor  # [1,1,h,w] region where the regional SDE applies
    reference: EditTrajectory | None  # second image (appearance / paste)
    ref_mask_latent: torch.Tensor | None  # composite K,V: region of the reference image (appearance / paste)

    def energy(self, feats: dict, ref_feats: dict, ref2_feats: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_edit, E_content) scalars; ``feats`` carry gradient."""

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None) -> torch.Tensor:
        """The start latent built from the inverted z_T (moved region pasted, drag patches copied, ...)."""


@dataclass(frozen=True)
class EditSchedule:
    """Which mechanisms run on which steps (fractions of the step count)."""

    guidance: tuple[StepWindow, ...] = (StepWindow(0.0, 0.2), StepWindow(0.2, 0.6, 2))
    sde: StepWindow | None = StepWindow(0.22, 0.4)
    eta_in: float = 0.4
    eta_out: float = 0.0
    time_travel: StepWindow | None = StepWindow(0.44, 0.6, 2)
    repeats: int = 3
    kv_mode: str | None = "replace"
    kv: StepWindow | None = StepWindow(0.1, 1.0)
    energy_scale: float = 500.0  # eta: UI energy x 1000
    kappa: float = 0.08
    regional: bool = True  # False: both energy gradients everywhere (ablation)
    feature_levels: tuple[int, ...] | None = None  # None: default_feature_levels of the host

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"time-travel repeats must be >= 1, got {self.repeats}")
        if self.energy_scale < 0 or self.kappa < 0:
            raise ValueError("energy scale and kappa must be >= 0")
        if not (0 <= self.eta_in <= 1 and 0 <= self.eta_out <= 1):
            raise ValueError(f"SDE strengths must be in [0, 1], got inside {self.eta_in}, outside {self.eta_out}")


PRESETS: dict[str, EditSchedule] = {
    # DiffEditor (official alg 'D+'): guidance on 0-9 then every 2nd until 30 of 50; SDE 11-19; time travel
    # at 22, 24, 26, 28 with 3 passes each.
    "DiffEditor": EditSchedule(),
    # DragonDiffusion (official alg 'D'): guidance on every step below 30 of 50, no SDE, no time travel.
    "DragonDiffusion": EditSchedule(guidance=(StepWindow(0.0, 0.6),), sde=None, time_travel=None),
}

# Per-task official differences from the move defaults (reference doc §1.9-§1.10).
TASK_SCHEDULES: dict[str, dict] = {
    "move": dict(kv_mode="replace", kv=StepWindow(0.1, 1.0), energy_scale=500.0, kappa=0.08),
    "drag": dict(kv_mode="concat", kv=StepWindow(0.1, 1.0), energy_scale=2000.0, kappa=0.04),
    "appearance": dict(kv_mode="composite", kv=StepWindow(0.0, 0.72), energy_scale=2000.0, kappa=0.04),
    "paste": dict(kv_mode="composite", kv=StepWindow(0.0, 0.72), energy_scale=1500.0, kappa=0.04),
}


def preset_schedule(preset: str = "DiffEditor", task: str = "move", **overrides) -> EditSchedule:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if task not in TASK_SCHEDULES:
        raise ValueError(f"task must be one of {sorted(TASK_SCHEDULES)}, got {task!r}")
    return replace(PRESETS[preset], **{**TASK_SCHEDULES[task], **overrides})


KV_MODES = ("auto", "replace", "concat", "composite", "off")


def build_schedule(preset: str = "DiffEditor", task: str = "move", *, energy_ui: float | None = None,
                   kappa: float | None = None, regional: bool = True, guidance_end: float | None = None,
                   sde_strength: float | None = None, sde_window: tuple[float, float] | None = None,
                   time_travel_repeats: int | None = None, time_travel_window: tuple[float, float] | None = None,
                   kv_mode: str = "auto", kv_window: tuple[float, float] | None = None) -> EditSchedule:
    """An :class:`EditSchedule` from user-facing knobs; ``None`` / ``"auto"`` keep the preset's value.

    ``energy_ui`` is the official UI energy (the engine scale is x1000); ``guidance_end`` moves the end of
    the guided steps (DiffEditor keeps its dense first 20%); ``sde_strength`` 0 or ``time_travel_repeats``
    1 switch those mechanisms off; ``kv_mode="off"`` disables visual cross-attention.
    """
    base = preset_schedule(preset, task)
    over: dict = {"regional": bool(regional)}
    if energy_ui is not None:
        if energy_ui < 0:
            raise ValueError(f"energy must be >= 0 (or auto), got {energy_ui}")
        over["energy_scale"] = float(energy_ui) * 1000.0
    if kappa is not None:
        over["kappa"] = float(kappa)
    if guidance_end is not None:
        if not 0 <= guidance_end <= 1:
            raise ValueError(f"guidance_end must be a fraction in [0, 1], got {guidance_end}")
        dense = min(base.guidance[0].end, guidance_end)
        every = base.guidance[-1].every
        over["guidance"] = (StepWindow(0.0, dense),) + ((StepWindow(dense, guidance_end, every),)
                                                        if guidance_end > dense else ())
    # an "auto" strength never switches on a mechanism the preset has off (DragonDiffusion: no SDE, no time
    # travel), whatever window is given
    if sde_strength is None and base.sde is None:
        sde_window = None
    if time_travel_repeats is None and base.time_travel is None:
        time_travel_window = None
    if sde_strength is not None or sde_window is not None:
        strength = base.eta_in if sde_strength is None else float(sde_strength)
        window = sde_window or ((base.sde.start, base.sde.end) if base.sde else (0.22, 0.4))
        over["eta_in"] = strength
        over["sde"] = StepWindow(*window) if strength > 0 else None
    if time_travel_repeats is not None or time_travel_window is not None:
        reps = base.repeats if time_travel_repeats is None else int(time_travel_repeats)
        if reps < 1:
            raise ValueError(f"time_travel_repeats must be >= 1 (1 = off), got {reps}")
        tw = base.time_travel or StepWindow(0.44, 0.6, 2)
        start, end = time_travel_window or (tw.start, tw.end)
        over["repeats"] = reps
        over["time_travel"] = StepWindow(start, end, tw.every) if reps > 1 else None
    if kv_mode not in KV_MODES:
        raise ValueError(f"visual cross-attention must be one of {KV_MODES}, got {kv_mode!r}")
    if kv_mode == "off":
        over["kv_mode"] = None
    elif kv_mode != "auto":
        over["kv_mode"] = kv_mode
    if kv_window is not None:
        over["kv"] = StepWindow(*kv_window)
    return replace(base, **over)


@dataclass
class EditStats:
    """Model-call accounting of one edit (UNet forwards by purpose, backward passes)."""

    cfg_forwards: int = 0
    guidance_evals: int = 0
    feature_forwards: int = 0
    reference_forwards: int = 0
    backward_passes: int = 0
    renoise_forwards: int = 0
    energies: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("energies")
        return d


def energy_gradient(host: EditHost, task: EditTask, x: torch.Tensor, sigma, levels, ref_feats, ref2_feats,
                    regional: bool, stats: EditStats | None = None, loss_scale: float = 1.0):
    """Regional energy gradient w.r.t. the sigma-space latent ``x`` (one feature forward, two backward passes).

    Returns ``(grad_x, (E_edit, E_content))``; scale it with :func:`guided_denoised`. The energies are
    computed in fp32 from the (possibly fp16/bf16) features, and the backward pass runs on the energies times
    ``loss_scale`` (a power of two, divided back exactly: see ``regional.loss_scale_for``), so a half-precision
    UNet's gradients do not underflow. Both are no-ops for an fp32 model.
    """
    with host.grad_context():
        xg = x.detach().clone().requires_grad_(True)
        feats = _as_fp32(host.features(xg, sigma, levels))
        e_edit, e_con = task.energy(feats, ref_feats, ref2_feats)
        live = int(e_edit.requires_grad) + int(e_con.requires_grad)
        _, _, grad = regional_gradient(xg, e_edit, e_con, task.edit_mask, regional,
                                       edit_first=getattr(task, "edit_first", True), loss_scale=loss_scale)
    if stats is not None:
        stats.feature_forwards += 1
        stats.guidance_evals += 1
        stats.backward_passes += live
    return grad, (float(e_edit.detach()), float(e_con.detach()))


@torch.no_grad()
def sample_edit(model, x, sigmas, extra_args=None, callback=None, disable=None, *, host: EditHost,
                hooks: EditHooks, trajectory: EditTrajectory, task: EditTask,
                schedule: EditSchedule = PRESETS["DiffEditor"], seed: int | None = None,
                blend: TrajectoryAnchor | None = None, init: bool = True, model_id: str | None = None,
                stats: EditStats | None = None):
    """DiffEditor edit of ``trajectory``'s source (k-diffusion convention; ``x`` gives shape/device only).

    ``model(x, sigma, **extra_args)`` is the CFG denoiser *with* the host hooks wired in (bank injection);
    ``host`` gives conditional predictions and features. Returns the edited latent at the last sigma.
    """
    extra_args = {} if extra_args is None else extra_args
    check_sigmas(sigmas, "sigmas")
    check_latent(x)
    trajectory.check_compatible(model_id=model_id, sigmas=sigmas, shape=tuple(x.shape))
    ref = task.reference
    if ref is not None:
        ref.check_compatible(model_id=model_id, sigmas=sigmas, shape=tuple(x.shape), name="reference trajectory")
    stats = stats if stats is not None else EditStats()
    n = len(sigmas) - 1
    if seed is None:
        seed = extra_args.get("seed")
    levels = schedule.feature_levels or default_feature_levels(host.num_up_blocks)
    guided = window_steps(schedule.guidance, n) if schedule.energy_scale > 0 and schedule.kappa > 0 else frozenset()
    sde_steps = window_steps(schedule.sde, n)
    tt_steps = window_steps(schedule.time_travel, n) if guided else frozenset()
    injection = _injection(schedule, trajectory, task, n)
    loss_scale = loss_scale_for(schedule.kappa * schedule.energy_scale)
    noise = NoiseSource(seed) if sde_steps and (schedule.eta_in > 0 or schedule.eta_out > 0) else None

    z = trajectory.at(0, like=x)
    x = (task.init_latent(z, None if ref is None else ref.at(0, like=x)) if init else z).expand_as(x).clone()
    s_in = x.new_ones([x.shape[0]])
    saved_inject = hooks.inject
    hooks.inject = injection
    try:
        for i in trange(n, disable=disable):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            ref_feats = ref2_feats = None
            if i in guided:
                with hooks.using(step=i):
                    ref_feats = _detached(host.features(trajectory.at(i, like=x), sigma * s_in, levels))
                    stats.reference_forwards += 1
                    if ref is not None:
                        ref2_feats = _detached(host.features(ref.at(i, like=x), sigma * s_in, levels))
                        stats.reference_forwards += 1
            passes = schedule.repeats if i in tt_steps and float(sigma_next) > 0 else 1
            for r in range(passes):
                host.check_interrupt()
                hooks.step = i
                denoised = model(x, sigma * s_in, **extra_args)
                stats.cfg_forwards += 1
                x0 = denoised
                if i in guided:
                    grad, energies = energy_gradient(host, task, x, sigma * s_in, levels, ref_feats, ref2_feats,
                                                     schedule.regional, stats, loss_scale)
                    stats.energies.append((i, r) + energies)
                    x0 = guided_denoised(denoised, sigma, grad, schedule.kappa, schedule.energy_scale)
                eta = 0.0
                if i in sde_steps and noise is not None:
                    eta = regional_eta(schedule.eta_in, schedule.eta_out, task.sde_mask, x)
                nz = noise(x) if noise is not None and i in sde_steps else None
                x_next = ddim_step(x, denoised, sigma, sigma_next, eta, nz, denoised_guided=x0)
                if blend is not None:
                    x_next = blend.lock(x_next, i + 1, i)
                if r + 1 < passes:  # time travel: roll back sigma_{i+1} -> sigma_i
                    x = time_travel_rollback(host, hooks, x_next, sigma_next, sigma)
                    stats.renoise_forwards += 1
                else:
                    x = x_next
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
    finally:
        hooks.inject = saved_inject
        hooks.step = None
    return x


def time_travel_rollback(host: EditHost, hooks: EditHooks, x_next: torch.Tensor, sigma_next, sigma) -> torch.Tensor:
    """One deterministic DDIM-inversion step ``sigma_next -> sigma`` (``sigma > sigma_next``).

    As the official re-noise: the conditional prediction at the *less* noisy level, no CFG, no bank
    (``step=None`` switches step-gated hooks off), ``x = x_next + (sigma - sigma_next) * eps``.
    """
    s_in = x_next.new_ones([x_next.shape[0]])
    with hooks.using(step=None):
        d = host.denoise_cond(x_next, sigma_next * s_in)
    return x_next + (sigma - sigma_next) * (x_next - d) / sigma_next


def _detached(feats: dict) -> dict:
    return {k: v.detach() for k, v in _as_fp32(feats).items()}


def _as_fp32(feats: dict) -> dict:
    """Half-precision features upcast for the energies (fp32 and fp64 ones are returned as they are)."""
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in feats.items()}


def _injection(schedule: EditSchedule, trajectory: EditTrajectory, task: EditTask, n: int) -> KVInjection | None:
    if schedule.kv_mode is None or schedule.kv is None:
        return None
    if trajectory.bank is None:
        raise ValueError("the trajectory has no K,V bank: invert with 'record K,V bank' on, or switch visual "
                         "cross-attention off")
    steps = frozenset(schedule.kv.indices(n))
    missing = sorted(s for s in steps if not trajectory.bank.has_step(s))
    if missing:
        raise ValueError(f"the trajectory's K,V bank lacks steps {missing[:5]}{'...' if len(missing) > 5 else ''} "
                         "needed by the visual cross-attention window; record the bank on those steps")
    if schedule.kv_mode == "composite":
        ref = task.reference
        if ref is None or ref.bank is None:
            raise ValueError("composite visual cross-attention needs a reference trajectory with a K,V bank")
        return KVInjection("composite", trajectory.bank, steps, ref_bank=ref.bank,
                           src_mask=task.edit_mask, ref_mask=task.ref_mask_latent)
    return KVInjection(schedule.kv_mode, trajectory.bank, steps)
