"""DiffEditor Warp & Inpaint on a tiny real ComfyUI SD1.5-style MODEL: only the uncovered area is painted,
the warp preview costs no model call, bad input is named."""
import pytest
import torch

import comfy_tiny as tm
from diffeditor.guidance.tasks import LATENT_STRIDE
from diffeditor.guidance.warp import warp_for_spec
from diffeditor.nodes.edit import DiffEditorDragSpec, DiffEditorMoveSpec
from diffeditor.nodes.warp import DiffEditorWarpInpaint
from diffeditor.samplers.inpaint import warped_trajectory

from test_edit_nodes import invert, run, square_mask


@pytest.fixture(scope="module")
def source(sd15_model, conds, latent):
    return invert(sd15_model, conds, latent, bank=False)[0]


def warp_inpaint(model, conds, traj, spec, **kw):
    args = dict(strength=0.5, cfg=4.0, seed=1, grow=0)
    args.update(kw)
    return run(DiffEditorWarpInpaint, model=model, positive=conds[0], negative=conds[1], trajectory=traj,
               spec=spec, **args)


def test_move_paints_only_the_uncovered_area(sd15_model, conds, source):
    before = tm.weights_hash(sd15_model)
    traj = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    spec = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=32, dy=0, scale=1.0)[0]
    out, start = warp_inpaint(sd15_model, conds, traj, spec)
    sf = sd15_model.model.latent_format.scale_factor
    warp = warp_for_spec(spec.spec, tuple(traj.shape[-2:]), LATENT_STRIDE)
    composite = warped_trajectory(traj, warp).x0 / sf
    keep, hole = ~warp.hole, warp.hole
    assert torch.allclose(out["samples"][..., keep], composite[..., keep], atol=1e-5)
    assert float((out["samples"] - composite)[..., hole].abs().max()) > 1e-3  # the hole was painted
    assert torch.allclose(start["samples"][..., keep], composite[..., keep], atol=1e-5)  # the preview
    assert tm.weights_hash(sd15_model) == before


def test_drag_with_an_object_mask_and_bad_inputs(sd15_model, conds, source):
    traj = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    drag = run(DiffEditorDragSpec, points="40,40->72,48", mask=None)[0]
    out, _ = warp_inpaint(sd15_model, conds, traj, drag, object_mask=square_mask(H, W, 24, 56, 24, 56))
    assert torch.isfinite(out["samples"]).all()
    with pytest.raises(ValueError, match="object_mask"):
        warp_inpaint(sd15_model, conds, traj, drag, object_mask=square_mask(H // 2, W // 2, 4, 8, 4, 8))
    move = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=32, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match="object_mask"):
        warp_inpaint(sd15_model, conds, traj, move, object_mask=square_mask(H, W, 24, 56, 24, 56))
    with pytest.raises(ValueError, match="strength"):
        warp_inpaint(sd15_model, conds, traj, move, strength=float("nan"))
    far = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=4000, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match="spec"):
        warp_inpaint(sd15_model, conds, traj, far)
