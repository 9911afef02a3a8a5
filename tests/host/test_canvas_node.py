"""DiffEditor Canvas inside ComfyUI (in-process, tiny real MODEL): what it draws is the edit the spec nodes
describe, its preview, its UI output and its errors."""
import json
import os

import pytest
import torch

from diffeditor.nodes.canvas import UI_KEY, DiffEditorCanvas
from diffeditor.nodes.edit import DiffEditorDragSpec, DiffEditorEdit, DiffEditorMoveSpec, DiffEditorPasteSpec
from test_edit_nodes import KNOBS, invert, run

H = W = 128  # the tiny model's 16x16 latent


def canvas(**kw):
    with torch.inference_mode():
        out = DiffEditorCanvas.execute(**kw)
    return out.result, out.ui


def image(seed=0):
    return torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(seed))


def state(**layers):
    return json.dumps({"version": 1, "size": [W, H], **layers})


def edit(model, conds, traj, spec):
    return run(DiffEditorEdit, model=model, positive=conds[0], negative=conds[1], trajectory=traj, spec=spec,
               cfg=-1.0, **KNOBS)[0]["samples"]


def test_canvas_move_is_the_move_spec_edit(sd15_model, conds, latent):
    """A box drawn on the canvas edits exactly like the same mask given to DiffEditor Move/Resize Spec."""
    traj, _, _ = invert(sd15_model, conds, latent)
    (spec, preview, mask, points), ui = canvas(image=image(), task="move", dx=32, dy=8, scale=1.0,
                                               editor=state(object=[{"box": [24, 32, 56, 64]}]))
    ref_mask = torch.zeros(1, H, W)
    ref_mask[:, 32:64, 24:56] = 1
    ref = run(DiffEditorMoveSpec, mask=ref_mask, dx=32, dy=8, scale=1.0)[0]
    assert spec.task == "move" and torch.equal(spec.spec.mask, ref.spec.mask)
    assert (spec.spec.dx, spec.spec.dy, spec.spec.scale) == (32.0, 8.0, 1.0)
    assert torch.equal(mask, ref_mask) and points == ""
    assert preview.shape == (1, H, W, 3)
    assert torch.equal(edit(sd15_model, conds, traj, spec), edit(sd15_model, conds, traj, ref))
    shown = ui[UI_KEY][0]
    assert shown["size"] == [W, H] and "reference" not in shown and "mask" not in shown
    import folder_paths

    src = shown["source"]
    assert src["type"] == "temp"
    assert os.path.isfile(os.path.join(folder_paths.get_temp_directory(), src["subfolder"], src["filename"]))


def test_canvas_drag_is_the_drag_spec(sd15_model, conds, latent):
    text = state(points=[[40, 40, 72, 48]], region=[{"box": [16, 16, 100, 80]}])
    (spec, preview, mask, points), _ = canvas(image=image(), task="drag", editor=text)
    ref = run(DiffEditorDragSpec, points="40,40->72,48", mask=(mask > 0.5).float())[0]
    assert spec.task == "drag" and list(spec.spec.points) == list(ref.spec.points)
    assert int(mask.sum()) == 84 * 64 and points == "40,40->72,48"
    # the Drag nodes' text format in the editor widget
    (spec2, _, mask2, _), _ = canvas(image=image(), task="drag", editor="40,40->72,48")
    assert list(spec2.spec.points) == list(ref.spec.points) and spec2.spec.mask is None and bool(mask2.all())
    traj, _, _ = invert(sd15_model, conds, latent, bank=True)
    assert torch.isfinite(edit(sd15_model, conds, traj, spec)).all()


def test_canvas_paste_needs_the_reference(sd15_model, conds, latent):
    traj, _, _ = invert(sd15_model, conds, latent)
    ref_traj, _, _ = invert(sd15_model, conds, {"samples": latent["samples"].flip(-1)})
    obj = torch.zeros(1, H, W)
    obj[:, 16:48, 16:48] = 1
    kw = dict(image=image(), task="paste", dx=32, dy=16, scale=1.0, editor="", mask=obj)
    with pytest.raises(ValueError, match="^reference_image: paste needs the reference image"):
        canvas(**kw)
    with pytest.raises(ValueError, match="^reference: paste needs the DiffEditor Invert trajectory"):
        canvas(**kw, reference_image=image(1))
    with pytest.raises(ValueError, match=r"^reference_image: it is 64x64 pixels but the image is 128x128"):
        canvas(**kw, reference_image=torch.rand(1, 64, 64, 3), reference=ref_traj)
    for scale in (0.5, 1.5, 2.0):  # the reference was inverted at its size: only the mask would scale (issue 12)
        with pytest.raises(ValueError, match=r"^scale: a paste keeps the reference object's size .*DiffEditor "
                                             r"Paste Reference"):
            canvas(**dict(kw, scale=scale), reference_image=image(1), reference=ref_traj)
    (spec, preview, mask, _), ui = canvas(**kw, reference_image=image(1), reference=ref_traj)
    ref = run(DiffEditorPasteSpec, reference=ref_traj, mask=obj, dx=32, dy=16)[0]
    assert spec.reference is ref_traj and torch.equal(spec.spec.mask, ref.spec.mask)
    assert {"source", "reference", "mask"} <= set(ui[UI_KEY][0])
    assert torch.equal(edit(sd15_model, conds, traj, spec), edit(sd15_model, conds, traj, ref))


def test_canvas_errors_name_the_input():
    with pytest.raises(ValueError, match="^image: one image is expected, got a batch of 2"):
        canvas(image=torch.rand(2, H, W, 3), task="move", editor=state(object=[{"box": [0, 0, 8, 8]}]))
    with pytest.raises(ValueError, match="^editor: not valid JSON"):
        canvas(image=image(), task="move", editor="{nope")
    with pytest.raises(ValueError, match=r"^editor: point pair 1 target \(200, 5\) lies outside the 128x128"):
        canvas(image=image(), task="drag", editor=state(points=[[5, 5, 200, 5]]))
    with pytest.raises(ValueError, match="^editor: the object mask is empty"):
        canvas(image=image(), task="move", editor="")
    with pytest.raises(ValueError, match=r"^mask: it is 64x64 pixels but the image is 128x128"):
        canvas(image=image(), task="move", editor="", mask=torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match=r"^task: expected one of"):
        canvas(image=image(), task="resize", editor="")


def test_canvas_spec_feeds_warp_and_inpaint(sd15_model, conds, latent):
    """The spec socket is the spec nodes' type: the fast Warp & Inpaint node takes it as well."""
    from diffeditor.nodes.warp import DiffEditorWarpInpaint

    traj, _, _ = invert(sd15_model, conds, latent, bank=False)
    (spec, _, _, _), _ = canvas(image=image(), task="move", dx=32, dy=0, scale=1.0,
                                editor=state(object=[{"paint": [[40, 48]], "r": 14}]))
    out = run(DiffEditorWarpInpaint, model=sd15_model, positive=conds[0], negative=conds[1], trajectory=traj,
              spec=spec, strength=0.5, cfg=4.0, seed=42, grow=0)[0]["samples"]
    assert out.shape == traj.shape and torch.isfinite(out).all()
