"""The pack's own preset, ``DiffEditor+``: per task, the method the edit benchmark measured best.

The published presets (``DiffEditor``, ``DragonDiffusion``) stay exactly what they are; this preset is a
*plan* per task, each choice taken from ``bench/editbench.py`` numbers on scenes that are not the
benchmark's own (``bench/RESULTS.md`` quotes them):

* move, resize, drag, paste — the warp-and-inpaint start (``samplers/inpaint.py``): the object warped on
  the latent grid, only the uncovered area (grown by ``grow`` cells) painted from ``strength`` of the
  schedule, everything else locked to the (warped) inverted trajectory;
* appearance — DiffEditor's guided edit (its task schedule, with the mechanisms in ``overrides``) with the
  background locked to the trajectory outside the edit region.

:func:`sample_pack` runs a plan with the k-diffusion sampler signature, so hosts use it like any sampler.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..guidance.warp import LatentWarp
from .blend import TrajectoryAnchor
from .edit import EditSchedule, preset_schedule, sample_edit
from .inpaint import sample_warp_inpaint
from .trajectory import EditTrajectory

PACK_PRESET = "DiffEditor+"


@dataclass(frozen=True)
class PackPlan:
    """How ``DiffEditor+`` edits one task: ``method`` "warp" (warp-and-inpaint) or "guided" (anchored
    DiffEditor with ``overrides`` of its task schedule)."""

    method: str
    strength: float = 0.5
    grow: int = 0
    overrides: dict = field(default_factory=dict)

    def schedule(self, task: str) -> EditSchedule:
        return preset_schedule("DiffEditor", task, **self.overrides)


#: the measured choices (bench/RESULTS.md, "The pack preset"); task names as in samplers.edit. The warp
#: settings come from ``bench/pack_sweep.py`` on scenes 100-111 (not the benchmark's): strength 0.5 and no
#: grown margin gave the lowest median errors and the highest background PSNR (move 1.23 px / 33.2 dB vs
#: 2.05 px / 30.9 dB with a 1-cell margin; strength 0.7 was no better and costs 40% more calls).
PACK_PLANS: dict[str, PackPlan] = {
    "move": PackPlan("warp", strength=0.5, grow=0),
    "drag": PackPlan("warp", strength=0.5, grow=0),
    "paste": PackPlan("warp", strength=0.5, grow=0),
    "appearance": PackPlan("guided"),
}


def pack_plan(task: str) -> PackPlan:
    if task not in PACK_PLANS:
        raise ValueError(f"the {PACK_PRESET} preset has no plan for task {task!r}; tasks: {sorted(PACK_PLANS)}")
    return PACK_PLANS[task]


@torch.no_grad()
def sample_pack(model, x, sigmas, extra_args=None, callback=None, disable=None, *, host, hooks,
                trajectory: EditTrajectory, task, plan: PackPlan, warp: LatentWarp | None = None,
                seed: int | None = None, model_id: str | None = None, stats=None,
                schedule: EditSchedule | None = None) -> torch.Tensor:
    """Run ``plan`` for ``task`` (a ``GuidanceTask``); a "warp" plan needs the spec's ``warp``. ``schedule``
    replaces a "guided" plan's own (e.g. the user's guidance strength and options on the Edit nodes); the
    background lock is part of the plan either way."""
    if plan.method == "warp":
        if warp is None:
            raise ValueError(f"the {PACK_PRESET} plan for {task.task} warps the object: give its warp")
        return sample_warp_inpaint(model, x, sigmas, extra_args, callback, disable, trajectory=trajectory,
                                   warp=warp, strength=plan.strength, reference=task.reference, seed=seed,
                                   grow=plan.grow, host=host)
    if plan.method == "guided":
        return sample_edit(model, x, sigmas, extra_args, callback, disable, host=host, hooks=hooks,
                           trajectory=trajectory, task=task,
                           schedule=plan.schedule(task.task) if schedule is None else schedule, seed=seed,
                           blend=TrajectoryAnchor(trajectory, task.edited_region), model_id=model_id, stats=stats)
    raise ValueError(f"unknown pack plan method {plan.method!r}")
