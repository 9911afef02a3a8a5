"""DiffEditor editing nodes: task specs, the Edit SAMPLER (for SamplerCustomAdvanced) and the one-node Edit."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.sample
import torch
from comfy_api.latest import io

from ..adapters.comfy_adapter import check_supported, make_sampler, model_id
from ..guidance.energies import TASK_DEFAULTS
from ..guidance.tasks import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, make_task, parse_points
from ..guidance.specs_io import schedule_from_knobs
from ..samplers.blend import TrajectoryAnchor
from ..samplers.edit import KV_MODES, PRESETS, sample_edit
from ..samplers.trajectory import EditTrajectory
from .common import (CATEGORY, EditTrajectoryType, check_conditioning, check_finite, check_mask, check_trajectory,
                     disable_pbar, plain_conditioning, progress_callback)

EditSpecType = io.Custom("DIFFEDITOR_EDIT_SPEC")


@dataclass
class EditSpecValue:
    """What flows through a DIFFEDITOR_EDIT_SPEC socket: the task, its pixel-space spec, a reference trajectory."""

    task: str
    spec: object
    reference: EditTrajectory | None = None

    def __deepcopy__(self, memo):
        return self


def _mask2d(mask, name: str) -> torch.Tensor:
    m = check_mask(mask, name)
    if m.ndim == 3:
        if m.shape[0] != 1:
            raise ValueError(f"{name}: one mask is expected, got a batch of {m.shape[0]}")
        m = m[0]
    with torch.inference_mode(False):
        return m.detach().clone().float()


def _spec_output(task, spec, reference=None):
    return io.NodeOutput(EditSpecValue(task, spec, reference))


_SPEC_OUT = EditSpecType.Output("spec", display_name="spec",
                                tooltip="Edit spec for DiffEditor Edit / DiffEditor Edit Sampler.")


class DiffEditorMoveSpec(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorMoveSpec", display_name="DiffEditor Move/Resize Spec",
            category=f"{CATEGORY}/edit/specs",
            description="Move and/or resize an object. Scaling is about the object's own centre. Content moved past "
                        "the image border is cut (no wrap-around); moving the object entirely off the canvas is an "
                        "error. The shift is rounded to whole latent cells (8 px).",
            inputs=[
                io.Mask.Input("mask", tooltip="The object to move (1 = object), at the image size."),
                io.Int.Input("dx", default=64, min=-8192, max=8192, step=8,
                             tooltip="Horizontal shift in pixels (positive = right), rounded to 8 px. Content "
                                     "moved past the border is cut; moving the object entirely off the "
                                     "canvas is an error."),
                io.Int.Input("dy", default=0, min=-8192, max=8192, step=8,
                             tooltip="Vertical shift in pixels (positive = down), rounded to 8 px. Content "
                                     "moved past the border is cut; moving the object entirely off the "
                                     "canvas is an error."),
                io.Float.Input("scale", default=1.0, min=0.1, max=10.0, step=0.05,
                               tooltip="Resize factor about the object's own centre (1 = keep the size)."),
                io.Mask.Input("ref_mask", optional=True,
                              tooltip="Optional region whose appearance should fill the vacated area "
                                      "(default: everything that is neither the object nor its target)."),
            ],
            outputs=[_SPEC_OUT])

    @classmethod
    def execute(cls, mask, dx=64, dy=0, scale=1.0, ref_mask=None) -> io.NodeOutput:
        m = _mask2d(mask, "mask")
        scale = check_finite(scale, "scale", 0.1, 10.0)
        ref = None if ref_mask is None else _mask2d(ref_mask, "ref_mask")
        return _spec_output("move", MoveSpec(m, float(dx), float(dy), scale=scale, ref_mask=ref))


class DiffEditorDragSpec(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorDragSpec", display_name="DiffEditor Drag Spec", category=f"{CATEGORY}/edit/specs",
            description="Drag content from handle points to target points.",
            inputs=[
                io.String.Input("points", multiline=True, default="128,256->192,256",
                                tooltip="Handle -> target pairs in pixels: 'x1,y1->x2,y2; x3,y3->x4,y4' (one pair "
                                        "per line or separated by ';'). Points must lie inside the image."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional editable region (1 = may change); outside it the content is kept. "
                                      "Without a mask the whole image may change."),
            ],
            outputs=[_SPEC_OUT])

    @classmethod
    def execute(cls, points="", mask=None) -> io.NodeOutput:
        m = None if mask is None else _mask2d(mask, "mask")
        size = (None, None) if m is None else (m.shape[-1], m.shape[-2])  # the mask fixes the image size
        try:
            pairs = parse_points(points, *size)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("points") else f"points: {msg}") from None
        if not pairs:
            raise ValueError("points: give at least one 'x1,y1->x2,y2' pair")
        return _spec_output("drag", DragSpec(pairs, mask=m))


class DiffEditorAppearanceSpec(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorAppearanceSpec", display_name="DiffEditor Appearance Spec",
            category=f"{CATEGORY}/edit/specs",
            description="Give an object of the base image the appearance of an object in a reference image.",
            inputs=[
                io.Mask.Input("mask", tooltip="The object in the base image (1 = object)."),
                EditTrajectoryType.Input("reference", tooltip="DiffEditor Invert trajectory of the reference "
                                                              "image (same model, size and steps, K,V bank on)."),
                io.Mask.Input("ref_mask", tooltip="The object in the reference image whose appearance is used."),
            ],
            outputs=[_SPEC_OUT])

    @classmethod
    def execute(cls, mask, reference, ref_mask) -> io.NodeOutput:
        ref = check_trajectory(reference, "reference")
        return _spec_output("appearance", AppearanceSpec(_mask2d(mask, "mask"), _mask2d(ref_mask, "ref_mask")), ref)


class DiffEditorPasteSpec(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorPasteSpec", display_name="DiffEditor Paste Spec", category=f"{CATEGORY}/edit/specs",
            description="Paste an object from a reference image into the base image at an offset (scaled about "
                        "its own centre; invert the reference image at its original scale).",
            inputs=[
                EditTrajectoryType.Input("reference", tooltip="DiffEditor Invert trajectory of the reference image "
                                                              "(same model, size and steps, K,V bank on)."),
                io.Mask.Input("mask", tooltip="The object in the reference image (1 = object)."),
                io.Int.Input("dx", default=0, min=-8192, max=8192, step=8,
                             tooltip="Horizontal offset in pixels from its place in the reference image "
                                     "(positive = right). Content past the border is cut; entirely off the "
                                     "canvas is an error."),
                io.Int.Input("dy", default=0, min=-8192, max=8192, step=8,
                             tooltip="Vertical offset in pixels from its place in the reference image "
                                     "(positive = down). Content past the border is cut; entirely off the "
                                     "canvas is an error."),
                io.Float.Input("scale", default=1.0, min=0.1, max=1.5, step=0.05,
                               tooltip="Resize factor about the object's centre (official range 0-1.5)."),
            ],
            outputs=[_SPEC_OUT])

    @classmethod
    def execute(cls, reference, mask, dx=0, dy=0, scale=1.0) -> io.NodeOutput:
        ref = check_trajectory(reference, "reference")
        scale = check_finite(scale, "scale", 0.1, 1.5)
        return _spec_output("paste", PasteSpec(_mask2d(mask, "mask"), float(dx), float(dy), scale=scale), ref)


# ------------------------------------------------------------------------------------------ edit knobs
def _knob_inputs() -> list:
    auto = "; -1 = the preset/task default"
    return [
        io.Combo.Input("preset", options=list(PRESETS), default="DiffEditor",
                       tooltip="DiffEditor: regional SDE + time travel + sparse guidance (paper). DragonDiffusion: "
                               "guidance on every step below 60%, no SDE, no time travel (unless set below)."),
        io.Int.Input("seed", default=42, min=0, max=0xffffffffffffffff, control_after_generate=True,
                     tooltip="Seed of the regional SDE noise (official: 42)."),
        io.Float.Input("energy", default=-1.0, min=-1.0, max=10.0, step=0.1,
                       tooltip="Guidance energy in the official UI units: the engine scale is energy x 1000 "
                               "(move 0.5, drag 2, appearance 2, paste 1.5); 0 = no guidance" + auto + "."),
        io.Float.Input("kappa", default=-1.0, min=-1.0, max=1.0, step=0.01,
                       tooltip="Guidance step size factor kappa (move 0.08, drag/appearance/paste 0.04); the "
                               "effective strength is energy x 1000 x kappa" + auto + "."),
        io.Boolean.Input("regional", default=True,
                         tooltip="Regional gradient combination (edit gradient inside the edit region, content "
                                 "gradient outside). Off = both everywhere (ablation)."),
        io.Float.Input("guidance_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps before which there is no guidance (official 0)."),
        io.Float.Input("guidance_end", default=-1.0, min=-1.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps after which guidance stops (official 0.6; DiffEditor "
                               "guides every step below 0.2, then every 2nd)" + auto + "."),
        io.Float.Input("sde_strength", default=-1.0, min=-1.0, max=1.0, step=0.01,
                       tooltip="Regional SDE eta inside the edit region (official 0.4; 0 = off; DragonDiffusion "
                               "preset: off)" + auto + "."),
        io.Float.Input("sde_strength_outside", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Regional SDE eta outside the edit region (official 0 = deterministic there)."),
        io.Float.Input("sde_start", default=0.22, min=0.0, max=1.0, step=0.01,
                       tooltip="Regional SDE window start, fraction of the steps (official 0.22 = step 11 of 50)."),
        io.Float.Input("sde_end", default=0.4, min=0.0, max=1.0, step=0.01,
                       tooltip="Regional SDE window end, exclusive (official 0.4 = step 20 of 50)."),
        io.Int.Input("time_travel_repeats", default=-1, min=-1, max=10,
                     tooltip="Passes per time-travel step (official 3; 1 = off; DragonDiffusion preset: off)"
                             + auto + "."),
        io.Float.Input("time_travel_start", default=0.44, min=0.0, max=1.0, step=0.01,
                       tooltip="Time-travel window start (official 0.44 = step 22 of 50; every 2nd step)."),
        io.Float.Input("time_travel_end", default=0.6, min=0.0, max=1.0, step=0.01,
                       tooltip="Time-travel window end, exclusive (official 0.6 = step 30 of 50)."),
        io.Combo.Input("visual_cross_attention", options=list(KV_MODES), default="auto",
                       tooltip="Inject the source's self-attention K,V: replace (move), concat (drag), composite "
                               "(appearance, paste); auto = the task's; off = none (needs no K,V bank)."),
        io.Float.Input("kv_start", default=-1.0, min=-1.0, max=1.0, step=0.01,
                       tooltip="First step of visual cross-attention as a fraction (move/drag 0.1, "
                               "appearance/paste 0)" + auto + "."),
        io.Float.Input("kv_end", default=-1.0, min=-1.0, max=1.0, step=0.01,
                       tooltip="End (exclusive) of visual cross-attention (move/drag 1.0, appearance/paste "
                               "0.72)" + auto + "."),
        io.Boolean.Input("keep_background", default=False,
                         tooltip="Lock the latent outside the edit region to the source's inverted trajectory "
                                 "after every step, so the background is exactly the source's reconstruction "
                                 "(not in the official code; off = official behaviour, where CFG lets the "
                                 "background drift)."),
    ]


def _auto(v):
    """-1 (any negative) = auto -> None."""
    return None if v is None or v < 0 else v


def _schedule(spec, preset, energy=-1.0, kappa=-1.0, regional=True, guidance_start=0.0, guidance_end=-1.0,
              sde_strength=-1.0, sde_strength_outside=0.0, sde_start=0.22, sde_end=0.4, time_travel_repeats=-1,
              time_travel_start=0.44, time_travel_end=0.6, visual_cross_attention="auto", kv_start=-1.0,
              kv_end=-1.0):
    _check_spec(spec)
    for v, n in ((energy, "energy"), (kappa, "kappa"), (guidance_start, "guidance_start"),
                 (guidance_end, "guidance_end"), (sde_strength, "sde_strength"),
                 (sde_strength_outside, "sde_strength_outside"), (sde_start, "sde_start"), (sde_end, "sde_end"),
                 (time_travel_start, "time_travel_start"), (time_travel_end, "time_travel_end"),
                 (kv_start, "kv_start"), (kv_end, "kv_end")):
        check_finite(v, n)
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {list(PRESETS)}, got {preset!r}")
    if visual_cross_attention not in KV_MODES:
        raise ValueError(f"visual_cross_attention: expected one of {list(KV_MODES)}, got {visual_cross_attention!r}")
    try:
        return schedule_from_knobs(
            preset, spec.task, energy_ui=_auto(energy), kappa=_auto(kappa), regional=bool(regional),
            guidance_start=float(guidance_start), guidance_end=_auto(guidance_end),
            sde_strength=_auto(sde_strength), sde_strength_outside=float(sde_strength_outside),
            sde_window=(sde_start, sde_end), time_travel_repeats=_auto(time_travel_repeats),
            time_travel_window=(time_travel_start, time_travel_end), kv_mode=visual_cross_attention,
            kv_window=(_auto(kv_start), _auto(kv_end)))
    except ValueError as e:
        raise ValueError(f"edit settings: {e}") from None


def _anchor(trajectory: EditTrajectory, task, keep_background) -> TrajectoryAnchor | None:
    """``keep_background``: the trajectory anchor outside the task's edit region (else None)."""
    if not isinstance(keep_background, bool):
        raise ValueError(f"keep_background: expected a boolean, got {keep_background!r}")
    return TrajectoryAnchor(trajectory, task.edit_mask) if keep_background else None


