"""DiffEditor Invert and DiffEditor Reconstruct."""
from __future__ import annotations

import logging

from comfy_api.latest import io

import comfy.model_management
import comfy.samplers

from ..adapters import comfy_jobs
from ..adapters.comfy_adapter import check_supported, decoder_attention_shapes, model_id
from ..samplers.budget import inversion_model_calls, kv_bank_estimate, mib
from ..samplers.hooks import KVBank, KVBudgetError
from ..guidance.windows import StepWindow
from .common import (CATEGORY, MODEL_FAMILIES, EditTrajectoryType, check_conditioning, check_finite,
                     check_model_cfg, check_trajectory, check_trajectory_model, check_window, latent_samples)

log = logging.getLogger(__name__)


def _bank_budget_error(est, budget_bytes: int, n: int, bank_start, bank_end) -> str:
    fit = est.steps_within(budget_bytes)
    if fit >= 1:
        how = (f"or narrow bank_start/bank_end to at most {fit} of the {n} steps (the window [{bank_start}, "
               f"{bank_end}) records {est.steps})")
    else:
        how = (f"(one recorded step alone needs {mib(est.per_step)}, so narrowing bank_start/bank_end cannot help; "
               "a smaller latent needs less)")
    return (f"kv_budget_mb: the K,V bank of this latent needs {mib(est.bytes)} ({mib(est.per_step)} per recorded "
            f"step) but kv_budget_mb allows {mib(budget_bytes)}; raise kv_budget_mb to {mib(est.bytes)} {how}, "
            "or turn record_kv_bank off")


class DiffEditorInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorInvert",
            display_name="DiffEditor Invert",
            category=f"{CATEGORY}/inversion",
            description="Deterministic DDIM inversion of a latent: records every intermediate latent (and optionally "
                        "the decoder self-attention K,V) as an EDIT_TRAJECTORY for reconstruction and editing.",
            inputs=[
                io.Model.Input("model", tooltip=f"The diffusion model: {MODEL_FAMILIES} (the family is read "
                                                "from the MODEL; the trajectory records it)."),
                io.Conditioning.Input("positive", tooltip="Prompt describing the source image (used for inversion)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt; only used when cfg is not 1."),
                io.Latent.Input("latent", tooltip="The VAE-encoded source image to invert."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Number of DDIM steps (SD UNets: 50; Flux/SD3: about 28); editing must later "
                                     "use the same steps and scheduler."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="ddim_uniform",
                               tooltip="Noise schedule; ddim_uniform reproduces DDIM's timesteps (981, 961, ..., 1 "
                                       "for 50 steps). Flux/SD3: simple (what BasicScheduler 'simple' gives)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance during inversion; 1 (conditional only) inverts "
                                       "most faithfully. Guidance-distilled Flux.1 dev/schnell: 1 (above 1 is "
                                       "refused)."),
                io.Boolean.Input("exact", default=False,
                                 tooltip="Refine every inversion step by fixed-point iteration so that the "
                                         "deterministic sampler reproduces the source almost exactly (more "
                                         "model calls)."),
                io.Int.Input("exact_iters", default=3, min=1, max=50,
                             tooltip="Maximum fixed-point iterations per step when exact is on (one model call "
                                     "each)."),
                io.Boolean.Input("record_kv_bank", default=False,
                                 tooltip="Record the self-attention K,V of the inversion (memory bank for visual "
                                         "cross-attention in editing): the UNet decoder's self-attention, or on "
                                         "Flux/SD3 the image tokens' K,V of the DiT's attention blocks."),
                io.Float.Input("bank_start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="First editing step to record K,V for, as a fraction of the steps "
                                       "(0 = noisiest)."),
                io.Float.Input("bank_end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="End (exclusive) of the recorded steps, as a fraction of the steps."),
                io.Float.Input("kv_budget_mb", default=4096.0, min=1.0, max=262144.0, step=64.0,
                               tooltip="Maximum size of the K,V bank in MiB (two bytes a value, stored on the "
                                       "offload device). Checked from the latent size before any model call: a "
                                       "bank that would not fit is refused with the size it needs."),
            ],
            outputs=[
                EditTrajectoryType.Output("trajectory", display_name="trajectory",
                                          tooltip="Every latent of the inversion, its sigmas, the model identity "
                                                  "and the optional K,V bank."),
                io.Latent.Output("inverted", display_name="inverted",
                                 tooltip="The inverted noise latent z_T (raw latent space). SD UNets: regenerate "
                                         "with a core sampler using add_noise off and the same steps/scheduler. "
                                         "Flux/SD3: a core sampler starts a flow model from (1 - sigma) x the "
                                         "latent, nothing at sigma 1; regenerate with DiffEditor Reconstruct or "
                                         "the DiffEditor Sampler given the trajectory."),
                io.Sigmas.Output("sigmas", display_name="sigmas",
                                 tooltip="The sampling sigmas the trajectory belongs to (descending, ending at 0); "
                                         "connect to SamplerCustomAdvanced."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, scheduler="ddim_uniform", cfg=1.0, exact=False,
                exact_iters=3, record_kv_bank=False, bank_start=0.0, bank_end=1.0,
                kv_budget_mb=4096.0) -> io.NodeOutput:
        check_supported(model, "model")
        check_conditioning(positive, "positive")
        check_conditioning(negative, "negative")
        samples = latent_samples(latent, "latent")
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps: expected at least 1 step, got {steps}")
        if scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise ValueError(f"scheduler: expected one of {list(comfy.samplers.SCHEDULER_NAMES)}, got {scheduler!r}")
        cfg = check_model_cfg(model, check_finite(cfg, "cfg", 0.0, 100.0))
        iters = int(exact_iters) if exact else 0
        if exact and iters < 1:
            raise ValueError(f"exact_iters: expected at least 1 iteration when exact is on, got {exact_iters}")
        bank = None
        if record_kv_bank:
            check_window(bank_start, bank_end, "bank_start", "bank_end")
            budget = check_finite(kv_budget_mb, "kv_budget_mb", 1e-6, None)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
        n = sigmas.shape[0] - 1  # some schedulers (ddim_uniform) give more steps than asked for
        if n < 1:
            raise ValueError(f"scheduler: {scheduler} with {steps} steps gives no sampling step")
        calls = inversion_model_calls(n, iters)
        bank_note = ""
        if record_kv_bank:
            bank_steps = StepWindow(float(bank_start), float(bank_end)).indices(n)
            if not bank_steps:
                raise ValueError(f"bank_start/bank_end: the window [{bank_start}, {bank_end}) selects no step of "
                                 f"{n}; widen it")
            budget_bytes = int(budget * 2 ** 20)
            # the bank's size is known before any model call: refuse what cannot fit now, not minutes later
            est = kv_bank_estimate(decoder_attention_shapes(model, samples.shape[-2:]), len(bank_steps),
                                   batch=samples.shape[0])
            if est.bytes > budget_bytes:
                raise ValueError(_bank_budget_error(est, budget_bytes, n, bank_start, bank_end))
            bank_note = f", K,V bank {mib(est.bytes)} on {len(bank_steps)} steps"
            bank = KVBank(steps=bank_steps, device=comfy.model_management.intermediate_device(),
                          byte_budget=budget_bytes)
        log.info("DiffEditor Invert: up to %d UNet calls on a %dx%d latent (batch %d)%s", calls, samples.shape[-2],
                 samples.shape[-1], samples.shape[0], bank_note)
        try:
            traj, out = comfy_jobs.invert_latent(model, positive, negative, samples, sigmas, cfg=cfg,
                                                 exact_iters=iters, bank=bank)
        except KVBudgetError as e:  # the estimate above should have caught it; name the inputs anyway
            raise ValueError(f"kv_budget_mb: {e} (kv_budget_mb is {budget:g}; bank_start/bank_end select "
                             f"{len(bank.steps)} of {n} steps)") from None
        traj.meta.update({"scheduler": scheduler, "latent_format": type(model.model.latent_format).__name__})
        inverted = {k: v for k, v in latent.items() if k != "noise_mask"}
        inverted["samples"] = out
        return io.NodeOutput(traj, inverted, sigmas.clone())


class DiffEditorReconstruct(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorReconstruct",
            display_name="DiffEditor Reconstruct",
            category=f"{CATEGORY}/inversion",
            description="Deterministic DDIM sampling from a trajectory's inverted latent with its own sigmas: "
                        "reproduces the source image (a check of the inversion) or re-renders it with another "
                        "prompt.",
            inputs=[
                io.Model.Input("model", tooltip=f"The same MODEL the trajectory was inverted with ({MODEL_FAMILIES})."),
                io.Conditioning.Input("positive", tooltip="Prompt for the reconstruction (the inversion prompt "
                                                          "reproduces the source)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt; only used when cfg is not 1."),
                EditTrajectoryType.Input("trajectory", tooltip="Trajectory from DiffEditor Invert."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance; use the inversion's cfg for a faithful "
                                       "reconstruction (guidance-distilled Flux.1 dev/schnell: 1)."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent",
                                      tooltip="The reconstructed latent (raw latent space), ready for VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, trajectory, cfg=1.0) -> io.NodeOutput:
        check_supported(model, "model")
        check_conditioning(positive, "positive")
        check_conditioning(negative, "negative")
        traj = check_trajectory(trajectory, "trajectory")
        cfg = check_model_cfg(model, check_finite(cfg, "cfg", 0.0, 100.0))
        check_trajectory_model(traj, model, model_id(model))
        return io.NodeOutput({"samples": comfy_jobs.reconstruct(model, positive, negative, traj, cfg)})
