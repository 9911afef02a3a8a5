"""The pack's own methods in the nodes, on a tiny real ComfyUI SD1.5-style MODEL: the DiffEditor+ preset (the
Edit nodes' default), DiffEditor Stable Edit (stability tracking) and Drag Optimize's AlDD method."""
import pytest
import torch

import comfy_tiny as tm
from diffeditor.guidance.grids import LATENT_STRIDE
from diffeditor.guidance.warp import warp_for_spec
from diffeditor.nodes.drag import DiffEditorDragOptimize
from diffeditor.nodes.edit import (PRESET_CHOICES, DiffEditorAppearanceSpec, DiffEditorEdit, DiffEditorEditSampler,
                                   DiffEditorMoveSpec, _task)
from diffeditor.nodes.stability import DiffEditorStableEdit
from diffeditor.samplers.inpaint import warped_trajectory
from diffeditor.samplers.pack import PACK_PRESET

from test_edit_nodes import KNOBS, edit, invert, run, square_mask


@pytest.fixture(scope="module")
def source(sd15_model, conds, latent):
    return invert(sd15_model, conds, latent)[0]


def move_spec(traj, dx=32):
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    return run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=dx, dy=0, scale=1.0)[0]


def test_the_pack_preset_is_the_default_and_the_published_presets_stay():
    schema = DiffEditorEdit.define_schema()
    preset = next(i for i in schema.inputs if i.id == "preset")
    assert preset.default == PACK_PRESET and PRESET_CHOICES[0] == PACK_PRESET
    assert {"DiffEditor", "DragonDiffusion"} <= set(preset.options)
    import inspect
    for node in (DiffEditorEdit, DiffEditorEditSampler, DiffEditorStableEdit):
        assert inspect.signature(node.execute).parameters["preset"].default == PACK_PRESET


def test_pack_move_warps_and_paints_only_the_uncovered_area(sd15_model, conds, source):
    """DiffEditor+ on a move: the warped source everywhere but the uncovered hole, which is painted; the same
    result through the Edit Sampler; the MODEL untouched."""
    before = tm.weights_hash(sd15_model)
    traj = source
    spec = move_spec(traj)
    out = edit(sd15_model, conds, traj, spec, preset=PACK_PRESET)
    sf = sd15_model.model.latent_format.scale_factor
    warp = warp_for_spec(spec.spec, tuple(traj.shape[-2:]), LATENT_STRIDE)
    composite = warped_trajectory(traj, warp).x0 / sf
    keep, hole = ~warp.hole, warp.hole
    assert bool(hole.any()) and bool(keep.any())
    assert torch.allclose(out[..., keep], composite[..., keep], atol=1e-5)
    assert float((out - composite)[..., hole].abs().max()) > 1e-3
    # the object moved: the target cells now hold the source's object cells (latent shift of 4 cells)
    src = traj.x0 / sf
    assert torch.allclose(out[..., 4:8, 7:11], src[..., 4:8, 3:7], atol=1e-5)
    assert tm.weights_hash(sd15_model) == before


def test_pack_edit_sampler_is_the_edit_node(sd15_model, conds, source):
    """DiffEditor+ through DiffEditor Edit Sampler + core SamplerCustomAdvanced = the one-node Edit."""
    from test_edit_nodes import advanced

    traj = source
    spec = move_spec(traj)
    sampler = run(DiffEditorEditSampler, trajectory=traj, spec=spec, **dict(KNOBS, preset=PACK_PRESET))[0]
    adv = advanced(sd15_model, conds, sampler, traj.sigmas.clone(), traj.shape, cfg=4.0)
    out = edit(sd15_model, conds, traj, spec, preset=PACK_PRESET)
    assert torch.allclose(adv, out, atol=1e-4), float((adv - out).abs().max())


def test_pack_appearance_is_guided_with_the_background_locked(sd15_model, conds, latent, source):
    traj = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    ref = invert(sd15_model, conds, {"samples": latent["samples"].flip(-1)})[0]
    m = square_mask(H, W, 32, 64, 24, 56)
    spec = run(DiffEditorAppearanceSpec, mask=m, reference=ref, ref_mask=m.flip(-1))[0]
    out = edit(sd15_model, conds, traj, spec, preset=PACK_PRESET)
    src = traj.x0 / sd15_model.model.latent_format.scale_factor
    inside = (_task(spec, traj, None).edit_mask > 0.5).expand(traj.shape)
    assert torch.allclose(out[~inside], src[~inside], atol=1e-5)  # locked without keep_background
    assert float((out - src)[inside].abs().mean()) > 1e-3
    # the published preset with keep_background is the same edit (DiffEditor+'s appearance plan)
    same = edit(sd15_model, conds, traj, spec, preset="DiffEditor", keep_background=True)
    assert torch.allclose(out, same, atol=1e-5)


