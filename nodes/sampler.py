"""DiffEditor Sampler (a SAMPLER for SamplerCustomAdvanced) and DiffEditor Masked Blend (wraps any SAMPLER)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..adapters.comfy_adapter import AnchoredSampler, make_sampler
from ..samplers.blend import BLEND_SCHEDULES, TrajectoryAnchor, blend_window, mask_to_latent
from ..samplers.hooks import KVInjection
from ..samplers.sampling import sample_diffeditor
from ..samplers.schedule import StepWindow
from .common import CATEGORY, EditTrajectoryType, check_finite, check_mask, check_trajectory, check_window


def _diffeditor_engine(trajectory, eta, eta_outside, window, eta_mask, kv_trajectory=None, kv_mode="off"):
    """The engine call of the DiffEditor sampler; the eta MASK is resized once the latent size is known."""

    def engine(model, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None,
               model_id=None):
        m = None
        if eta_mask is not None:
            m = mask_to_latent(eta_mask, tuple(x.shape), name="eta_mask")
        kv = None
        if kv_trajectory is not None and kv_mode != "off":
            kv_trajectory.check_compatible(model_id=model_id, shape=tuple(x.shape), name="kv_trajectory")
            kv = KVInjection(kv_mode, kv_trajectory.bank)
        return sample_diffeditor(model, x, sigmas, extra_args, callback, disable, trajectory=trajectory, eta=eta,
                                 eta_outside=eta_outside, eta_mask=m, eta_window=window, hooks=hooks, host=host,
                                 model_id=model_id, kv=kv, kv_trajectory=kv_trajectory)

    return engine


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
                               tooltip="First step with eta, as a fraction of the steps (DiffEditor: 0.22)."),
                io.Float.Input("eta_end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="End (exclusive) of the steps with eta, as a fraction (DiffEditor: 0.4)."),
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
        engine = _diffeditor_engine(trajectory, eta, eta_outside, window, eta_mask, kv_trajectory, kv_mode)
        return io.NodeOutput(make_sampler(engine, with_model_id=True))


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
