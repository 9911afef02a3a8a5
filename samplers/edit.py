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

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from tqdm.auto import trange

from ..guidance import official as O
from ..guidance.regional import guided_denoised, loss_scale_for, regional_gradient
from .blend import TrajectoryAnchor
from .ddim import ddim_step
from .hooks import EditHooks, EditHost, KVInjection, host_levels
from .param import param_of
from .sampling import NoiseSource, regional_eta
from .schedule import StepWindow, check_latent, check_sigmas, window_steps
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
    """Which mechanisms run on which steps (fractions of the step count); defaults = DiffEditor, move."""

    guidance: tuple[StepWindow, ...] = O.DIFFEDITOR_GUIDANCE
    sde: StepWindow | None = StepWindow(*O.SDE_WINDOW)
    eta_in: float = O.SDE_STRENGTH
    eta_out: float = 0.0
    time_travel: StepWindow | None = StepWindow(*O.TIME_TRAVEL_WINDOW, O.TIME_TRAVEL_EVERY)
    repeats: int = O.TIME_TRAVEL_REPEATS
    kv_mode: str | None = O.TASK_DEFAULTS["move"]["kv_mode"]
    kv: StepWindow | None = O.TASK_DEFAULTS["move"]["kv"]
    energy_scale: float = O.TASK_DEFAULTS["move"]["energy_scale"]  # eta: UI energy x 1000
    kappa: float = O.TASK_DEFAULTS["move"]["kappa"]
    regional: bool = True  # False: both energy gradients everywhere (ablation)
    feature_levels: tuple[int, ...] | None = None  # None: the host's default_levels()

    def __post_init__(self):  # structural invariants; user-facing knobs are checked by EditKnobs
        if self.repeats < 1 or self.energy_scale < 0 or self.kappa < 0 or not (
                0 <= self.eta_in <= 1 and 0 <= self.eta_out <= 1):
            raise ValueError(f"invalid EditSchedule: repeats {self.repeats} (>= 1), energy_scale {self.energy_scale} "
                             f"and kappa {self.kappa} (>= 0), SDE strengths {self.eta_in}, {self.eta_out} (in [0, 1])")


PRESETS: dict[str, EditSchedule] = {
    "DiffEditor": EditSchedule(),
    "DragonDiffusion": EditSchedule(guidance=O.DRAGON_GUIDANCE, sde=None, time_travel=None),
}

# Per-task official differences from the move defaults (one table: guidance/official.py).
TASK_SCHEDULES: dict[str, dict] = {t: {k: d[k] for k in ("kv_mode", "kv", "energy_scale", "kappa")}
                                   for t, d in O.TASK_DEFAULTS.items()}


def preset_schedule(preset: str = "DiffEditor", task: str = "move", **overrides) -> EditSchedule:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if task not in TASK_SCHEDULES:
        raise ValueError(f"task must be one of {sorted(TASK_SCHEDULES)}, got {task!r}")
    return replace(PRESETS[preset], **{**TASK_SCHEDULES[task], **overrides})


# ----------------------------------------------------------------------------------- user-facing knobs
MECHANISM_MODES = ("preset", "on", "off")
KV_MODES = ("auto", "replace", "concat", "composite", "off")


