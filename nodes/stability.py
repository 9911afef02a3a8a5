"""DiffEditor Stable Edit: an edit with stability tracking, for multi-turn editing (seed paper 000, Algorithm 4)."""
from __future__ import annotations

from comfy_api.latest import io

from ..adapters import comfy_jobs
from ..samplers.pack import PACK_PRESET
from ..samplers.stability import LEVELS
from .common import CATEGORY, check_finite
from .edit import _main_inputs, cfg_input, edit_inputs, run_sockets

_LADDER = "; ".join(f"{i} {name}" for i, name in enumerate(LEVELS))


class DiffEditorStableEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorStableEdit", display_name="DiffEditor Stable Edit", category=f"{CATEGORY}/edit",
            description="DiffEditor Edit that checks its own result: it measures how much the edit changed the "
                        "image outside the edited region (PSNR against its input) and, below the threshold, "
                        "runs it again less aggressively, up to max_level. Chain several (each fed by the "
                        "previous result, inverted again) for multi-turn editing without the background "
                        "drifting away. The report says what it did.",
            inputs=run_sockets("Trajectory of this turn's input image (DiffEditor Invert of the previous turn's "
                               "result).", "What to edit in this turn (a DiffEditor spec or Canvas node).")
            + [
                cfg_input(),
                io.Float.Input("threshold_db", default=35.0, min=0.0, max=100.0, step=0.5,
                               tooltip="Least PSNR (dB, on the latent) the result must keep against its input "
                                       "outside the edited region; below it the edit is re-run less aggressively. "
                                       "Higher = stricter. 35 (default): on the multi-turn benchmark five chained "
                                       "DiffEditor moves kept 3.8 dB more of the original background than without "
                                       "tracking; at 30 it gained nothing."),
                io.Int.Input("max_level", default=3, min=0, max=len(LEVELS) - 1,
                             tooltip=f"How far the back-off may go ({_LADDER}); 0 = never re-run. Level 3 copies "
                                     "the input outside the edited region (grown by one latent cell)."),
            ] + _main_inputs(),
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The accepted edit (raw latent space), ready for VAE Decode or the next "
                                         "turn's DiffEditor Invert."),
                io.String.Output("report", display_name="report",
                                 tooltip="Each attempt's back-off level and outside PSNR, and which was kept."),
            ])

    @classmethod
    def execute(cls, model, positive, negative, trajectory, spec, cfg=-1.0, threshold_db=35.0, max_level=3,
                preset=PACK_PRESET, seed=42, guidance_strength=1.0, keep_background=False,
                options=None) -> io.NodeOutput:
        threshold_db = check_finite(threshold_db, "threshold_db", 0.0, 1000.0)
        if int(max_level) != max_level or not 0 <= int(max_level) < len(LEVELS):
            raise ValueError(f"max_level: expected a whole number in [0, {len(LEVELS) - 1}], got {max_level!r}")
        model, traj, cfg, p = edit_inputs(model, positive, negative, trajectory, spec, cfg, preset,
                                          guidance_strength, keep_background, options)
        out, report = comfy_jobs.stable_edit(model, positive, negative, traj, p.task, p.schedule, cfg=cfg, seed=seed,
                                             blend=p.blend, plan=p.plan, warp=p.warp, threshold_db=threshold_db,
                                             max_level=int(max_level))
        return io.NodeOutput({"samples": out}, report.text())


STABILITY_NODES = [DiffEditorStableEdit]
