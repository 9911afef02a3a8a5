"""Edit tasks for the editing loop: a spec's geometry plus the energy weights (``make_task``).

:func:`make_task` builds the geometry of a spec (:mod:`.specs`, :mod:`.geometry`) for a latent and wraps it
as a :class:`GuidanceTask`, which satisfies the ``EditTask`` protocol of ``samplers/edit.py``:
``edit_mask``, ``sde_mask``, ``ref_mask_latent``, ``reference``, ``edit_first``, ``energy()`` and
``init_latent()``. The spec types and the points parser are re-exported here for convenience.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .geometry import (AppearanceGeometry, DragGeometry, Geometry, MoveGeometry, PasteGeometry, paste_reference)
from .grids import LATENT_STRIDE
from .official import TASK_DEFAULTS, WEIGHT_KEYS
from .specs import (AppearanceSpec, DragSpec, MoveSpec, PasteSpec, Spec, parse_points, rescale_spec,
                    validate_spec)

__all__ = ["GuidanceTask", "make_task", "MoveSpec", "DragSpec", "AppearanceSpec", "PasteSpec", "Spec",
           "parse_points", "validate_spec", "rescale_spec", "paste_reference", "Geometry", "MoveGeometry",
           "DragGeometry", "AppearanceGeometry", "PasteGeometry"]


@dataclass
class GuidanceTask:
    """A task for ``samplers.edit.sample_edit`` (the ``EditTask`` protocol).

    ``weights`` override the official defaults of :data:`~.official.TASK_DEFAULTS`; ``reference`` is the
    reference image's ``EditTrajectory`` (appearance / paste), set by the caller; ``consistent_cos`` maps
    every move term with ``s`` (see :func:`~.energies.move_energy`).
    """

    geometry: Geometry
    weights: dict = field(default_factory=dict)
    reference: Any = None
    consistent_cos: bool = False

    def __post_init__(self):
        t = self.geometry.task
        allowed = WEIGHT_KEYS[t]
        bad = sorted(set(self.weights) - set(allowed))
        if bad:
            raise ValueError(f"{t} takes weights {list(allowed)}, not {bad}")
        w = {k: TASK_DEFAULTS[t][k] for k in allowed}
        for k, v in self.weights.items():
            if v is None or not math.isfinite(float(v)) or float(v) < 0:
                raise ValueError(f"weight {k} must be a finite number >= 0, got {v}")
            w[k] = float(v)
        self.weights = w

    @property
    def task(self) -> str:
        return self.geometry.task

    @property
    def edit_mask(self) -> torch.Tensor:
        return self.geometry.m_edit

    @property
    def sde_mask(self) -> torch.Tensor:
        return self.geometry.sde_mask

    @property
    def edited_region(self) -> torch.Tensor:
        """Where the edit may change the image (latent grid, 1 = free): the edit region and the SDE region, so
        for a move or resize also the cells the object leaves. The background lock and the stability tracking
        hold everything else (locking outside ``edit_mask`` alone would keep the moved object where it was)."""
        return torch.maximum(self.edit_mask, self.sde_mask)

    @property
    def ref_mask_latent(self):
        return self.geometry.ref_mask_latent

    @property
    def edit_first(self) -> bool:
        """Official order of the two backward passes (edit first for move/drag)."""
        return self.geometry.edit_first

    def energy(self, feats, ref_feats, ref2_feats=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E_edit, E_content)`` of the task from the current / source / reference-image features."""
        return self.geometry.energy(feats, ref_feats, ref2_feats, self.weights, self.consistent_cos)

    def init_latent(self, z_T: torch.Tensor, ref_z_T: torch.Tensor | None = None) -> torch.Tensor:
        return self.geometry.init_latent(z_T, ref_z_T)


def make_task(spec: Spec, latent_size, *, reference: Any = None, consistent_cos: bool = False,
              pixels_per_latent: int = LATENT_STRIDE, **weights) -> GuidanceTask:
    """Build the geometry of ``spec`` for a latent of ``latent_size`` (``(h, w)`` or a latent tensor) and wrap
    it as a :class:`GuidanceTask`; ``weights`` (``w_edit=...``) override the official defaults.

    ``pixels_per_latent`` is the autoencoder's downsampling factor (8 for Stable Diffusion; the spec's
    pixels are then those of the image the latent was encoded from, see :func:`~.specs.rescale_spec`)."""
    spec = rescale_spec(spec, pixels_per_latent)
    return GuidanceTask(Geometry.of(spec, latent_size), dict(weights), reference, consistent_cos)
