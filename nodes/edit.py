"""DiffEditor editing nodes: task specs, the optional Edit Options, the Edit SAMPLER (for
SamplerCustomAdvanced) and the one-node Edit.

The Edit nodes show the preset and the knobs artists touch (cfg, seed, guidance strength, keep background);
everything else is on DiffEditor Edit Options, whose defaults are the official values (no -1 "auto"
sentinels there: ``preset`` / ``auto`` are named choices). Old workflows: ``python workflows/build.py
--migrate old.json`` rewrites them (workflows/migrate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..adapters import comfy_jobs
from ..adapters.comfy_adapter import check_supported, model_id
from ..guidance import official as O
from ..guidance.geometry import paste_reference
from ..guidance.grids import LATENT_STRIDE
from ..guidance.specs import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, parse_points
from ..guidance.tasks import make_task
from ..guidance.warp import warp_for_spec
from ..samplers.blend import TrajectoryAnchor
from ..samplers.edit import KV_MODES, MECHANISM_MODES, PRESETS, EditKnobs, build_schedule, resolve_cfg
from ..samplers.pack import PACK_PLANS, PACK_PRESET, pack_plan
from ..samplers.trajectory import EditTrajectory
from .common import (CATEGORY, MODEL_FAMILIES, EditTrajectoryType, check_conditioning, check_finite, check_mask,
                     check_model_cfg, check_trajectory, check_trajectory_model, guidance_distilled)

EditSpecType = io.Custom("DIFFEDITOR_EDIT_SPEC")
EditOptionsType = io.Custom("DIFFEDITOR_EDIT_OPTIONS")


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
                                        "per line or separated by ';'; JSON [[[x1,y1],[x2,y2]], ...] also works). "
                                        "Points must lie inside the image."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional region (1 = in). The published presets (DiffEditor, "
                                      "DragonDiffusion) edit only inside it and keep the content outside; "
                                      "DiffEditor+ warps this region with the points, so it is what moves and "
                                      "may land outside it (without a mask: a disc around each handle). Without "
                                      "a mask the published presets may change the whole image."),
            ],
            outputs=[_SPEC_OUT])

    @classmethod
    def execute(cls, points="", mask=None) -> io.NodeOutput:
        m = None if mask is None else _mask2d(mask, "mask")
        size = (None, None) if m is None else (m.shape[-1], m.shape[-2])  # the mask fixes the image size
        return _spec_output("drag", DragSpec(parse_points(points, *size), mask=m))  # errors start "points:"


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
            description="Paste an object from a reference image into the base image at an offset. To resize the "
                        "object, rescale the reference image and its mask with DiffEditor Paste Reference before "
                        "VAE Encode / Invert, and connect its mask here.",
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
            ],
            outputs=[_SPEC_OUT])

    @classmethod
    def execute(cls, reference, mask, dx=0, dy=0) -> io.NodeOutput:
        ref = check_trajectory(reference, "reference")
        return _spec_output("paste", PasteSpec(_mask2d(mask, "mask"), float(dx), float(dy)), ref)


class DiffEditorPasteReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorPasteReference", display_name="DiffEditor Paste Reference (scale)",
            category=f"{CATEGORY}/edit/specs",
            description="Resize the object to paste: rescales the reference image and its object mask about the "
                        "object's centre, as the official paste does before inverting the reference. Encode and "
                        "invert the returned image, and give the returned mask to DiffEditor Paste Spec.",
            inputs=[
                io.Image.Input("image", tooltip="The reference image (before VAE Encode)."),
                io.Mask.Input("mask", tooltip="The object in the reference image (1 = object), at the image size."),
                io.Float.Input("scale", default=1.0, min=0.1, max=1.5, step=0.05,
                               tooltip="Resize factor of the object about its own centre (official range up to "
                                       "1.5; 1 = keep the size). Areas with no source become black."),
            ],
            outputs=[io.Image.Output("scaled_image", display_name="image",
                                     tooltip="The rescaled reference image: VAE Encode it and invert it with "
                                             "DiffEditor Invert (K,V bank on) for the Paste Spec's reference."),
                     io.Mask.Output("scaled_mask", display_name="mask",
                                    tooltip="The rescaled object mask, for DiffEditor Paste Spec's mask.")])

    @classmethod
    def execute(cls, image, mask, scale=1.0) -> io.NodeOutput:
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise ValueError(f"image: expected an IMAGE [batch, height, width, channels], got "
                             f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
        m = _mask2d(mask, "mask")
        scale = check_finite(scale, "scale", 0.1, 1.5)
        try:
            img, m2 = paste_reference(image, m, scale, "mask", channels_last=True)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(("mask", "scale")) else f"image: {msg}") from None
        return io.NodeOutput(img, m2.float()[None])


# ----------------------------------------------------------------------------------------- options
class EditOptionsValue(dict):
    """What flows through a DIFFEDITOR_EDIT_OPTIONS socket: the options by name (validated)."""

    def __deepcopy__(self, memo):
        return self


_K = EditKnobs()  # the official values: the defaults of every option
_KV = "; ".join(f"{t}: {d['kv_mode']} {d['kv'].start:g}-{d['kv'].end:g}" for t, d in O.TASK_DEFAULTS.items())


class DiffEditorEditOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        frac = dict(min=0.0, max=1.0, step=0.01)
        return io.Schema(
            node_id="DiffEditorEditOptions", display_name="DiffEditor Edit Options", category=f"{CATEGORY}/edit",
            description="Every mechanism of the edit, for DiffEditor Edit / Edit Sampler's optional 'options' "
                        "input. The defaults are the official values: leave what you do not change. Windows are "
                        f"fractions of the steps ({_K.sde_start:g} = step {round(50 * _K.sde_start)} of 50).",
            inputs=[
                io.Boolean.Input("regional", default=_K.regional,
                                 tooltip="Regional gradient combination (edit gradient inside the edit region, "
                                         "content gradient outside). Off = both everywhere (ablation)."),
                io.Float.Input("guidance_start", default=_K.guidance_start, **frac,
                               tooltip="No guidance before this fraction of the steps (official 0)."),
                io.Float.Input("guidance_end", default=_K.guidance_end, **frac,
                               tooltip=f"Guidance stops at this fraction of the steps (official {_K.guidance_end:g} in "
                                       f"both presets; DiffEditor guides every step below {O.GUIDANCE_DENSE_END:g}, "
                                       "then every 2nd)."),
                io.Combo.Input("regional_sde", options=list(MECHANISM_MODES), default=_K.regional_sde,
                               tooltip=f"Regional SDE: preset = as the preset (DiffEditor: eta {_K.sde_strength:g} "
                                       f"inside the edit region on {_K.sde_start:g}-{_K.sde_end:g}; DragonDiffusion: "
                                       "off); on = with the values below; off."),
                io.Float.Input("sde_strength", default=_K.sde_strength, **frac,
                               tooltip=f"SDE eta inside the edit region when regional_sde is on (official "
                                       f"{_K.sde_strength:g})."),
                io.Float.Input("sde_strength_outside", default=_K.sde_strength_outside, **frac,
                               tooltip="SDE eta outside the edit region whenever the regional SDE runs "
                                       "(official 0 = deterministic there)."),
                io.Float.Input("sde_start", default=_K.sde_start, **frac,
                               tooltip=f"Regional SDE window start when regional_sde is on (official "
                                       f"{_K.sde_start:g})."),
                io.Float.Input("sde_end", default=_K.sde_end, **frac,
                               tooltip=f"Regional SDE window end, exclusive, when regional_sde is on (official "
                                       f"{_K.sde_end:g})."),
                io.Combo.Input("time_travel", options=list(MECHANISM_MODES), default=_K.time_travel,
                               tooltip=f"Time travel (repeat a guided step after rolling it back): preset = as the "
                                       f"preset (DiffEditor: {_K.time_travel_repeats} passes every 2nd step on "
                                       f"{_K.time_travel_start:g}-{_K.time_travel_end:g}; DragonDiffusion: off); on = "
                                       "with the values below; off."),
                io.Int.Input("time_travel_repeats", default=_K.time_travel_repeats, min=1, max=10,
                             tooltip=f"Passes per time-travel step when time_travel is on (official "
                                     f"{_K.time_travel_repeats}; 1 = no repeat)."),
                io.Float.Input("time_travel_start", default=_K.time_travel_start, **frac,
                               tooltip=f"Time-travel window start when time_travel is on (official "
                                       f"{_K.time_travel_start:g})."),
                io.Float.Input("time_travel_end", default=_K.time_travel_end, **frac,
                               tooltip=f"Time-travel window end, exclusive, when time_travel is on (official "
                                       f"{_K.time_travel_end:g})."),
                io.Combo.Input("visual_cross_attention", options=list(KV_MODES), default=_K.visual_cross_attention,
                               tooltip="Inject the source's self-attention K,V: auto = the task's mode and window "
                                       f"({_KV}); replace / concat / composite on the window below; off = none "
                                       "(needs no K,V bank)."),
                io.Float.Input("kv_start", default=_K.kv_start, **frac,
                               tooltip="First step of visual cross-attention (fraction) for a mode other than "
                                       "auto."),
                io.Float.Input("kv_end", default=_K.kv_end, **frac,
                               tooltip="End (exclusive) of visual cross-attention for a mode other than auto."),
            ],
            outputs=[EditOptionsType.Output("options", display_name="options",
                                            tooltip="For the 'options' input of DiffEditor Edit / Edit Sampler.")])

    @classmethod
    def execute(cls, **options) -> io.NodeOutput:
        EditKnobs(**options)  # every error names the option
        return io.NodeOutput(EditOptionsValue(options))


# ------------------------------------------------------------------------------------------ edit nodes
#: the Edit nodes' presets: the pack's own first (the default), then the published ones, unchanged
PRESET_CHOICES = [PACK_PRESET, *PRESETS]


def _main_inputs() -> list:
    warp_tasks = "/".join(t for t, p in PACK_PLANS.items() if p.method == "warp")
    return [
        io.Combo.Input("preset", options=PRESET_CHOICES, default=PACK_PRESET,
                       tooltip=f"{PACK_PRESET} (the pack's, default): per task the method the edit benchmark "
                               f"measured best: {warp_tasks} warp the object and paint only the area it uncovered "
                               "(fast, background kept); appearance runs DiffEditor's guided edit with the "
                               "background locked. DiffEditor: the paper (regional SDE + time travel + sparse "
                               "guidance). DragonDiffusion: guidance on every step below 60%, no SDE, no time "
                               "travel."),
        io.Int.Input("seed", default=42, min=0, max=0xffffffffffffffff, control_after_generate=True,
                     tooltip="Seed of the regional SDE noise (official: 42) and of the fresh noise DiffEditor+ "
                             "paints the uncovered area with."),
        io.Float.Input("guidance_strength", default=1.0, min=0.0, max=20.0, step=0.05,
                       tooltip="How hard the edit is pushed: x the task's official guidance (1 = official: energy "
                               + ", ".join(f"{d['energy_scale'] / 1000:g} for {t}" for t, d in O.TASK_DEFAULTS.items())
                               + " in the official UI's units); 0 = no guidance. DiffEditor+ moves, drags and "
                               "pastes take no guidance (use DiffEditor Warp & Inpaint for their knobs)."),
        io.Boolean.Input("keep_background", default=False,
                         tooltip="Lock the latent outside the edit region to the source's inverted trajectory "
                                 "after every step, so the background is exactly the source's reconstruction "
                                 "(not in the official code; off = official behaviour, where CFG lets the "
                                 f"background drift). {PACK_PRESET} always keeps the background."),
        EditOptionsType.Input("options", optional=True,
                              tooltip="Optional DiffEditor Edit Options (SDE, time travel, visual "
                                      "cross-attention, windows). Without it: the preset's official values. "
                                      f"{PACK_PRESET} applies them to its guided (appearance) edit."),
    ]


def _check_spec(spec) -> None:
    if not isinstance(spec, EditSpecValue):
        raise ValueError("spec: expected a DIFFEDITOR_EDIT_SPEC from a DiffEditor spec node, got "
                         f"{type(spec).__name__}")


def _check_preset(preset) -> None:
    if preset not in PRESET_CHOICES:
        raise ValueError(f"preset: expected one of {PRESET_CHOICES}, got {preset!r}")


def _schedule(spec, preset, guidance_strength=1.0, options=None):
    """The schedule of the preset for the spec's task with the user's strength and options (DiffEditor+ guides
    with DiffEditor's schedule)."""
    _check_spec(spec)
    _check_preset(preset)
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"options: expected DIFFEDITOR_EDIT_OPTIONS from DiffEditor Edit Options, got "
                         f"{type(options).__name__}")
    knobs = EditKnobs(guidance_strength=guidance_strength, **(options or {}))
    return build_schedule("DiffEditor" if preset == PACK_PRESET else preset, spec.task, knobs)


