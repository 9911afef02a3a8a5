"""Shared node plumbing: the custom socket type, input validation and conversions (no math)."""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from ..samplers.trajectory import EditTrajectory

CATEGORY = "DiffEditor"

#: what the MODEL inputs of the editing nodes accept (tooltips and messages)
MODEL_FAMILIES = "SD1.x/SD2.x/SDXL UNets and Flux.1/SD3.x DiTs"

#: An inverted trajectory (every latent of a DDIM inversion, its sigmas, model identity, optional K,V bank).
EditTrajectoryType = io.Custom("DIFFEDITOR_TRAJECTORY")
EDIT_TRAJECTORY = EditTrajectoryType


def latent_samples(latent, name: str = "latent") -> torch.Tensor:
    """``latent["samples"]`` after checking it is a finite ``[B, C, H, W]`` tensor."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{name}: expected a LATENT (a dict with a 'samples' tensor), got {type(latent).__name__}")
    s = latent["samples"]
    if s.ndim != 4:
        raise ValueError(f"{name}: expected an image latent [batch, channels, height, width], got shape "
                         f"{tuple(s.shape)} (video/audio latents are not supported)")
    if s.shape[0] < 1 or s.shape[-1] < 1 or s.shape[-2] < 1:
        raise ValueError(f"{name}: the latent is empty (shape {tuple(s.shape)})")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name}: the latent contains NaN or infinite values; check the VAE encode or the "
                         "sampler that produced it")
    return s


def check_conditioning(cond, name: str) -> None:
    if not isinstance(cond, list) or len(cond) == 0:
        raise ValueError(f"{name}: expected a CONDITIONING (a non-empty list of [tensor, options]), got "
                         f"{type(cond).__name__}")
    for item in cond:
        if not isinstance(item, (list, tuple)) or not item or not isinstance(item[0], torch.Tensor):
            raise ValueError(f"{name}: malformed CONDITIONING entry; connect the output of a text encode node")
        if not torch.isfinite(item[0]).all():
            raise ValueError(f"{name}: the conditioning contains NaN or infinite values")


def check_trajectory(trajectory, name: str = "trajectory") -> EditTrajectory:
    if not isinstance(trajectory, EditTrajectory):
        raise ValueError(f"{name}: expected an EDIT_TRAJECTORY from DiffEditor Invert, got {type(trajectory).__name__}")
    return trajectory


def check_mask(mask, name: str = "mask") -> torch.Tensor:
    """A finite, non-empty MASK (``[H, W]`` or ``[B, H, W]``, 1 = region)."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a MASK tensor, got {type(mask).__name__}")
    if mask.ndim not in (2, 3) or mask.shape[-1] < 1 or mask.shape[-2] < 1:
        raise ValueError(f"{name}: expected a MASK of shape [height, width] or [batch, height, width], got "
                         f"{tuple(mask.shape)}")
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name}: the mask contains NaN or infinite values")
    if float(mask.max()) <= 0:
        raise ValueError(f"{name}: the mask is empty (all zeros); paint the region to edit (white = 1)")
    return mask


def check_finite(value: float, name: str, lo: float | None = None, hi: float | None = None) -> float:
    v = float(value)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else ""
        raise ValueError(f"{name}: expected a finite number{rng}, got {value}")
    return v


def check_window(start: float, end: float, start_name: str, end_name: str) -> None:
    check_finite(start, start_name, 0.0, 1.0)
    check_finite(end, end_name, 0.0, 1.0)
    if start >= end:
        raise ValueError(f"{start_name} ({start}) must be smaller than {end_name} ({end})")



# ------------------------------------------------------------------------------------------ model families
# The families are the adapter's (adapters/comfy_dit.py); these helpers only phrase the nodes' checks.
def dit_family(model) -> str | None:
    """``"flux"`` or ``"sd3"`` when ``model`` (a MODEL or its BaseModel) is a supported Flux.1 / SD3.x DiT."""
    from ..adapters.comfy_dit import dit_family as family

    return family(model)


def model_param(model) -> str:
    """The parameterisation name (``samplers/param.py``) the engine runs this MODEL with: "flow" on a Flux/SD3
    DiT, "eps" on an SD UNet (the host the sampler picks); a trajectory records the one it was inverted with."""
    return "flow" if dit_family(model) is not None else "eps"


def check_trajectory_model(trajectory: EditTrajectory, model, mid: str, name: str = "trajectory") -> None:
    """The trajectory was inverted with this MODEL: its family first (an SD1.5 trajectory into a Flux edit says
    so), then the model identity."""
    trajectory.check_compatible(param=model_param(model), name=name)
    trajectory.check_compatible(model_id=mid, name=name)


def refuse_dit(model, input_name: str, why: str) -> None:
    """Raise a ValueError naming ``input_name`` when ``model`` is a Flux/SD3 DiT (``why``: what the node needs
    that a DiT has not), for the nodes that only work on SD UNets."""
    from ..adapters.comfy_dit import FAMILY_LABELS

    family = dit_family(model)
    if family is not None:
        raise ValueError(f"{input_name}: the MODEL is a {FAMILY_LABELS[family]} DiT; this node works on "
                         f"SD1.x/SD2.x/SDXL UNets only: {why}")


def guidance_distilled(model) -> bool:
    """Whether ``model`` is guidance-distilled (Flux.1 dev/schnell: it samples with cfg 1 and takes its
    guidance from the conditioning, FluxGuidance)."""
    from ..adapters.comfy_dit import is_guidance_distilled

    return bool(is_guidance_distilled(model))


def check_model_cfg(model, cfg: float, name: str = "cfg") -> float:
    """A resolved cfg (a number, -1 already resolved) checked against the MODEL before any model call: above 1
    on a guidance-distilled model is refused (the adapter's rule and message, naming ``name``)."""
    from ..adapters.comfy_dit import check_distilled_cfg

    c = float(cfg)
    check_distilled_cfg(model, c, name)
    return c
