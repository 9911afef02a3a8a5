"""DiffEditor Sampler (a SAMPLER for SamplerCustomAdvanced) and DiffEditor Masked Blend (wraps any SAMPLER)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..adapters import comfy_jobs
from ..adapters.comfy_adapter import AnchoredSampler
from ..guidance import official as O
from ..samplers.blend import BLEND_SCHEDULES, TrajectoryAnchor, blend_window, mask_to_latent
from ..guidance.windows import StepWindow
from .common import CATEGORY, EditTrajectoryType, check_finite, check_mask, check_trajectory, check_window


class DiffEditorSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorSampler",
            display_name="DiffEditor Sampler",
            category=f"{CATEGORY}/sampling",
            description="DDIM sampler for SamplerCustomAdvanced with regional stochasticity (eta inside a mask, "
                        "another eta outside) on a window of steps; optionally starts from an inverted trajectory.",
            inputs=[
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="DDIM eta inside the eta mask (everywhere when no mask): 0 = deterministic "
                                       "ODE, 1 = DDPM-like noise."),
                io.Float.Input("eta_outside", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="DDIM eta outside the eta mask (ignored without a mask)."),
                io.Float.Input("eta_start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="First step with eta, as a fraction of the steps (DiffEditor: "
                                       f"{O.SDE_WINDOW[0]:g})."),
                io.Float.Input("eta_end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="End (exclusive) of the steps with eta, as a fraction (DiffEditor: "
                                       f"{O.SDE_WINDOW[1]:g})."),
                EditTrajectoryType.Input("trajectory", optional=True,
                                         tooltip="Optional trajectory from DiffEditor Invert: sampling starts from "
                                                 "its inverted latent z_T. Use the same sigmas and latent size."),
                io.Mask.Input("eta_mask", optional=True,
                              tooltip="Optional region (1 = inside) where eta applies; image or latent size."),
                EditTrajectoryType.Input("kv_trajectory", optional=True,
                                         tooltip="Optional trajectory (K,V bank on) whose decoder self-attention "
                                                 "K,V are shared while sampling, MasaCtrl-style (e.g. after DiffEditor "
                                                 "Drag Optimize); the sigmas may be a tail of its schedule."),
                io.Combo.Input("kv_mode", options=["off", "replace", "concat"], default="replace", optional=True,
                               tooltip="How kv_trajectory's K,V are used: replace the current ones (MasaCtrl) or "
                                       "be appended to them."),
            ],
            outputs=[io.Sampler.Output("sampler", display_name="sampler",
                                       tooltip="SAMPLER for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, eta=0.0, eta_outside=0.0, eta_start=0.0, eta_end=1.0, trajectory=None,
                eta_mask=None, kv_trajectory=None, kv_mode="replace") -> io.NodeOutput:
        eta = check_finite(eta, "eta", 0.0, 1.0)
        eta_outside = check_finite(eta_outside, "eta_outside", 0.0, 1.0)
        check_window(eta_start, eta_end, "eta_start", "eta_end")
        if trajectory is not None:
            check_trajectory(trajectory, "trajectory")
        if eta_mask is not None:
            check_mask(eta_mask, "eta_mask")
            if trajectory is not None:  # the latent size is known: check the mask now
                mask_to_latent(eta_mask, trajectory.shape, name="eta_mask")
        if kv_trajectory is not None:
            check_trajectory(kv_trajectory, "kv_trajectory")
            if kv_mode not in ("off", "replace", "concat"):
                raise ValueError(f"kv_mode: expected off, replace or concat, got {kv_mode!r}")
            if kv_mode != "off" and kv_trajectory.bank is None:
                raise ValueError("kv_trajectory: it has no K,V bank; enable 'record_kv_bank' in DiffEditor Invert")
        window = StepWindow(float(eta_start), float(eta_end))
        return io.NodeOutput(comfy_jobs.diffeditor_sampler(trajectory, eta, eta_outside, window, eta_mask,
                                                           kv_trajectory, kv_mode))


class DiffEditorMaskedBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorMaskedBlend",
            display_name="DiffEditor Masked Blend",
            category=f"{CATEGORY}/sampling",
            description="Wraps any SAMPLER so that the latent outside the mask follows the inverted trajectory "
                        "(the unedited region reproduces the source with no leakage).",
            inputs=[
                io.Sampler.Input("sampler", tooltip="Any SAMPLER (KSamplerSelect, DiffEditor Sampler, ...)."),
                EditTrajectoryType.Input("trajectory", tooltip="Trajectory from DiffEditor Invert; the sampling "
                                                               "sigmas must be the trajectory's."),
                io.Mask.Input("mask", tooltip="Editable region (1 = edit); outside it the latent follows the "
                                              "trajectory. Image size (8x the latent) or latent size."),
                io.Float.Input("feather_px", default=8.0, min=0.0, max=256.0, step=1.0,
                               tooltip="Gaussian feathering of the mask edge, in mask pixels."),
                io.Combo.Input("schedule", options=list(BLEND_SCHEDULES), default="every step",
                               tooltip="When to lock: every step, the steps until the fraction, or the last "
                                       "fraction of the steps."),
                io.Float.Input("fraction", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps for 'until fraction' / 'last fraction'."),
            ],
            outputs=[io.Sampler.Output("blended_sampler", display_name="sampler",
                                       tooltip="The wrapped SAMPLER, to SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, sampler, trajectory, mask, feather_px=8.0, schedule="every step",
                fraction=1.0) -> io.NodeOutput:
        import comfy.samplers

        if not isinstance(sampler, comfy.samplers.Sampler):
            raise ValueError(f"sampler: expected a SAMPLER, got {type(sampler).__name__}")
        traj = check_trajectory(trajectory, "trajectory")
        check_mask(mask, "mask")
        feather = check_finite(feather_px, "feather_px", 0.0, 4096.0)
        if schedule not in BLEND_SCHEDULES:
            raise ValueError(f"schedule: expected one of {list(BLEND_SCHEDULES)}, got {schedule!r}")
        frac = check_finite(fraction, "fraction", 0.0, 1.0)
        window = blend_window(schedule, frac)
        if not window.indices(traj.steps):
            raise ValueError(f"fraction: '{schedule}' with fraction {frac} selects none of the {traj.steps} steps; "
                             "raise the fraction")
        with torch.inference_mode(False):
            m = mask_to_latent(mask.clone(), traj.shape, name="mask", feather_px=feather)
        return io.NodeOutput(AnchoredSampler(sampler, TrajectoryAnchor(traj, m, window), name="trajectory"))