def _anchor(trajectory: EditTrajectory, task, keep_background) -> TrajectoryAnchor | None:
    """``keep_background``: the trajectory anchor outside the task's edit region (else None)."""
    if not isinstance(keep_background, bool):
        raise ValueError(f"keep_background: expected a boolean, got {keep_background!r}")
    return TrajectoryAnchor(trajectory, task.edited_region) if keep_background else None


def _task(spec, trajectory: EditTrajectory, mid: str, need_bank: bool = True):
    """Build the task geometry for the trajectory's latent (pixel size = 8 x latent size); ``need_bank``: the
    reference trajectory must carry a K,V bank (guided appearance and paste compose both images' K,V)."""
    _check_spec(spec)
    if spec.reference is not None:
        spec.reference.check_compatible(model_id=mid, sigmas=trajectory.sigmas, shape=trajectory.shape,
                                        name="reference trajectory")
        if need_bank and spec.reference.bank is None:
            raise ValueError("reference trajectory: it has no K,V bank; enable 'record_kv_bank' in its DiffEditor "
                             "Invert node (appearance and paste compose both images' K,V)")
    with torch.inference_mode(False):
        try:
            return make_task(spec.spec, tuple(trajectory.shape[-2:]), reference=spec.reference)
        except ValueError as e:
            raise ValueError(f"spec: {e}") from None


