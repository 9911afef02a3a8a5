"""The engine's jobs on a ComfyUI MODEL, for the nodes: invert, reconstruct, edit, drag, and the SAMPLERs.

Every node that samples goes through :func:`sample`: ``comfy.sample.sample_custom`` outside inference mode
with plain copies of the conditioning, the standard progress callback (progress bar, latent preview,
interruption) and an engine function wrapped by :func:`~.comfy_adapter.make_sampler`. The engine closures
(what runs inside the sampler) live here too, so the nodes only check inputs and wire values.
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from ..samplers.blend import TrajectoryAnchor
from ..samplers.drag import alternating_drag as run_aldd
from ..samplers.drag import optimize_drag
from ..samplers.edit import sample_edit
from ..samplers.hooks import KVBank, KVInjection
from ..samplers.inpaint import sample_warp_inpaint
from ..samplers.inversion import invert
from ..samplers.pack import sample_pack
from ..samplers.sampling import sample_diffeditor
from ..samplers.schedule import check_latent
from ..samplers.trajectory import EditTrajectory
from .comfy_adapter import cond_fingerprint, make_sampler, model_id
from .comfy_dit import check_distilled_cfg, is_guidance_distilled  # noqa: F401  (re-exported for the nodes)


# ----------------------------------------------------------------------------------------- plumbing
def plain_conditioning(cond):
    """A copy of a CONDITIONING with its tensors cloned (call outside inference mode: normal tensors)."""
    out = []
    for item in cond:
        opts = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in item[1].items()}
        out.append([item[0].clone(), opts])
    return out


def progress_callback(model, steps: int):
    """The standard ComfyUI sampling callback (progress bar, interruption via the hook, latent preview)."""
    import latent_preview

    return latent_preview.prepare_callback(model, steps)


def sample(model, sampler, sigmas: torch.Tensor, positive, negative, cfg: float, *, latent: torch.Tensor | None = None,
           shape=None, seed: int = 0, progress_steps: int | None = None) -> torch.Tensor:
    """The one ``sample_custom`` call of the pack: ``sampler`` (a KSAMPLER) from ``latent`` (or zeros of
    ``shape``) with no added noise, on plain tensors; ``progress_steps`` shows the standard progress bar.
    ``cfg`` above 1 on a guidance-distilled MODEL (Flux) is refused first (a ValueError naming ``cfg``)."""
    check_distilled_cfg(model, cfg)
    with torch.inference_mode(False):
        x0 = latent.clone() if latent is not None else torch.zeros(tuple(shape), dtype=torch.float32)
        callback = None if progress_steps is None else progress_callback(model, progress_steps)
        return comfy.sample.sample_custom(model, torch.zeros_like(x0), cfg, sampler, sigmas.clone(),
                                          plain_conditioning(positive), plain_conditioning(negative), x0,
                                          noise_mask=None, callback=callback,
                                          disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


# -------------------------------------------------------------------------------------------- jobs
def start_latent_for_core(host, x: torch.Tensor, sigma_at, sigma_end) -> torch.Tensor:
    """What an engine run on ``[.., sigma_end]`` must return so that the LATENT ComfyUI hands back is the one a
    core sampler started at ``sigma_at`` (noise added: no) reads as ``x``.

    A flow MODEL (CONST) divides a sampler's result by ``1 - sigma_end`` and multiplies a start latent by
    ``1 - sigma_at``, so ``x`` is rescaled by ``(1 - sigma_end) / (1 - sigma_at)``; at ``sigma_at = 1`` no LATENT
    can carry it (ValueError naming ``strength``). Eps models do neither (``x`` as it is)."""
    if getattr(host, "param", "eps") != "flow":
        return x
    s_at, s_end = float(sigma_at), float(sigma_end)
    if s_at >= 1.0:
        raise ValueError("strength: on a flow model (Flux, SD3) the latent at sigma 1 is pure noise and a core "
                         "sampler cannot start from it (it scales a start latent by 1 - sigma = 0); use a strength "
                         "below 1")
    return x * ((1.0 - s_end) / (1.0 - s_at))


def invert_latent(model, positive, negative, samples: torch.Tensor, sigmas: torch.Tensor, *, cfg: float,
                  exact_iters: int, bank: KVBank | None) -> tuple[EditTrajectory, torch.Tensor]:
    """DDIM-invert a LATENT's samples on ``sigmas``: ``(trajectory, inverted z_T in raw latent space)``."""
    mid, cfp = model_id(model), cond_fingerprint(positive, negative)
    holder = {}

    def engine(model_k, x, sig, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        if getattr(host, "param", "eps") == "flow":
            # the sampler received noise_scaling(sigma_0, 0, latent) = (1 - sigma_0) * latent: nothing of the
            # latent at a flow model's sigma_0 = 1; take it as the guider does (latent_format.process_in)
            x = host.base.process_latent_in(samples.clone().to(x))
        traj = invert(model_k, x, sig, extra_args, model_id=mid, cond_fingerprint=cfp, cfg=cfg,
                      exact_iters=exact_iters, hooks=hooks, bank=bank, callback=callback, disable=disable,
                      interrupt=host.check_interrupt, param=getattr(host, "param", None))
        holder["trajectory"] = traj
        return traj.z_T

    out = sample(model, make_sampler(engine), sigmas, positive, negative, cfg, latent=samples,
                 progress_steps=sigmas.shape[0] - 1)
    traj = holder["trajectory"]
    dev = comfy.model_management.intermediate_device()
    traj.latents = [t.to(dev) for t in traj.latents]
    return traj, out


def reconstruct(model, positive, negative, trajectory: EditTrajectory, cfg: float) -> torch.Tensor:
    """Deterministic DDIM from the trajectory's z_T on its own sigmas."""
    check_trajectory_family(trajectory, model)
    sampler = make_sampler(sample_diffeditor, trajectory=trajectory, with_model_id=True)
    return sample(model, sampler, trajectory.sigmas, positive, negative, cfg, shape=trajectory.shape,
                  progress_steps=trajectory.steps)


def _check_sampler_inputs(x, sigmas, trajectory: EditTrajectory) -> None:
    """Checks of a SAMPLER's inputs that name the SamplerCustomAdvanced sockets (sigmas, latent_image)."""
    try:
        trajectory.check_compatible(sigmas=sigmas, name="the trajectory")
    except ValueError as e:
        raise ValueError(f"sigmas: {e}. Connect the 'sigmas' output of the DiffEditor Invert node that made the "
                         "trajectory") from None
    check_latent(x, "latent_image")
    if tuple(x.shape[-2:]) != tuple(trajectory.shape[-2:]):
        raise ValueError(f"latent_image: it is {x.shape[-2]}x{x.shape[-1]} latent cells but the trajectory is "
                         f"{trajectory.shape[-2]}x{trajectory.shape[-1]}; give the source latent (or an empty "
                         "latent of the same size)")


def check_trajectory_family(trajectory: EditTrajectory, param, name: str = "trajectory") -> None:
    """A trajectory inverted on another model family (an SD1.5 trajectory on Flux, ...) is refused before its
    sigmas or latent are compared, so the message names the real cause. ``param``: the MODEL's
    parameterisation (a host's ``param``, a name, or a MODEL)."""
    if hasattr(param, "get_model_object") or hasattr(param, "diffusion_model"):
        from .comfy_dit import dit_family
        param = "flow" if dit_family(param) is not None else "eps"
    trajectory.check_compatible(param=getattr(param, "param", param), name=name)


def _edit_checked(model, x, sigmas, extra_args=None, callback=None, disable=None, *, trajectory, **kw):
    """``sample_edit`` behind :func:`_check_sampler_inputs`."""
    check_trajectory_family(trajectory, kw.get("host"))
    _check_sampler_inputs(x, sigmas, trajectory)
    return sample_edit(model, x, sigmas, extra_args, callback, disable, trajectory=trajectory, **kw)


def _pack_checked(model, x, sigmas, extra_args=None, callback=None, disable=None, *, trajectory, **kw):
    """``sample_pack`` (the DiffEditor+ preset) behind :func:`_check_sampler_inputs`."""
    check_trajectory_family(trajectory, kw.get("host"))
    _check_sampler_inputs(x, sigmas, trajectory)
    return sample_pack(model, x, sigmas, extra_args, callback, disable, trajectory=trajectory, **kw)


def edit_sampler(trajectory: EditTrajectory, task, schedule, seed: int, blend=None) -> comfy.samplers.KSAMPLER:
    """DiffEditor's editing loop as a SAMPLER (for SamplerCustomAdvanced with the trajectory's sigmas)."""
    return make_sampler(_edit_checked, trajectory=trajectory, task=task, schedule=schedule, seed=seed, blend=blend,
                        with_model_id=True)


def edit(model, positive, negative, trajectory: EditTrajectory, task, schedule, *, cfg: float, seed: int,
         blend=None) -> torch.Tensor:
    """The edited latent (raw latent space) of one DiffEditor edit."""
    check_trajectory_family(trajectory, model)
    sampler = make_sampler(sample_edit, trajectory=trajectory, task=task, schedule=schedule, seed=seed, blend=blend,
                           with_model_id=True)
    return sample(model, sampler, trajectory.sigmas, positive, negative, cfg, shape=trajectory.shape, seed=seed,
                  progress_steps=trajectory.steps)


def warp_inpaint(model, positive, negative, trajectory: EditTrajectory, warp, reference, *, strength: float,
                 cfg: float, seed: int, grow: int) -> torch.Tensor:
    """DiffEditor Warp & Inpaint: the warped source with only the uncovered area painted (raw latent space)."""
    check_trajectory_family(trajectory, model)
    sampler = make_sampler(sample_warp_inpaint, trajectory=trajectory, warp=warp, strength=strength,
                           reference=reference, seed=seed, grow=grow)
    return sample(model, sampler, trajectory.sigmas, positive, negative, cfg, shape=trajectory.shape, seed=seed,
                  progress_steps=trajectory.steps)


def pack_sampler(trajectory: EditTrajectory, task, plan, warp, seed: int, schedule=None) -> comfy.samplers.KSAMPLER:
    """The DiffEditor+ preset's plan as a SAMPLER (for SamplerCustomAdvanced with the trajectory's sigmas)."""
    return make_sampler(_pack_checked, trajectory=trajectory, task=task, plan=plan, warp=warp, seed=seed,
                        schedule=schedule, with_model_id=True)


def edit_pack(model, positive, negative, trajectory: EditTrajectory, task, plan, warp, *, cfg: float, seed: int,
              schedule=None) -> torch.Tensor:
    """The edited latent (raw latent space) of one DiffEditor+ edit (``samplers/pack.py``)."""
    check_trajectory_family(trajectory, model)
    sampler = make_sampler(sample_pack, trajectory=trajectory, task=task, plan=plan, warp=warp, seed=seed,
                           schedule=schedule, with_model_id=True)
    return sample(model, sampler, trajectory.sigmas, positive, negative, cfg, shape=trajectory.shape, seed=seed,
                  progress_steps=trajectory.steps)


def stable_edit(model, positive, negative, trajectory: EditTrajectory, task, schedule, *, cfg: float, seed: int,
                blend=None, plan=None, warp=None, threshold_db: float, max_level: int):
    """An edit with stability tracking (``samplers/stability.py``): ``(latent, StabilityReport)``.

    The drift is measured in raw latent space against the trajectory's source latent outside the task's edit
    region; each back-off re-runs the edit (the DiffEditor+ warp plans ignore the gentler schedule: they
    already lock the background, so only the last level, the input kept outside, changes them)."""
    from ..samplers.stability import stable_edit as track

    source = model.get_model_object("latent_format").process_out(trajectory.x0.float().cpu())

    def run(sched, lock):
        if plan is not None:
            return edit_pack(model, positive, negative, trajectory, task, plan, warp, cfg=cfg, seed=seed,
                             schedule=sched if plan.method == "guided" else None).float().cpu()
        anchor = TrajectoryAnchor(trajectory, task.edited_region) if lock else blend
        return edit(model, positive, negative, trajectory, task, sched, cfg=cfg, seed=seed, blend=anchor).float().cpu()

    return track(run, schedule, source, task.edited_region.cpu(), threshold_db=threshold_db, max_level=max_level)


def alternating_drag(model, positive, trajectory: EditTrajectory, start: int, handles, targets, mask, options: dict,
                     progress: Callable[[int, int], None]):
    """GoodDrag's AlDD from ``start`` on: ``(latent at the step it stopped, that step, tracked handles, info)``."""
    result: dict = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None,
               model_id=None):
        x_out, step, final, info = run_aldd(host, trajectory, trajectory.sigmas.to(x), start, handles, targets,
                                            mask=mask, image_size=(8 * x.shape[-2], 8 * x.shape[-1]),
                                            progress=progress, like=x, **options)
        result.update(step=step, final=final, info=info)
        return start_latent_for_core(host, x_out, trajectory.sigmas[step], sigmas[-1])

    out = sample(model, make_sampler(engine, with_model_id=True), trajectory.sigmas[start:start + 2], positive,
                 positive, 1.0, shape=trajectory.shape)
    return out, result["step"], result["final"], result["info"]


