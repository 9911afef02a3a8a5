"""Warp-and-inpaint: move the object with a dense warp, then let the model fill only what it uncovered.

The fast path of the move / resize / drag / paste edits (Inpaint4Drag's idea, on the user's own model and
without an inpainting checkpoint):

1. the source trajectory is warped: every latent of the inversion is read through the warp's backward map
   inside the object's new footprint (nearest cells on the noisy levels, which keeps their noise statistics;
   bilinear on the clean level), so the anchor trajectory is "the source with the object already moved";
2. the cells the object uncovered (the *hole*) start from a fill of their surroundings, noised to the start
   level with fresh noise (so no ghost of the object is regenerated);
3. from ``strength`` of the schedule on, DDIM runs with the latent outside the hole locked to the warped
   trajectory after every step (:class:`~.blend.TrajectoryAnchor`): the model paints the hole in the context
   of the moved object, and every other cell ends exactly on the warped source.

It costs ``round(strength * steps)`` model calls and no gradients. :func:`warped_start` gives the same
anchor's ``z_T`` as the start latent of a guided edit (refinement).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..guidance.warp import LatentWarp
from .blend import TrajectoryAnchor
from .param import param_for
from .sampling import NoiseSource, sample_diffeditor
from .trajectory import EditTrajectory


def warped_trajectory(trajectory: EditTrajectory, warp: LatentWarp,
                      reference: EditTrajectory | None = None) -> EditTrajectory:
    """The trajectory with the object moved: each latent warped inside ``warp.target`` (read from
    ``reference`` for a paste). No K,V bank (it belongs to the unwarped source)."""
    if warp.kind == "paste" and reference is None:
        raise ValueError("reference trajectory: a paste reads the object from the reference image's trajectory")
    if reference is not None:
        reference.check_compatible(sigmas=trajectory.sigmas, shape=trajectory.shape, name="reference trajectory")
    last = len(trajectory.latents) - 1
    lat = [warp.apply(z, None if reference is None else reference.latents[i],
                      mode="bilinear" if i == last else "nearest")
           for i, z in enumerate(trajectory.latents)]
    return dataclasses.replace(trajectory, latents=lat, bank=None, exact_residuals=[],
                               meta=dict(trajectory.meta, warped=warp.kind))


def fill_hole(latent: torch.Tensor, hole: torch.Tensor, max_iters: int = 256) -> torch.Tensor:
    """Fill the ``hole`` cells of ``latent [B, C, h, w]`` from their surroundings: each pass gives every
    unknown cell next to known ones the mean of its known 3x3 neighbours (a membrane fill), until none is left."""
    known = (~hole.to(latent.device)).to(latent.dtype)[None, None]
    if bool(known.all()) or not bool(known.any()):
        return latent
    x = latent * known
    for _ in range(max_iters):
        s = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        c = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        new = (c > 0) & (known == 0)
        if not bool(new.any()):
            break
        x = torch.where(new, s / c.clamp_min(1e-8), x)
        known = torch.maximum(known, new.to(known.dtype))
    return x


def start_index(steps: int, strength: float) -> int:
    """The step the fast path starts from: ``steps - round(strength * steps)`` (strength 1 = from z_T)."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength: expected a number in (0, 1], got {strength}")
    return steps - max(1, int(round(float(strength) * steps)))


def inpaint_start(anchor: EditTrajectory, hole: torch.Tensor, k: int, seed: int | None) -> torch.Tensor:
    """The latent at step ``k``: the anchor's outside the hole; inside, the filled clean latent noised to
    sigma_k with fresh noise."""
    x_k = anchor.at(k)
    s = float(anchor.sigmas[k])
    filled = fill_hole(anchor.x0, hole)
    noised = param_for(anchor.param).noised(filled, NoiseSource(seed)(filled), s)
    m = hole.to(x_k.device)[None, None]
    return torch.where(m, noised, x_k)


@torch.no_grad()
def sample_warp_inpaint(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                        trajectory: EditTrajectory, warp: LatentWarp, strength: float = 0.5,
                        reference: EditTrajectory | None = None, seed: int | None = None,
                        grow: int = 0, host=None, hooks=None) -> torch.Tensor:
    """The warp-and-inpaint edit (k-diffusion convention; ``x`` gives only the shape/device, ``sigmas`` must
    be the trajectory's). ``grow`` widens the painted region by that many latent cells around the hole
    (softer seams; 0 = the hole only). ``host`` (optional) is asked for interruption before every call;
    ``hooks`` is accepted for the host adapters' sampler protocol and not used. Returns the edited latent."""
    trajectory.check_compatible(sigmas=sigmas, shape=tuple(x.shape), name="trajectory")
    if tuple(warp.target.shape) != tuple(trajectory.shape[-2:]):
        raise ValueError(f"the warp is for a {tuple(warp.target.shape)} latent but the trajectory is "
                         f"{tuple(trajectory.shape[-2:])}")
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed") if seed is None else seed
    n = trajectory.steps
    k = start_index(n, strength)
    anchor = warped_trajectory(trajectory, warp, reference)
    hole = paint_region(warp, grow)
    if not bool(hole.any()):  # nothing uncovered (e.g. a paste or a pure enlargement): the warp is the edit
        return anchor.at(n, like=x).expand_as(x).clone()
    part = dataclasses.replace(anchor, latents=anchor.latents[k:], sigmas=anchor.sigmas[k:])
    x_k = inpaint_start(anchor, hole, k, seed).to(device=x.device, dtype=x.dtype).expand_as(x).clone()
    lock = TrajectoryAnchor(part, hole.to(x.device).float()[None, None])
    return sample_diffeditor(model, x_k, sigmas[k:], extra_args, callback, disable, blend=lock, seed=seed,
                             host=host)


def paint_region(warp: LatentWarp, grow: int = 0) -> torch.Tensor:
    """The cells the model paints: the hole, grown by ``grow`` cells but never into the moved object."""
    hole = warp.hole
    if grow > 0 and bool(hole.any()):
        k = 2 * int(grow) + 1
        hole = (F.max_pool2d(hole.float()[None, None], k, 1, int(grow))[0, 0] > 0) & ~warp.target
    return hole


def warped_start(trajectory: EditTrajectory, warp: LatentWarp, reference: EditTrajectory | None = None,
                 seed: int | None = None) -> torch.Tensor:
    """``z_T`` with the object already moved and the hole noised afresh: the start of a guided edit."""
    anchor = warped_trajectory(trajectory, warp, reference)
    return inpaint_start(anchor, warp.hole, 0, seed)
