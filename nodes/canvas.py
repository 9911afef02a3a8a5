"""DiffEditor Canvas: the edit spec drawn on the image (point / box / brush editor in the front end).

The editor (``web/js/``) writes its state into the ``editor`` widget (JSON) and the ``dx``, ``dy``, ``scale``
widgets; ``guidance/canvas_state.py`` parses and validates it and ``guidance/canvas_preview.py`` draws the
preview. This node only converts and wires: no geometry here.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..guidance.canvas_preview import preview_drag, preview_move
from ..guidance.canvas_state import TASKS, points_text, resolve
from ..guidance.specs import DragSpec, MoveSpec, PasteSpec
from .common import CATEGORY, EditTrajectoryType, check_finite, check_trajectory
from .edit import EditSpecType, EditSpecValue

#: UI output key the front-end editor reads (the images the node saw, like PreviewImage's "images").
UI_KEY = "diffeditor_canvas"
#: The same, as a websocket event sent before the editor state is checked: an empty or broken state stops
#: the node, and the editor still needs the image to draw on.
EVENT = "diffeditor.canvas"


def _one_image(image, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{name}: expected an IMAGE [batch, height, width, channels], got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if image.shape[0] != 1:
        raise ValueError(f"{name}: one image is expected, got a batch of {image.shape[0]}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name}: the image contains NaN or infinite values")
    return image[0, ..., :3]


def _one_mask(mask, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a MASK [height, width] or [batch, height, width], got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.ndim == 3:
        if mask.shape[0] != 1:
            raise ValueError(f"{name}: one mask is expected, got a batch of {mask.shape[0]}")
        mask = mask[0]
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name}: the mask contains NaN or infinite values")
    return mask


def _saved(image_hw3: torch.Tensor) -> dict:
    """Save an [H, W, 3] image to the temp folder the way PreviewImage does; the file's /view reference."""
    return ui.PreviewImage(image_hw3[None].float().cpu(), cls=None).values[0]


def _send(node_id, shown: dict) -> None:
    """Tell the requesting client's editor which images this node saw (no-op without a server)."""
    try:
        from server import PromptServer
    except Exception:  # in-process use without the server
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None and node_id is not None:
        server.send_sync(EVENT, {"node": str(node_id), UI_KEY: shown}, server.client_id)


class DiffEditorCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorCanvas", display_name="DiffEditor Canvas", category=f"{CATEGORY}/edit/specs",
            description="Draw the edit on the image: drag points (handle -> target), the object box or brush "
                        "mask, and its move / resize / paste placement; emits the edit spec and a cheap "
                        "preview (no guidance). Every coordinate is in pixels of the image.",
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
            inputs=[
                io.Image.Input("image", tooltip="The source image (the one you invert). The editor shows it "
                                                 "and every coordinate is in its pixels."),
                io.Combo.Input("task", options=list(TASKS), default="move",
                               tooltip="move: move and/or resize the object (scale); drag: handle -> target "
                                       "points; paste: place an object of the reference image into the source."),
                io.Int.Input("dx", default=0, min=-8192, max=8192, step=8,
                             tooltip="move / paste: horizontal shift in pixels (positive = right), set by "
                                     "dragging the object; rounded to 8 px (one latent cell) by the edit."),
                io.Int.Input("dy", default=0, min=-8192, max=8192, step=8,
                             tooltip="move / paste: vertical shift in pixels (positive = down), set by "
                                     "dragging the object; rounded to 8 px (one latent cell) by the edit."),
                io.Float.Input("scale", default=1.0, min=0.1, max=10.0, step=0.05,
                               tooltip="move: resize factor about the object's centre (the wheel or the corner "
                                       "handle on the canvas). paste: keep 1; resize the pasted object with "
                                       "DiffEditor Paste Reference before the reference is encoded and inverted."),
                io.String.Input("editor", default="", multiline=False,
                                tooltip="The editor's state as JSON (points, boxes, brush strokes in image "
                                        "pixels); written by the canvas. For drag, 'x1,y1->x2,y2; ...' text "
                                        "also works."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional starting mask (e.g. painted in ComfyUI's mask editor): the "
                                      "object (move; paste: on the reference image) or the drag region (what "
                                      "DiffEditor+ moves with the points; the published presets' editable "
                                      "region). The canvas' boxes and strokes apply on top of it."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="paste: the reference image the object is cut from (same size as the "
                                       "image)."),
                EditTrajectoryType.Input("reference", optional=True,
                                         tooltip="paste: DiffEditor Invert trajectory of the reference image "
                                                 "(same model, size and steps, K,V bank on)."),
            ],
            outputs=[
                EditSpecType.Output("spec", display_name="spec",
                                    tooltip="Edit spec for DiffEditor Edit / DiffEditor Edit Sampler."),
                io.Image.Output("preview", display_name="preview",
                                tooltip="What the edit starts from, drawn without running the model: the "
                                        "moved / pasted object over the source, or the drag patches and arrows."),
                io.Mask.Output("mask_out", display_name="mask",
                               tooltip="The object mask (paste: on the reference image) or the drag editable "
                                       "region (all ones when none is drawn)."),
                io.String.Output("points", display_name="points",
                                 tooltip="The drag points as 'x1,y1->x2,y2; ...' in pixels (for DiffEditor Drag "
                                         "Optimize); empty for move / paste."),
            ])

    @classmethod
    def execute(cls, image, task="move", dx=0, dy=0, scale=1.0, editor="", mask=None, reference_image=None,
                reference=None) -> io.NodeOutput:
        img = _one_image(image, "image")
        H, W = img.shape[:2]
        m = None if mask is None else _one_mask(mask, "mask")
        ref_img = None
        if task == "paste":
            if reference_image is None:
                raise ValueError("reference_image: paste needs the reference image the object is cut from")
            ref_img = _one_image(reference_image, "reference_image")
            if tuple(ref_img.shape[:2]) != (H, W):
                raise ValueError(f"reference_image: it is {ref_img.shape[1]}x{ref_img.shape[0]} pixels but the "
                                 f"image is {W}x{H}; give both at the same size")
            if reference is None:
                raise ValueError("reference: paste needs the DiffEditor Invert trajectory of the reference image")
            reference = check_trajectory(reference, "reference")
        if m is not None and tuple(m.shape) != (H, W):
            raise ValueError(f"mask: it is {m.shape[-1]}x{m.shape[-2]} pixels but the image is {W}x{H}")
        shown = {"source": _saved(img), "size": [W, H]}
        if ref_img is not None:
            shown["reference"] = _saved(ref_img)
        if m is not None:
            shown["mask"] = _saved(m.float().clamp(0, 1)[..., None].expand(H, W, 3))
        _send(cls.hidden.unique_id if cls.hidden is not None else None, shown)
        if task == "paste" and check_finite(scale, "scale", 0.1, 10.0) != 1.0:
            # the reference was inverted at its own size: scaling only the mask here would paste a cut piece of
            # the unscaled object (issue 12, item 4)
            raise ValueError(f"scale: a paste keeps the reference object's size (scale must be 1, got {scale:g}); "
                             "resize the object with DiffEditor Paste Reference before VAE Encode / DiffEditor "
                             "Invert of the reference, and give the canvas its image and mask")
        with torch.inference_mode(False):
            r = resolve(task, editor, (W, H), mask=None if m is None else m.detach().clone().float(), dx=dx, dy=dy,
                        scale=scale, max_scale=1.0 if task == "paste" else 10.0)
            if task == "drag":
                spec = DragSpec(r.points, mask=None if r.mask is None else r.mask.float())
                preview = preview_drag(img, r.points, r.mask)
                out_mask = torch.ones(H, W) if r.mask is None else r.mask.float()
            else:
                obj = r.mask.float()
                cut = MoveSpec if task == "move" else PasteSpec
                spec = cut(obj, r.dx, r.dy, scale=r.scale)
                preview = preview_move(img, r.mask, r.dx, r.dy, r.scale, source=ref_img)
                out_mask = obj
        return io.NodeOutput(EditSpecValue(task, spec, reference if task == "paste" else None), preview[None],
                             out_mask[None], points_text(r.points), ui={UI_KEY: [shown]})


CANVAS_NODES = [DiffEditorCanvas]