def spec_warp(spec, trajectory: EditTrajectory, object_mask=None):
    """The latent warp of a move/resize, drag or paste spec on the trajectory's grid; errors name the input."""
    _check_spec(spec)
    if spec.task not in ("move", "drag", "paste"):
        raise ValueError(f"spec: a warp moves objects (move/resize, drag, paste specs), not {spec.task}")
    with torch.inference_mode(False):
        try:
            return warp_for_spec(spec.spec, tuple(trajectory.shape[-2:]), LATENT_STRIDE, object_mask=object_mask)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.split(":")[0] in ("object_mask", "points", "mask", "spec")
                             else f"spec: {msg}") from None


def _check_bank(trajectory: EditTrajectory, schedule) -> None:
    if schedule.kv_mode is not None and trajectory.bank is None:
        raise ValueError("trajectory: it has no K,V bank but visual cross-attention is on; enable 'record_kv_bank' "
                         "in DiffEditor Invert, or set visual_cross_attention to off in DiffEditor Edit Options")


@dataclass
class EditPlan:
    """What an Edit node runs: the task, its schedule, and for DiffEditor+ the plan and (warp plans) the warp."""

    task: object
    schedule: object
    blend: TrajectoryAnchor | None = None
    plan: object = None
    warp: object = None


def edit_plan(spec, trajectory: EditTrajectory, mid, preset, guidance_strength, keep_background, options) -> EditPlan:
    """Check the Edit nodes' inputs and resolve the preset (one place for the Edit, Edit Sampler and Stable
    Edit nodes)."""
    schedule = _schedule(spec, preset, guidance_strength, options)
    if not isinstance(keep_background, bool):
        raise ValueError(f"keep_background: expected a boolean, got {keep_background!r}")
    if preset != PACK_PRESET:
        _check_bank(trajectory, schedule)
        task = _task(spec, trajectory, mid)
        return EditPlan(task, schedule, _anchor(trajectory, task, keep_background))
    plan = pack_plan(spec.task)
    if plan.method == "warp":
        return EditPlan(_task(spec, trajectory, mid, need_bank=False), schedule, None, plan,
                        spec_warp(spec, trajectory))
    _check_bank(trajectory, schedule)
    return EditPlan(_task(spec, trajectory, mid), schedule, None, plan)


class DiffEditorEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorEditSampler", display_name="DiffEditor Edit Sampler", category=f"{CATEGORY}/edit",
            description="DiffEditor's editing loop as a SAMPLER for SamplerCustomAdvanced: use the trajectory's "
                        "SIGMAS (from DiffEditor Invert), any guider (its cfg applies; on guidance-distilled "
                        "Flux.1 dev/schnell a BasicGuider or cfg 1, with FluxGuidance on the positive), and "
                        "add_noise off.",
            inputs=[EditTrajectoryType.Input("trajectory", tooltip="Trajectory of the source image (DiffEditor "
                                                                   "Invert, K,V bank on for visual cross-attention)."),
                    EditSpecType.Input("spec", tooltip="What to edit (a DiffEditor spec node).")] + _main_inputs(),
            outputs=[io.Sampler.Output("sampler", display_name="sampler",
                                       tooltip="SAMPLER for SamplerCustomAdvanced (with the trajectory's SIGMAS).")])

    @classmethod
    def execute(cls, trajectory, spec, preset=PACK_PRESET, seed=42, guidance_strength=1.0, keep_background=False,
                options=None) -> io.NodeOutput:
        traj = check_trajectory(trajectory, "trajectory")
        p = edit_plan(spec, traj, None, preset, guidance_strength, keep_background, options)
        if p.plan is not None:
            return io.NodeOutput(comfy_jobs.pack_sampler(traj, p.task, p.plan, p.warp, seed, p.schedule))
        return io.NodeOutput(comfy_jobs.edit_sampler(traj, p.task, p.schedule, seed, p.blend))


class DiffEditorEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorEdit", display_name="DiffEditor Edit", category=f"{CATEGORY}/edit",
            description="One-node DiffEditor edit: guided, regional-SDE, time-travel sampling from the source's "
                        "inverted trajectory with visual cross-attention; returns the edited latent. Fine-tune "
                        "the mechanisms with the optional DiffEditor Edit Options.",
            inputs=run_sockets("Trajectory of the source image from DiffEditor Invert (K,V bank on for visual "
                               "cross-attention).", "What to edit (a DiffEditor spec node).") + [cfg_input()]
            + _main_inputs(),
            outputs=[io.Latent.Output("latent", display_name="latent",
                                      tooltip="The edited latent (raw latent space), ready for VAE Decode.")])

    @classmethod
    def execute(cls, model, positive, negative, trajectory, spec, cfg=-1.0, preset=PACK_PRESET, seed=42,
                guidance_strength=1.0, keep_background=False, options=None) -> io.NodeOutput:
        model, traj, cfg, p = edit_inputs(model, positive, negative, trajectory, spec, cfg, preset, guidance_strength,
                                          keep_background, options)
        if p.plan is not None:
            out = comfy_jobs.edit_pack(model, positive, negative, traj, p.task, p.plan, p.warp, cfg=cfg, seed=seed,
                                       schedule=p.schedule)
        else:
            out = comfy_jobs.edit(model, positive, negative, traj, p.task, p.schedule, cfg=cfg, seed=seed,
                                  blend=p.blend)
        return io.NodeOutput({"samples": out})


def edit_inputs(model, positive, negative, trajectory, spec, cfg, preset, guidance_strength, keep_background,
                options):
    """The Edit and Stable Edit nodes' checks: ``(model clone, trajectory, cfg, EditPlan)``."""
    model, traj, mid = run_inputs(model, positive, negative, trajectory)
    _check_spec(spec)
    cfg = edit_cfg(model, cfg, spec.task)
    return model, traj, cfg, edit_plan(spec, traj, mid, preset, guidance_strength, keep_background, options)


def edit_cfg(model, cfg, task: str) -> float:
    """The Edit nodes' cfg on this MODEL: -1 = the task's official value, or 1 on a guidance-distilled model
    (Flux dev/schnell, which take their guidance from FluxGuidance); above 1 there is refused."""
    c = resolve_cfg(cfg, task)  # the task and the number checked; -1 = the task's official value
    if float(cfg) == -1.0 and guidance_distilled(model):
        return 1.0
    return check_model_cfg(model, c)


def run_sockets(trajectory_tip: str, spec_tip: str) -> list:
    """The inputs of every node that edits a trajectory on a MODEL: model, positive, negative, trajectory, spec."""
    return [
        io.Model.Input("model", tooltip=f"The MODEL the trajectory was inverted with ({MODEL_FAMILIES}; the "
                                        "family is read from the MODEL)."),
        io.Conditioning.Input("positive", tooltip="Prompt describing the edited image (usually the inversion "
                                                  "prompt)."),
        io.Conditioning.Input("negative", tooltip="Negative prompt (the unconditional branch of CFG)."),
        EditTrajectoryType.Input("trajectory", tooltip=trajectory_tip),
        EditSpecType.Input("spec", tooltip=spec_tip),
    ]


def cfg_input():
    """The Edit nodes' ``cfg``: exactly -1 = the task's official value."""
    return io.Float.Input("cfg", default=-1.0, min=-1.0, max=30.0, step=0.1, round=0.01,
                          tooltip="Classifier-free guidance scale; exactly -1 = the task's official value ("
                                  + ", ".join(f"{t} {d['cfg']:g}" for t, d in O.TASK_DEFAULTS.items())
                                  + "; SD3 the same). Guidance-distilled Flux.1 dev/schnell: -1 = 1 and anything "
                                    "above 1 is refused; set the guidance with FluxGuidance on the positive "
                                    "conditioning.")


def run_inputs(model, positive, negative, trajectory):
    """The checks of every node that samples a trajectory on a MODEL: ``(model clone, trajectory, model id)``.
    The clone is what the run installs its hooks on (copies of model_options only)."""
    check_supported(model, "model")
    model = model.clone()
    check_conditioning(positive, "positive")
    check_conditioning(negative, "negative")
    traj = check_trajectory(trajectory, "trajectory")
    mid = model_id(model)
    check_trajectory_model(traj, model, mid)
    return model, traj, mid


EDIT_NODES = [DiffEditorMoveSpec, DiffEditorDragSpec, DiffEditorAppearanceSpec, DiffEditorPasteSpec,
              DiffEditorPasteReference, DiffEditorEditOptions, DiffEditorEditSampler, DiffEditorEdit]
