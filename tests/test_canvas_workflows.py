"""The move, resize, drag and paste example workflows are drawn on the DiffEditor Canvas node, and what is
drawn there is the edit the earlier text/mask-file workflows described (same object pixels, points, region)."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from diffeditor.guidance.canvas_state import parse_state, resolve

WF = pathlib.Path(__file__).resolve().parents[1] / "workflows"
CANVAS_WORKFLOWS = {"move": "move", "resize": "move", "drag": "drag", "paste": "paste"}


def _asset_mask(name):
    return torch.from_numpy(np.array(Image.open(WF / "assets" / name)) > 127)


def _title(workflow):
    spec = importlib.util.spec_from_file_location("diffeditor_workflow_build", WF / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.NAMES[workflow]  # the file name is the workflow's human title


def _canvas(workflow):
    api = json.loads((WF / "api" / f"{_title(workflow)}.json").read_text())
    canvas = [(nid, n) for nid, n in api.items() if n["class_type"] == "DiffEditorCanvas"]
    assert len(canvas) == 1, f"{workflow}: one DiffEditor Canvas node"
    nid, node = canvas[0]
    return api, nid, node["inputs"]


@pytest.mark.parametrize("workflow", sorted(CANVAS_WORKFLOWS))
def test_workflow_uses_the_canvas(workflow):
    api, nid, ins = _canvas(workflow)
    assert ins["task"] == CANVAS_WORKFLOWS[workflow]
    edits = [n for n in api.values() if n["class_type"] == "DiffEditorEdit"]
    assert edits and all(e["inputs"]["spec"] == [nid, 0] for e in edits), "the edit reads the canvas' spec"
    previews = [n for n in api.values() if n["class_type"] == "PreviewImage" and n["inputs"]["images"] == [nid, 1]]
    assert previews, "the canvas preview is shown"
    assert ins["image"] == [next(k for k, n in api.items() if n["_meta"]["title"] == "Source image"), 0]
    assert not any(n["class_type"] in ("DiffEditorMoveSpec", "DiffEditorDragSpec", "DiffEditorPasteSpec")
                   for n in api.values())


def test_move_and_resize_object_is_the_object_mask():
    """One brush dab (centre 152,176, radius 72) paints exactly the red circle's mask file."""
    truth = _asset_mask("diffeditor_object_mask.png")
    for workflow, placement in (("move", (96, 32, 1.0)), ("resize", (0, 0, 1.3))):
        _, _, ins = _canvas(workflow)
        assert (ins["dx"], ins["dy"], ins["scale"]) == placement
        r = resolve("move", ins["editor"], (512, 512), dx=ins["dx"], dy=ins["dy"], scale=ins["scale"])
        assert torch.equal(r.mask, truth), workflow


def test_drag_points_and_region_are_the_earlier_ones():
    _, _, ins = _canvas("drag")
    r = resolve("drag", ins["editor"], (512, 512))
    assert r.points == [((152.0, 176.0), (216.0, 176.0))]
    assert torch.equal(r.mask, _asset_mask("diffeditor_drag_region.png"))


def test_paste_takes_the_object_from_the_mask_input_and_places_it_on_the_canvas():
    api, _, ins = _canvas("paste")
    assert parse_state(ins["editor"]).empty and (ins["dx"], ins["dy"], ins["scale"]) == (0, 160, 1.0)
    # the object is resized by DiffEditor Paste Reference (image and mask together) before the inversion
    ref = api[ins["mask"][0]]
    assert ref["class_type"] == "DiffEditorPasteReference" and ins["reference_image"] == [ins["mask"][0], 0]
    assert ins["mask"][1] == 1 and ref["inputs"]["scale"] == 1.0
    assert api[ref["inputs"]["mask"][0]]["inputs"]["image"] == "diffeditor_reference_mask.png"
    assert api[ref["inputs"]["image"][0]]["class_type"] == "LoadImage"
    invert = api[ins["reference"][0]]
    assert invert["class_type"] == "DiffEditorInvert"
    assert api[invert["inputs"]["latent"][0]]["inputs"]["pixels"] == [ins["mask"][0], 0]