def _number(v, name: str, lo: float, hi: float, hi_open: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if isinstance(v, bool) or not math.isfinite(f) or f < lo or (f >= hi if hi_open else f > hi):
        raise ValueError(f"{name}: expected a finite number in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {v!r}")
    return f


def _choice(v, name: str, options) -> str:
    if v not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {v!r}")
    return v


def _window(a, b, start_name: str, end_name: str) -> tuple[float, float]:
    a, b = _number(a, start_name, 0.0, 1.0), _number(b, end_name, 0.0, 1.0)
    if a >= b:
        raise ValueError(f"{start_name} ({a:g}) must be smaller than {end_name} ({b:g})")
    return a, b


@dataclass(frozen=True)
class EditKnobs:
    """The user-facing knobs of an edit (the DiffEditor Edit nodes and their Options node), validated on
    construction: every error names the knob. The defaults are the official values (guidance/official.py),
    so ``EditKnobs()`` gives exactly the preset.

    * ``guidance_strength``: x the task's official energy (1 = official, 0 = no guidance); ``regional``: the
      regional gradient combination (off = both gradients everywhere, an ablation); the guided steps lie in
      ``[guidance_start, guidance_end)`` (DiffEditor's dense-then-every-2nd pattern kept inside);
    * ``regional_sde`` / ``time_travel``: ``preset`` (as the preset: DiffEditor on with the official values,
      DragonDiffusion off), ``on`` (with the values given here) or ``off``; ``sde_strength_outside`` applies
      whenever the regional SDE is on;
    * ``visual_cross_attention``: ``auto`` (the task's mode and window), ``replace``, ``concat``,
      ``composite`` (on ``[kv_start, kv_end)``) or ``off``.
    """

    guidance_strength: float = 1.0
    regional: bool = True
    guidance_start: float = 0.0
    guidance_end: float = O.GUIDANCE_END
    regional_sde: str = "preset"
    sde_strength: float = O.SDE_STRENGTH
    sde_strength_outside: float = 0.0
    sde_start: float = O.SDE_WINDOW[0]
    sde_end: float = O.SDE_WINDOW[1]
    time_travel: str = "preset"
    time_travel_repeats: int = O.TIME_TRAVEL_REPEATS
    time_travel_start: float = O.TIME_TRAVEL_WINDOW[0]
    time_travel_end: float = O.TIME_TRAVEL_WINDOW[1]
    visual_cross_attention: str = "auto"
    kv_start: float = O.TASK_DEFAULTS["move"]["kv"].start
    kv_end: float = O.TASK_DEFAULTS["move"]["kv"].end

    def __post_init__(self):
        _number(self.guidance_strength, "guidance_strength", 0.0, 1000.0)
        if not isinstance(self.regional, bool):
            raise ValueError(f"regional: expected a boolean, got {self.regional!r}")
        _number(self.guidance_start, "guidance_start", 0.0, 1.0, hi_open=True)
        _window(self.guidance_start, self.guidance_end, "guidance_start", "guidance_end")
        _choice(self.regional_sde, "regional_sde", MECHANISM_MODES)
        _number(self.sde_strength, "sde_strength", 0.0, 1.0)
        _number(self.sde_strength_outside, "sde_strength_outside", 0.0, 1.0)
        _window(self.sde_start, self.sde_end, "sde_start", "sde_end")
        _choice(self.time_travel, "time_travel", MECHANISM_MODES)
        r = self.time_travel_repeats
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r != int(r) or not 1 <= r <= 100:
            raise ValueError(f"time_travel_repeats: expected a whole number of passes in [1, 100] (1 = no "
                             f"repeat), got {r!r}")
        _window(self.time_travel_start, self.time_travel_end, "time_travel_start", "time_travel_end")
        _choice(self.visual_cross_attention, "visual_cross_attention", KV_MODES)
        _window(self.kv_start, self.kv_end, "kv_start", "kv_end")

    def changed(self) -> dict:
        """The knobs that differ from the defaults (the official values)."""
        d = EditKnobs()
        return {k: v for k, v in self.__dict__.items() if v != getattr(d, k)}


def build_schedule(preset: str = "DiffEditor", task: str = "move", knobs: EditKnobs | None = None,
                   **kw) -> EditSchedule:
    """The :class:`EditSchedule` of ``preset`` for ``task`` with the user's :class:`EditKnobs` (or the same
    knobs as keywords). ``EditKnobs()`` (all defaults) gives exactly ``preset_schedule(preset, task)``."""
    if knobs is None:
        knobs = EditKnobs(**kw)
    elif kw:
        knobs = replace(knobs, **kw)
    _choice(preset, "preset", PRESETS)
    base = preset_schedule(preset, task)
    k = knobs
    over: dict = {"regional": k.regional, "energy_scale": base.energy_scale * float(k.guidance_strength)}
    dense = min(base.guidance[0].end, k.guidance_end)
    every = base.guidance[-1].every
    guidance = (StepWindow(0.0, dense),) + ((StepWindow(dense, k.guidance_end, every),)
                                            if k.guidance_end > dense else ())
    if k.guidance_start > 0:
        guidance = tuple(StepWindow(max(w.start, k.guidance_start), w.end, w.every) for w in guidance
                         if w.end > k.guidance_start)
    over["guidance"] = guidance
    if k.regional_sde == "off" or (k.regional_sde == "preset" and base.sde is None):
        over["sde"] = None
    elif k.regional_sde == "preset":
        if k.sde_strength_outside > 0:
            over["eta_out"] = float(k.sde_strength_outside)
    else:  # on, with the values given
        on = k.sde_strength > 0 or k.sde_strength_outside > 0
        over.update(eta_in=float(k.sde_strength), eta_out=float(k.sde_strength_outside),
                    sde=StepWindow(k.sde_start, k.sde_end) if on else None)
    if k.time_travel == "off" or (k.time_travel == "preset" and base.time_travel is None):
        over["time_travel"] = None
    elif k.time_travel == "on":
        reps = int(k.time_travel_repeats)
        over.update(repeats=reps, time_travel=StepWindow(k.time_travel_start, k.time_travel_end,
                                                         O.TIME_TRAVEL_EVERY) if reps > 1 else None)
    if k.visual_cross_attention == "off":
        over["kv_mode"] = None
    elif k.visual_cross_attention != "auto":
        over.update(kv_mode=k.visual_cross_attention, kv=StepWindow(k.kv_start, k.kv_end))
    return replace(base, **over)


# The first Edit-node interface's knobs and their defaults (-1 = auto), kept to migrate old workflows.
LEGACY_KNOBS = dict(energy=-1.0, kappa=-1.0, regional=True, guidance_start=0.0, guidance_end=-1.0, sde_strength=-1.0,
                    sde_strength_outside=0.0, sde_start=O.SDE_WINDOW[0], sde_end=O.SDE_WINDOW[1],
                    time_travel_repeats=-1, time_travel_start=O.TIME_TRAVEL_WINDOW[0],
                    time_travel_end=O.TIME_TRAVEL_WINDOW[1], visual_cross_attention="auto", kv_start=-1.0, kv_end=-1.0)


def legacy_knobs(preset: str, task: str, **old) -> EditKnobs:
    """The :class:`EditKnobs` that reproduce the first Edit-node interface's knobs (every knob on the node,
    ``-1`` = auto; :data:`LEGACY_KNOBS` are its defaults), for migrating old workflows. ``energy`` (official
    UI units) and ``kappa`` become ``guidance_strength``; an auto strength with a custom window becomes
    ``on`` with the preset's strength; exactly the schedule the old interface built."""
    bad = sorted(set(old) - set(LEGACY_KNOBS))
    if bad:
        raise ValueError(f"unknown legacy edit knobs {bad}")
    o = dict(LEGACY_KNOBS, **old)
    base = preset_schedule(preset, task)
    energy, kappa = float(o["energy"]), float(o["kappa"])
    strength = (energy * 1000.0 / base.energy_scale if energy >= 0 else 1.0) * \
        (kappa / base.kappa if kappa >= 0 else 1.0)
    k: dict = dict(guidance_strength=strength, regional=bool(o["regional"]),
                   guidance_start=float(o["guidance_start"]),
                   guidance_end=O.GUIDANCE_END if o["guidance_end"] < 0 else float(o["guidance_end"]))
    s, out, win = float(o["sde_strength"]), float(o["sde_strength_outside"]), (o["sde_start"], o["sde_end"])
    if s < 0 and base.sde is None and out == 0:  # auto, and the preset has no SDE: the window was ignored
        k["regional_sde"] = "preset"
    elif s < 0 and base.sde is not None and tuple(win) == O.SDE_WINDOW:
        k.update(regional_sde="preset", sde_strength_outside=out)
    else:  # (an outside strength switched the SDE on even where the preset has none, at the preset's eta)
        k.update(regional_sde="on", sde_strength=base.eta_in if s < 0 else s, sde_strength_outside=out,
                 sde_start=win[0], sde_end=win[1])
    r, win = int(o["time_travel_repeats"]), (o["time_travel_start"], o["time_travel_end"])
    if r < 0 and (base.time_travel is None or tuple(win) == O.TIME_TRAVEL_WINDOW):
        k["time_travel"] = "preset"
    elif r == 1:
        k["time_travel"] = "off"
    else:
        k.update(time_travel="on", time_travel_repeats=base.repeats if r < 0 else r, time_travel_start=win[0],
                 time_travel_end=win[1])
    mode, ks, ke = o["visual_cross_attention"], float(o["kv_start"]), float(o["kv_end"])
    if mode == "off" or (mode == "auto" and ks < 0 and ke < 0):
        k["visual_cross_attention"] = mode
    else:
        k.update(visual_cross_attention=base.kv_mode if mode == "auto" else mode,
                 kv_start=base.kv.start if ks < 0 else ks, kv_end=base.kv.end if ke < 0 else ke)
        if k["visual_cross_attention"] == base.kv_mode and StepWindow(k["kv_start"], k["kv_end"]) == base.kv:
            k.update(visual_cross_attention="auto", kv_start=EditKnobs.kv_start, kv_end=EditKnobs.kv_end)
    knobs = EditKnobs(**k)
    if knobs.regional_sde == "on" and knobs.sde_strength == base.eta_in and base.sde is not None and \
            (knobs.sde_start, knobs.sde_end) == O.SDE_WINDOW:
        knobs = replace(knobs, regional_sde="preset")
    if knobs.time_travel == "on" and base.time_travel is not None and knobs.time_travel_repeats == base.repeats \
            and (knobs.time_travel_start, knobs.time_travel_end) == O.TIME_TRAVEL_WINDOW:
        knobs = replace(knobs, time_travel="preset")
    return knobs


def resolve_cfg(cfg, task: str) -> float:
    """The edit's classifier-free guidance: ``-1`` = the task's official value (guidance/official.py), else a
    finite number in [0, 100]."""
    if task not in O.TASK_DEFAULTS:
        raise ValueError(f"task must be one of {list(O.TASK_DEFAULTS)}, got {task!r}")
    try:
        c = float(cfg)
    except (TypeError, ValueError):
        raise ValueError(f"cfg: expected a number, got {cfg!r}") from None
    if c == -1.0:
        return O.TASK_DEFAULTS[task]["cfg"]
    if not math.isfinite(c) or c < 0 or c > 100:
        official = ", ".join(f"{t} {d['cfg']:g}" for t, d in O.TASK_DEFAULTS.items())
        raise ValueError(f"cfg: expected -1 (the task's official cfg: {official}) or a number in [0, 100], "
                         f"got {cfg!r}")
    return c


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
    param = param_of(host)
    param.check_sigmas(sigmas)
    trajectory.check_compatible(model_id=model_id, sigmas=sigmas, shape=tuple(x.shape), param=param)
    ref = task.reference
    if ref is not None:
        ref.check_compatible(model_id=model_id, sigmas=sigmas, shape=tuple(x.shape), name="reference trajectory",
                             param=param)
    stats = stats if stats is not None else EditStats()
    n = len(sigmas) - 1
    if seed is None:
        seed = extra_args.get("seed")
    levels = schedule.feature_levels or host_levels(host)
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
                    x0 = guided_denoised(denoised, sigma, grad, schedule.kappa, schedule.energy_scale,
                                         None if param.name == "eps" else param)
                eta = 0.0
                if i in sde_steps and noise is not None:
                    eta = regional_eta(schedule.eta_in, schedule.eta_out, task.sde_mask, x)
                nz = noise(x) if noise is not None and i in sde_steps else None
                x_next = param.step(x, denoised, sigma, sigma_next, eta, nz, denoised_guided=x0)
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
    (``step=None`` switches step-gated hooks off), ``x = x_next + (sigma - sigma_next) * eps``. The same
    first-order step inverts a flow model's Euler step (``eps`` is then the velocity ``(x - D) / sigma``).
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
