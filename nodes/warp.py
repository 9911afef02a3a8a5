"""DiffEditor Warp & Inpaint: the fast path of move / resize / drag / paste (warp the object, paint the hole)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..adapters import comfy_jobs
from ..samplers.inpaint import fill_hole, warped_trajectory
from .common import CATEGORY, check_finite, check_model_cfg
from .edit import _check_spec, _mask2d, run_inputs, run_sockets, spec_warp


class DiffEditorWarpInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorWarpInpaint", display_name="DiffEditor Warp & Inpaint", category=f"{CATEGORY}/edit",
            description="Fast move / resize / drag / paste: the object is warped on the latent grid (affine, or a "
                        "thin-plate spline through the drag points) and the model paints only the area it "
                        "uncovered, from the source's inverted trajectory. No guidance, no gradients: "
                        "strength x steps model calls. Its 'start' output previews the warp without any model call.",
            inputs=run_sockets("Trajectory of the source image from DiffEditor Invert (no K,V bank needed).",
                               "A Move/Resize, Drag or Paste spec (appearance is not a warp).") + [
                io.Float.Input("strength", default=0.5, min=0.02, max=1.0, step=0.01,
                               tooltip="Share of the schedule used to paint the uncovered area (0.5 = the last 25 "
                                       "of 50 steps). Higher repaints from more noise."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale while painting. Guidance-distilled Flux.1 "
                                       "dev/schnell: 1 (above 1 is refused; FluxGuidance sets their guidance)."),
                io.Int.Input("seed", default=42, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the fresh noise in the uncovered area."),
                io.Int.Input("grow", default=0, min=0, max=8,
                             tooltip="Also repaint this many latent cells (8 px) around the uncovered area, for "
                                     "softer seams; 0 = only the uncovered area changes."),
                io.Mask.Input("object_mask", optional=True,
                              tooltip="Drag only: the region that moves with the points (paint the object). "
                                      "Default: the drag spec's mask, or a disc around each handle."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The edited latent (raw latent space), ready for VAE Decode or as the "
                                         "source of a further edit."),
                io.Latent.Output("start", display_name="start",
                                 tooltip="Preview: the warped source with the uncovered area filled from its "
                                         "surroundings, before any model call (decode it to see the layout)."),
            ])

    @classmethod
    def execute(cls, model, positive, negative, trajectory, spec, strength=0.5, cfg=4.0, seed=42, grow=0,
                object_mask=None) -> io.NodeOutput:
        model, traj, mid = run_inputs(model, positive, negative, trajectory)
        _check_spec(spec)
        strength = check_finite(strength, "strength", 0.02, 1.0)
        cfg = check_model_cfg(model, check_finite(cfg, "cfg", 0.0, 100.0))
        if spec.reference is not None:
            spec.reference.check_compatible(model_id=mid, sigmas=traj.sigmas, shape=traj.shape,
                                            name="reference trajectory")
        obj = None if object_mask is None else _mask2d(object_mask, "object_mask")
        warp = spec_warp(spec, traj, obj)
        with torch.inference_mode(False):
            start = fill_hole(warped_trajectory(traj, warp, spec.reference).x0, warp.hole)
        out = comfy_jobs.warp_inpaint(model, positive, negative, traj, warp, spec.reference, strength=strength,
                                      cfg=cfg, seed=seed, grow=int(grow))
        latent_out = model.get_model_object("latent_format").process_out
        return io.NodeOutput({"samples": out}, {"samples": latent_out(start.float().cpu())})


WARP_NODES = [DiffEditorWarpInpaint]