def test_pack_preset_needs_no_bank_for_a_warp_and_names_bad_input(sd15_model, conds, latent):
    traj = invert(sd15_model, conds, latent, bank=False)[0]
    out = edit(sd15_model, conds, traj, move_spec(traj), preset=PACK_PRESET)  # a warp needs no K,V bank
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="trajectory: it has no K,V bank"):
        edit(sd15_model, conds, traj, move_spec(traj), preset="DiffEditor")
    with pytest.raises(ValueError, match="preset"):
        edit(sd15_model, conds, traj, move_spec(traj), preset="DiffEditor++")
    with pytest.raises(ValueError, match="spec"):
        edit(sd15_model, conds, traj, move_spec(traj, dx=4000), preset=PACK_PRESET)


def stable(model, conds, traj, spec, **kw):
    args = dict(KNOBS, preset="DiffEditor", cfg=-1.0, threshold_db=30.0, max_level=3)
    args.update(kw)
    latent, report = run(DiffEditorStableEdit, model=model, positive=conds[0], negative=conds[1], trajectory=traj,
                         spec=spec, **args)
    return latent["samples"], report


def test_stable_edit_backs_off_when_the_outside_drifts_and_keeps_a_clean_edit(sd15_model, conds, source):
    traj = source
    spec = move_spec(traj)
    src = traj.x0 / sd15_model.model.latent_format.scale_factor
    outside = ~(_task(spec, traj, None).edited_region > 0.5).expand(traj.shape)
    # the published preset without a lock drifts far on this random model: the tracking backs off until the
    # background is locked (level 2), where the outside is exactly the input
    out, report = stable(sd15_model, conds, traj, spec)
    lines = report.splitlines()
    assert [line.split(" ")[1] for line in lines[:-1]] == ["0", "1", "2"], report
    assert lines[-1].endswith("-> kept: level 2"), report
    assert torch.equal(out[outside], src[outside])
    assert float((out - src)[~outside].abs().mean()) > 1e-3  # still an edit
    # max_level 0: one attempt, the plain edit's result, reported as the best effort
    out0, report0 = stable(sd15_model, conds, traj, spec, max_level=0)
    assert len(report0.splitlines()) == 2 and "limit reached" in report0, report0
    assert torch.allclose(out0, edit(sd15_model, conds, traj, spec), atol=1e-5)
    # a clean edit is left alone (one attempt): the published preset with keep_background, and DiffEditor+
    for kw in ({"keep_background": True}, {"preset": PACK_PRESET}):
        _, rep = stable(sd15_model, conds, traj, spec, **kw)
        assert len(rep.splitlines()) == 2 and rep.endswith("-> kept: level 0"), (kw, rep)
    with pytest.raises(ValueError, match="max_level"):
        stable(sd15_model, conds, traj, spec, max_level=7)
    with pytest.raises(ValueError, match="threshold_db"):
        stable(sd15_model, conds, traj, spec, threshold_db=float("nan"))


def test_drag_optimize_aldd_drags_over_several_steps(sd15_model, conds, source):
    traj = source
    args = dict(model=sd15_model, positive=conds[0], negative=conds[1], trajectory=traj, points="40,40->56,40",
                strength=0.7, steps=5, lr=0.01, r_m=1, r_p=3, lam=0.1)
    latent, sigmas, handles = run(DiffEditorDragOptimize, method="AlDD", **args)
    k = traj.steps - 7  # strength 0.7 of 10 steps
    assert latent["samples"].shape == traj.shape and torch.isfinite(latent["samples"]).all()
    assert k <= traj.steps - (sigmas.shape[0] - 1)  # the drag ended at or after its start step ...
    assert sigmas.shape[0] - 1 >= 1 and float(sigmas[-1]) == 0.0  # ... and leaves the rest of the schedule
    x, y = (float(v) for v in handles.splitlines()[0].split(","))
    assert 0 <= x < 8 * traj.shape[-1] and 0 <= y < 8 * traj.shape[-2]
    with pytest.raises(ValueError, match="method"):
        run(DiffEditorDragOptimize, method="GoodDrag", **args)
