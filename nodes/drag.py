"""DiffEditor Drag Optimize: DragDiffusion's latent optimisation at one step of an inverted trajectory, or
GoodDrag's alternating drag and denoising (AlDD) over several steps."""
from __future__ import annotations

import comfy.utils
import torch
from comfy_api.latest import io

from ..adapters import comfy_jobs
from ..adapters.comfy_adapter import check_supported, model_id
from ..guidance.grids import check_mask_size
from ..guidance.specs import parse_points
from ..samplers.drag import ALDD_DEFAULTS, strength_step
from .common import (CATEGORY, MODEL_FAMILIES, EditTrajectoryType, check_conditioning, check_finite, check_mask,
                     check_trajectory, check_trajectory_model)


#: Drag Optimize's methods
METHODS = ("DragDiffusion", "AlDD")


class DiffEditorDragOptimize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorDragOptimize", display_name="DiffEditor Drag Optimize", category=f"{CATEGORY}/drag",
            description="DragDiffusion's motion supervision and point tracking: optimises the inverted latent at "
                        "one step so each handle's content moves to its target. Sample on from the returned "
                        "LATENT with the returned SIGMAS (SamplerCustomAdvanced, add_noise off, cfg 1; on Flux a "
                        "BasicGuider with FluxGuidance on the positive). Works with LoRA-tuned MODELs from the "
                        "usual loaders; no LoRA training is needed.",
            inputs=[
                io.Model.Input("model", tooltip=f"The MODEL the trajectory was inverted with ({MODEL_FAMILIES}; on "
                                                "a DiT the motion supervision uses the DiT's block features)."),
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
                io.Combo.Input("method", options=list(METHODS), default="DragDiffusion",
                               tooltip="DragDiffusion: up to 'steps' optimisation steps on one noisy latent. AlDD "
                                       "(GoodDrag): the drag spread over up to "
                                       f"{ALDD_DEFAULTS['drag_steps']} sampling steps, each a few motion-supervision "
                                       "steps then one denoising step, with information-preserving supervision "
                                       "and a point tracker that refuses look-alike distractors; it uses GoodDrag's "
                                       f"r_m {ALDD_DEFAULTS['r_m']}, r_p {ALDD_DEFAULTS['r_p']} and lam "
                                       f"{ALDD_DEFAULTS['lam']:g} (steps, r_m, r_p and lam above are "
                                       "DragDiffusion's; strength and lr apply to both)."),
                io.Mask.Input("mask", optional=True, tooltip="Editable region (1 = may change), at the image size "
                                                             "(8x the latent). Without a mask the regulariser is "
                                                             "off."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The dragged noisy latent (raw latent space) at the step the drag ended."),
                io.Sigmas.Output("sigmas", display_name="sigmas",
                                 tooltip="The remaining sigmas from that step, for SamplerCustomAdvanced."),
                io.String.Output("handles", display_name="handles",
                                 tooltip="Tracked final handle positions in pixels, 'x,y' per line."),
            ])

    @classmethod
    def execute(cls, model, positive, negative, trajectory, points, strength=0.7, steps=80, lr=0.01, r_m=1, r_p=3,
                lam=0.1, method="DragDiffusion", mask=None) -> io.NodeOutput:
        check_supported(model, "model")
        check_conditioning(positive, "positive")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
        traj = check_trajectory(trajectory, "trajectory")
        check_trajectory_model(traj, model, model_id(model))
        H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
        pairs = parse_points(points, W, H)  # messages start with "points:"
        k = strength_step(traj.steps, check_finite(strength, "strength", 0.02, 1.0))
        k = min(k, traj.steps - 1)
        lr = check_finite(lr, "lr", 1e-6, 10.0)
        m = None
        if mask is not None:
            check_mask(mask, "mask")
            try:  # the same size rule as the Edit node: the image size (8 pixels per latent cell)
                m = check_mask_size(mask, "mask", traj.shape, threshold=False)
            except ValueError as e:
                raise ValueError(f"{e}; give the editable-region mask at the size of the trajectory's image") from None
            with torch.inference_mode(False):
                m = m.detach().clone().float()
        handles, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        if method == "AlDD":
            options = {key: v for key, v in ALDD_DEFAULTS.items() if key != "strength"}
            options["lr"] = lr
            pbar = comfy.utils.ProgressBar(options["drag_steps"])
            out, step, final, _ = comfy_jobs.alternating_drag(model, positive, traj, k, handles, targets, m, options,
                                                              lambda i, n: pbar.update_absolute(i, n))
        else:
            options = dict(steps=int(steps), lr=lr, r_m=int(r_m), r_p=int(r_p), lam=check_finite(lam, "lam", 0.0, 1e4))
            pbar = comfy.utils.ProgressBar(int(steps))
            out, final = comfy_jobs.drag(model, positive, traj, k, handles, targets, m, options,
                                         lambda i, n: pbar.update_absolute(i, n))
            step = k
        text = "\n".join(f"{x:.1f},{y:.1f}" for x, y in final)
        return io.NodeOutput({"samples": out}, traj.sigmas[step:].clone(), text)


DRAG_NODES = [DiffEditorDragOptimize]