def _check_spec(spec) -> None:
    if not isinstance(spec, EditSpecValue):
        raise ValueError("spec: expected a DIFFEDITOR_EDIT_SPEC from a DiffEditor spec node, got "
                         f"{type(spec).__name__}")


def _task(spec, trajectory: EditTrajectory, mid: str):
    """Build the task geometry for the trajectory's latent (pixel size = 8 x latent size)."""
    _check_spec(spec)
    if spec.reference is not None:
        spec.reference.check_compatible(model_id=mid, sigmas=trajectory.sigmas, shape=trajectory.shape,
                                        name="reference trajectory")
        if spec.reference.bank is None:
            raise ValueError("reference trajectory: it has no K,V bank; enable 'record_kv_bank' in its DiffEditor "
                             "Invert node (appearance and paste compose both images' K,V)")
    with torch.inference_mode(False):
        try:
            return make_task(spec.spec, tuple(trajectory.shape[-2:]), reference=spec.reference)
        except ValueError as e:
            raise ValueError(f"spec: {e}") from None


def _sample_edit_checked(model, x, sigmas, extra_args=None, callback=None, disable=None, *, trajectory, **kw):
    """``sample_edit`` behind input checks that name the SamplerCustomAdvanced sockets (sigmas, latent_image)."""
    try:
        trajectory.check_compatible(sigmas=sigmas, name="the trajectory")
    except ValueError as e:
        raise ValueError(f"sigmas: {e}. Connect the 'sigmas' output of the DiffEditor Invert node that made the "
                         "trajectory") from None
    if tuple(x.shape[-2:]) != tuple(trajectory.shape[-2:]):
        raise ValueError(f"latent_image: it is {x.shape[-2]}x{x.shape[-1]} latent cells but the trajectory is "
                         f"{trajectory.shape[-2]}x{trajectory.shape[-1]}; give the source latent (or an empty "
                         "latent of the same size)")
    return sample_edit(model, x, sigmas, extra_args, callback, disable, trajectory=trajectory, **kw)