def diffeditor_sampler(trajectory, eta, eta_outside, window, eta_mask, kv_trajectory=None,
                       kv_mode: str = "off") -> comfy.samplers.KSAMPLER:
    """The DiffEditor Sampler's SAMPLER; the eta MASK is resized once the latent size is known."""
    from ..samplers.blend import mask_to_latent

    def engine(model, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None,
               model_id=None):
        m = None if eta_mask is None else mask_to_latent(eta_mask, tuple(x.shape), name="eta_mask")
        kv = None
        if kv_trajectory is not None and kv_mode != "off":
            kv_trajectory.check_compatible(model_id=model_id, shape=tuple(x.shape), name="kv_trajectory")
            kv = KVInjection(kv_mode, kv_trajectory.bank)
        return sample_diffeditor(model, x, sigmas, extra_args, callback, disable, trajectory=trajectory, eta=eta,
                                 eta_outside=eta_outside, eta_mask=m, eta_window=window, hooks=hooks, host=host,
                                 model_id=model_id, kv=kv, kv_trajectory=kv_trajectory)

    return make_sampler(engine, with_model_id=True)


def drag(model, positive, trajectory: EditTrajectory, step: int, handles, targets, mask, options: dict,
         progress: Callable[[int, int], None]):
    """DragDiffusion's optimisation of the trajectory's latent at ``step``: ``(latent, tracked handles)``."""
    result: dict = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None,
               model_id=None):
        start_latent_for_core(host, x[:0], sigmas[0], sigmas[-1])  # refuse sigma 1 on a flow model up front
        x_k = trajectory.at(step, like=x).expand_as(x).clone()
        x_opt, final, info = optimize_drag(host, x_k, sigmas[0], sigmas[1], handles, targets, mask=mask,
                                           image_size=(8 * x.shape[-2], 8 * x.shape[-1]), progress=progress,
                                           **options)
        result.update(final=final, info=info)
        return start_latent_for_core(host, x_opt, sigmas[0], sigmas[-1])

    out = sample(model, make_sampler(engine, with_model_id=True), trajectory.sigmas[step:step + 2], positive,
                 positive, 1.0, shape=trajectory.shape)
    return out, result["final"]
