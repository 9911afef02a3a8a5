"""DiffEditor Drag Optimize: DragDiffusion-style latent optimisation at one step of an inverted trajectory."""
from __future__ import annotations

import comfy.utils
import torch
from comfy_api.latest import io

from ..adapters import comfy_jobs
from ..adapters.comfy_adapter import check_supported, model_id
from ..guidance.grids import check_mask_size
from ..guidance.specs import parse_points
from ..samplers.drag import strength_step
from .common import CATEGORY, EditTrajectoryType, check_conditioning, check_finite, check_mask, check_trajectory


class DiffEditorDragOptimize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorDragOptimize", display_name="DiffEditor Drag Optimize", category=f"{CATEGORY}/drag",
            description="DragDiffusion's motion supervision and point tracking: optimises the inverted latent at "
                        "one step so each handle's content moves to its target. Sample on from the returned "
                        "LATENT with the returned SIGMAS (SamplerCustomAdvanced, add_noise off, cfg 1). Works with "
                        "LoRA-tuned MODELs from the usual loaders; no LoRA training is needed.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL the trajectory was inverted with."),
                io.Conditioning.Input("positive", tooltip="The prompt (DragDiffusion uses no CFG during the drag)."),
                io.Conditioning.Input("negative", tooltip="Unused by the optimisation (cfg 1); kept for wiring."),
                EditTrajectoryType.Input("trajectory", tooltip="Trajectory of the source image from DiffEditor "
                                                               "Invert."),
                io.String.Input("points", multiline=True, default="128,256->192,256",
                                tooltip="Handle -> target pairs in pixels: 'x1,y1->x2,y2; ...' (one pair per line "
                                        "or separated by ';'; JSON [[[x1,y1],[x2,y2]], ...] also works)."),
                io.Float.Input("strength", default=0.7, min=0.02, max=1.0, step=0.01,
                               tooltip="How deep in the trajectory to optimise (official 0.7 = step 15 of 50)."),
                io.Int.Input("steps", default=80, min=1, max=1000, tooltip="Maximum optimisation steps (official 80)."),
                io.Float.Input("lr", default=0.01, min=0.0001, max=1.0, step=0.001,
                               tooltip="Adam learning rate (official 0.01)."),
                io.Int.Input("r_m", default=1, min=0, max=8, tooltip="Motion-supervision patch radius (official 1)."),
                io.Int.Input("r_p", default=3, min=1, max=16, tooltip="Point-tracking window radius (official 3)."),
                io.Float.Input("lam", default=0.1, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight keeping the area outside the mask unchanged (official 0.1)."),
                io.Mask.Input("mask", optional=True, tooltip="Editable region (1 = may change), at the image size "
                                                             "(8x the latent). Without a mask the regulariser is "
                                                             "off."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The optimised noisy latent at the drag step (raw latent space)."),
                io.Sigmas.Output("sigmas", display_name="sigmas",
                                 tooltip="The remaining sigmas from the drag step, for SamplerCustomAdvanced."),
                io.String.Output("handles", display_name="handles",
                                 tooltip="Tracked final handle positions in pixels, 'x,y' per line."),
            ])

    @classmethod
    def execute(cls, model, positive, negative, trajectory, points, strength=0.7, steps=80, lr=0.01, r_m=1, r_p=3,
                lam=0.1, mask=None) -> io.NodeOutput:
        check_supported(model, "model")
        check_conditioning(positive, "positive")
        traj = check_trajectory(trajectory, "trajectory")
        traj.check_compatible(model_id=model_id(model), name="trajectory")
        H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
        pairs = parse_points(points, W, H)  # messages start with "points:"
        k = strength_step(traj.steps, check_finite(strength, "strength", 0.02, 1.0))
        k = min(k, traj.steps - 1)
        m = None
        if mask is not None:
            check_mask(mask, "mask")
            try:  # the same size rule as the Edit node: the image size (8 pixels per latent cell)
                m = check_mask_size(mask, "mask", traj.shape, threshold=False)
            except ValueError as e:
                raise ValueError(f"{e}; give the editable-region mask at the size of the trajectory's image") from None
            with torch.inference_mode(False):
                m = m.detach().clone().float()
        options = dict(steps=int(steps), lr=check_finite(lr, "lr", 1e-6, 10.0), r_m=int(r_m), r_p=int(r_p),
                       lam=check_finite(lam, "lam", 0.0, 1e4))
        pbar = comfy.utils.ProgressBar(int(steps))
        out, final = comfy_jobs.drag(model, positive, traj, k, [p[0] for p in pairs], [p[1] for p in pairs], m,
                                     options, lambda i, n: pbar.update_absolute(i, n))
        text = "\n".join(f"{x:.1f},{y:.1f}" for x, y in final)
        return io.NodeOutput({"samples": out}, traj.sigmas[k:].clone(), text)


DRAG_NODES = [DiffEditorDragOptimize]
