"""Warp-and-inpaint: the dense warp (handles land on targets, the outside is untouched) and the inpainting
(only the hole changes, with the model calls it claims)."""
import pytest
import torch

from diffeditor.adapters.diffusers_adapter import DiffusersDenoiser
from diffeditor.guidance.tasks import DragSpec, MoveSpec, PasteSpec
from diffeditor.guidance.warp import affine_warp, drag_warp, warp_for_spec
from diffeditor.samplers.inpaint import fill_hole, sample_warp_inpaint, start_index, warped_trajectory
from diffeditor.samplers.inversion import invert
from diffeditor.samplers.schedule import ddim_sigmas

from tiny_models import make_tiny_unet

HW, STRIDE = (16, 16), 8  # a 128x128-pixel image


def _grid_px(warp, i, j):
    """The source pixel the warp reads for latent cell (i, j)."""
    g = warp.grid[0, i, j]
    return (float(g[0]) + 1) / 2 * HW[1] * STRIDE, (float(g[1]) + 1) / 2 * HW[0] * STRIDE


def _cell_centre(x, y):
    return (x // STRIDE + 0.5) * STRIDE, (y // STRIDE + 0.5) * STRIDE


@pytest.mark.parametrize("pairs", [
    [((36.0, 44.0), (84.0, 60.0))],  # translation
    [((36.0, 44.0), (84.0, 60.0)), ((52.0, 28.0), (92.0, 36.0))],  # similarity
    [((36.0, 44.0), (84.0, 60.0)), ((52.0, 28.0), (100.0, 44.0)), ((20.0, 76.0), (68.0, 92.0))],  # TPS
])
def test_drag_warp_maps_every_handle_to_its_target(pairs):
    # targets at latent-cell centres, so the map is read exactly where it is defined
    pairs = [(h, _cell_centre(*t)) for h, t in pairs]
    mask = torch.zeros(128, 128)
    mask[8:100, 8:72] = 1
    w = drag_warp(pairs, HW, STRIDE, mask=mask)
    for (hx, hy), (tx, ty) in pairs:
        sx, sy = _grid_px(w, int(ty // STRIDE), int(tx // STRIDE))
        assert abs(sx - hx) < 0.5 and abs(sy - hy) < 0.5, ((hx, hy), (sx, sy))


def test_affine_warp_footprints_and_untouched_outside():
    mask = torch.zeros(128, 128)
    mask[32:64, 16:48] = 1  # 4x4 cells at rows 4-7, cols 2-5
    w = affine_warp(mask, HW, STRIDE, dx=40, dy=8)
    assert w.source[4:8, 2:6].all() and int(w.source.sum()) == 16
    assert w.target[5:9, 7:11].all() and int(w.target.sum()) == 16  # moved by 5 cells right, 1 down
    assert int(w.hole.sum()) == 16 - int((w.source & w.target).sum())
    base = torch.randn(1, 4, *HW, generator=torch.Generator().manual_seed(0))
    out = w.apply(base)
    assert torch.equal(out[..., ~w.target], base[..., ~w.target])  # outside the new footprint: untouched
    assert torch.allclose(out[..., 5:9, 7:11], base[..., 4:8, 2:6], atol=1e-6)  # the object, moved
    half = affine_warp(mask, HW, STRIDE, dx=0, dy=0, scale=0.5)
    assert int(half.target.sum()) == 4 and int(half.hole.sum()) == 12
    with pytest.raises(ValueError, match="outside the image"):
        affine_warp(mask, HW, STRIDE, dx=400, dy=0)
    with pytest.raises(ValueError, match="mask"):
        affine_warp(torch.zeros(64, 64), HW, STRIDE, dx=8, dy=0)
    assert warp_for_spec(PasteSpec(mask, 16, 0), HW, STRIDE).hole.sum() == 0  # a paste uncovers nothing


def test_fill_hole_keeps_known_cells_and_fills_from_the_surroundings():
    x = torch.ones(1, 2, 8, 8) * torch.arange(8.0)[None, None, None, :]  # a horizontal ramp
    hole = torch.zeros(8, 8, dtype=torch.bool)
    hole[2:6, 3:5] = True
    y = fill_hole(x, hole)
    assert torch.equal(y[..., ~hole], x[..., ~hole])
    assert bool(((y[..., hole] >= 2) & (y[..., hole] <= 5)).all())  # between the neighbouring values


@pytest.fixture(scope="module")
def tiny():
    unet = make_tiny_unet(out_scale=0.3)
    g = torch.Generator().manual_seed(7)
    cond = torch.randn(1, 6, 32, generator=g)
    den = DiffusersDenoiser(unet, cond)
    x0 = torch.randn(1, 4, *HW, generator=g)
    sig = ddim_sigmas(12)
    return den, invert(den, x0, sig, model_id="tiny"), sig


def test_inpainting_changes_only_the_hole_and_counts_its_calls(tiny):
    den, traj, sig = tiny
    mask = torch.zeros(128, 128)
    mask[32:64, 16:48] = 1
    warp = warp_for_spec(MoveSpec(mask, 40, 8), HW, STRIDE)
    calls = den.calls
    out = sample_warp_inpaint(den, traj.x0, sig, trajectory=traj, warp=warp, strength=0.5, seed=3, disable=True)
    assert den.calls - calls == 12 - start_index(12, 0.5) == 6  # one call per step from the start level
    composite = warped_trajectory(traj, warp).x0
    keep = ~warp.hole
    assert torch.equal(out[..., keep], composite[..., keep])  # everything but the hole: the warped source
    assert float((out - composite)[..., warp.hole].abs().max()) > 1e-3  # the hole was painted
    again = sample_warp_inpaint(den, traj.x0, sig, trajectory=traj, warp=warp, strength=0.5, seed=3, disable=True)
    assert torch.equal(out, again)  # deterministic under a seed


def test_drag_through_the_spec_and_paste_needs_its_reference(tiny):
    den, traj, sig = tiny
    spec = DragSpec([((40.0, 48.0), (72.0, 48.0))])  # no mask: a disc around the handle moves
    w = warp_for_spec(spec, HW, STRIDE)
    assert w.target.any() and w.hole.any()
    out = sample_warp_inpaint(den, traj.x0, sig, trajectory=traj, warp=w, strength=0.25, seed=0, disable=True)
    assert torch.isfinite(out).all()
    mask = torch.zeros(128, 128)
    mask[32:64, 16:48] = 1
    with pytest.raises(ValueError, match="reference"):
        warped_trajectory(traj, warp_for_spec(PasteSpec(mask, 8, 0), HW, STRIDE))
    with pytest.raises(ValueError, match="strength"):
        start_index(12, 0.0)


def test_pack_preset_runs_each_plan_through_its_engine(tiny):
    from diffeditor.samplers.hooks import EditHooks
    from diffeditor.adapters.diffusers_adapter import DiffusersHost
    from diffeditor.guidance.tasks import make_task
    from diffeditor.samplers.pack import PACK_PLANS, PackPlan, pack_plan, sample_pack

    den, traj, sig = tiny
    mask = torch.zeros(128, 128)
    mask[32:64, 16:48] = 1
    spec = MoveSpec(mask, 40, 8)
    task = make_task(spec, traj.x0)
    warp = warp_for_spec(spec, HW, STRIDE)
    host = DiffusersHost(den)
    plan = pack_plan("move")
    assert plan.method == "warp" and set(PACK_PLANS) == {"move", "drag", "paste", "appearance"}
    a = sample_pack(den, traj.x0, sig, host=host, hooks=EditHooks(), trajectory=traj, task=task, plan=plan,
                    warp=warp, seed=5, disable=True)
    b = sample_warp_inpaint(den, traj.x0, sig, trajectory=traj, warp=warp, strength=plan.strength, seed=5,
                            grow=plan.grow, disable=True)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="warp"):
        sample_pack(den, traj.x0, sig, host=host, hooks=EditHooks(), trajectory=traj, task=task, plan=plan)
    with pytest.raises(ValueError, match="no plan"):
        pack_plan("erase")
    with pytest.raises(ValueError, match="method"):
        sample_pack(den, traj.x0, sig, host=host, hooks=EditHooks(), trajectory=traj, task=task,
                    plan=PackPlan("magic"))