def _check_bank(trajectory: EditTrajectory, schedule) -> None:
    if schedule.kv_mode is not None and trajectory.bank is None:
        raise ValueError("trajectory: it has no K,V bank but visual cross-attention is on; enable 'record_kv_bank' "
                         "in DiffEditor Invert, or set visual_cross_attention to off")


class DiffEditorEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorEditSampler", display_name="DiffEditor Edit Sampler", category=f"{CATEGORY}/edit",
            description="DiffEditor's editing loop as a SAMPLER for SamplerCustomAdvanced: use the trajectory's "
                        "SIGMAS (from DiffEditor Invert), any guider (its cfg applies), and add_noise off.",
            inputs=[EditTrajectoryType.Input("trajectory", tooltip="Trajectory of the source image (DiffEditor "
                                                                   "Invert, K,V bank on for visual cross-attention)."),
                    EditSpecType.Input("spec", tooltip="What to edit (a DiffEditor spec node).")] + _knob_inputs(),
            outputs=[io.Sampler.Output("sampler", display_name="sampler",
                                       tooltip="SAMPLER for SamplerCustomAdvanced (with the trajectory's SIGMAS).")])

    @classmethod
    def execute(cls, trajectory, spec, preset="DiffEditor", seed=42, keep_background=False,
                **knobs) -> io.NodeOutput:
        traj = check_trajectory(trajectory, "trajectory")
        schedule = _schedule(spec, preset, **knobs)
        _check_bank(traj, schedule)
        task = _task(spec, traj, None)
        return io.NodeOutput(make_sampler(_sample_edit_checked, trajectory=traj, task=task, schedule=schedule,
                                          seed=seed, blend=_anchor(traj, task, keep_background),
                                          with_model_id=True))


class DiffEditorEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorEdit", display_name="DiffEditor Edit", category=f"{CATEGORY}/edit",
            description="One-node DiffEditor edit: guided, regional-SDE, time-travel sampling from the source's "
                        "inverted trajectory with visual cross-attention; returns the edited latent.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL the trajectory was inverted with (SD1.x/SD2/SDXL)."),
                io.Conditioning.Input("positive", tooltip="Prompt describing the edited image (usually the "
                                                          "inversion prompt)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (the unconditional branch of CFG)."),
                EditTrajectoryType.Input("trajectory", tooltip="Trajectory of the source image from DiffEditor "
                                                               "Invert (K,V bank on for visual cross-attention)."),
                EditSpecType.Input("spec", tooltip="What to edit (a DiffEditor spec node)."),
                io.Float.Input("cfg", default=-1.0, min=-1.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale; -1 = the task's official value (move, drag, "
                                       "paste 4; appearance 5)."),
            ] + _knob_inputs(),
            outputs=[io.Latent.Output("latent", display_name="latent",
                                      tooltip="The edited latent (raw latent space), ready for VAE Decode.")])

    @classmethod
    def execute(cls, model, positive, negative, trajectory, spec, cfg=-1.0, preset="DiffEditor", seed=42,
                keep_background=False, **knobs) -> io.NodeOutput:
        check_supported(model, "model")
        model = model.clone()  # the run installs its hooks on copies of model_options only
        check_conditioning(positive, "positive")
        check_conditioning(negative, "negative")
        traj = check_trajectory(trajectory, "trajectory")
        mid = model_id(model)
        traj.check_compatible(model_id=mid, name="trajectory")
        schedule = _schedule(spec, preset, **knobs)
        _check_bank(traj, schedule)
        task = _task(spec, traj, mid)
        blend = _anchor(traj, task, keep_background)
        cfg = TASK_DEFAULTS[spec.task]["cfg"] if cfg < 0 else check_finite(cfg, "cfg", 0.0, 100.0)
        with torch.inference_mode(False):
            zeros = torch.zeros(traj.shape, dtype=torch.float32)
            out = comfy.sample.sample_custom(
                model, zeros, cfg, make_sampler(sample_edit, trajectory=traj, task=task, schedule=schedule,
                                                seed=seed, blend=blend, with_model_id=True),
                traj.sigmas.clone(), plain_conditioning(positive), plain_conditioning(negative), zeros.clone(),
                noise_mask=None, callback=progress_callback(model, traj.steps), disable_pbar=disable_pbar(),
                seed=seed)
        return io.NodeOutput({"samples": out})


EDIT_NODES = [DiffEditorMoveSpec, DiffEditorDragSpec, DiffEditorAppearanceSpec, DiffEditorPasteSpec,
              DiffEditorEditSampler, DiffEditorEdit]
