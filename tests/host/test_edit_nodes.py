"""The editing nodes on tiny real ComfyUI MODELs (SD1.x- and SDXL-style), run under inference_mode."""
import pytest
import torch

import comfy_tiny as tm
from diffeditor.nodes.edit import (DiffEditorAppearanceSpec, DiffEditorDragSpec, DiffEditorEdit,
                                   DiffEditorEditOptions, DiffEditorEditSampler, DiffEditorMoveSpec,
                                   DiffEditorPasteReference, DiffEditorPasteSpec)
from diffeditor.nodes.inversion import DiffEditorInvert

STEPS = 10
KNOBS = dict(preset="DiffEditor", seed=42, guidance_strength=1.0, keep_background=False)


def options(**over):
    """A DIFFEDITOR_EDIT_OPTIONS value: the official defaults with ``over`` changed."""
    from diffeditor.samplers.edit import EditKnobs

    opts = {k: v for k, v in EditKnobs().__dict__.items() if k != "guidance_strength"}
    return run(DiffEditorEditOptions, **dict(opts, **over))[0]


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result


def invert(model, conds, latent, bank=True):
    return run(DiffEditorInvert, model=model, positive=conds[0], negative=conds[1], latent=latent, steps=STEPS,
               scheduler="ddim_uniform", cfg=1.0, exact=False, exact_iters=10, record_kv_bank=bank,
               bank_start=0.0, bank_end=1.0, kv_budget_mb=4096.0)


def square_mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, h, w)
    m[:, y0:y1, x0:x1] = 1
    return m


def edit(model, conds, traj, spec, cfg=-1.0, **over):
    return run(DiffEditorEdit, model=model, positive=conds[0], negative=conds[1], trajectory=traj, spec=spec,
               cfg=cfg, **dict(KNOBS, **over))[0]["samples"]


@pytest.fixture(scope="module")
def source(sd15_model, conds, latent):
    traj, _, sigmas = invert(sd15_model, conds, latent)
    return traj, sigmas


def test_move_edit_end_to_end_and_weights_untouched(sd15_model, conds, source):
    before = tm.weights_hash(sd15_model)
    traj, _ = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    mask = square_mask(H, W, 32, 64, 24, 56)
    spec = run(DiffEditorMoveSpec, mask=mask, dx=32, dy=0, scale=1.0)[0]
    out = edit(sd15_model, conds, traj, spec)
    assert out.shape == traj.shape and torch.isfinite(out).all()
    # the edit changed the latent, and it changed it more inside the edit region than far outside it
    src = traj.x0 / sd15_model.model.latent_format.scale_factor
    d = (out - src).abs().mean(1)[0]
    assert float(d[4:8, 3:11].mean()) > float(d[12:, :].mean())
    assert tm.weights_hash(sd15_model) == before


def test_drag_appearance_paste_change_the_edit_region_and_keep_the_outside(sd15_model, conds, latent, source):
    """A no-op edit must fail: the edit region changes (against the source) far more than the outside, and
    with keep_background the outside is exactly the source while the inside still changes."""
    from diffeditor.nodes.edit import _task

    traj, _ = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    sf = sd15_model.model.latent_format.scale_factor
    ref_traj, _, _ = invert(sd15_model, conds, {"samples": latent["samples"].flip(-1)})
    m = square_mask(H, W, 32, 64, 24, 56)
    specs = {"drag": run(DiffEditorDragSpec, points="40,40->72,48", mask=square_mask(H, W, 16, 80, 16, 100))[0],
             "appearance": run(DiffEditorAppearanceSpec, mask=m, reference=ref_traj, ref_mask=m.flip(-1))[0],
             "paste": run(DiffEditorPasteSpec, reference=ref_traj, mask=m.flip(-1), dx=-32, dy=16)[0]}
    for name, spec in specs.items():
        inside = (_task(spec, traj, None).edit_mask > 0.5).expand(traj.shape)
        free = edit(sd15_model, conds, traj, spec) * sf
        kept = edit(sd15_model, conds, traj, spec, keep_background=True) * sf
        for out in (free, kept):
            assert torch.isfinite(out).all(), name
        d = (free - traj.x0).abs()
        assert float(d[inside].mean()) > 4 * float(d[~inside].mean()), name  # the change is the edit region's
        assert float(d[inside].mean()) > 0.1, name  # and it is a real change (latent std ~0.36)
        assert torch.allclose(kept[~inside], traj.x0[~inside], atol=1e-5), name  # outside: the source
        assert float((kept - traj.x0)[inside].abs().mean()) > 0.1, name
        # a no-op (nothing guided, no K,V, no SDE or time travel) changes the region far less
        noop = edit(sd15_model, conds, traj, spec, guidance_strength=0.0,
                    options=options(visual_cross_attention="off", regional_sde="off", time_travel="off")) * sf
        assert float((noop - traj.x0)[inside].abs().mean()) < 0.2 * float(d[inside].mean()), name


def test_keep_background_locks_the_outside_to_the_trajectory(sd15_model, conds, source):
    from diffeditor.nodes.edit import _task

    traj, sigmas = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    spec = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=32, dy=0, scale=1.0)[0]
    sf = sd15_model.model.latent_format.scale_factor
    task = _task(spec, traj, None)
    outside = (task.edited_region < 0.5).expand(traj.shape)
    free = edit(sd15_model, conds, traj, spec) * sf
    kept = edit(sd15_model, conds, traj, spec, keep_background=True) * sf
    assert torch.allclose(kept[outside], traj.x0[outside], atol=1e-5)  # the source's reconstruction, exactly
    assert float((free - traj.x0)[outside].abs().max()) > 1e-3  # the official behaviour drifts there
    assert float((kept - traj.x0)[~outside].abs().max()) > 1e-3  # and the edit still happens inside
    # the cells the object leaves are not held to the source (else the object would stay there too)
    left = ((task.edited_region > 0.5) & (task.edit_mask < 0.5)).expand(traj.shape)
    assert bool(left.any()) and float((kept - traj.x0)[left].abs().mean()) > 1e-3
    # the Edit Sampler takes the same switch
    sampler = run(DiffEditorEditSampler, trajectory=traj, spec=spec, **dict(KNOBS, keep_background=True))[0]
    adv = advanced(sd15_model, conds, sampler, sigmas, traj.shape, cfg=4.0) * sf
    assert torch.allclose(adv, kept, atol=1e-4), float((adv - kept).abs().max())
    with pytest.raises(ValueError, match="keep_background"):
        edit(sd15_model, conds, traj, spec, keep_background="yes")


def advanced(model, conds, sampler, sigmas, shape, cfg=4.0):
    """Core SamplerCustomAdvanced with a core CFGGuider and no added noise (the documented wiring)."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(cfg)
        return SamplerCustomAdvanced().sample(Noise_EmptyNoise(), guider, sampler, sigmas,
                                              {"samples": torch.zeros(shape)})[0]["samples"]


def test_edit_sampler_in_sampler_custom_advanced(sd15_model, conds, source):
    before = tm.weights_hash(sd15_model)
    traj, sigmas = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    spec = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=16, dy=8, scale=1.2)[0]
    sampler = run(DiffEditorEditSampler, trajectory=traj, spec=spec, **KNOBS)[0]
    out = advanced(sd15_model, conds, sampler, sigmas, traj.shape, cfg=4.0)
    assert out.shape == traj.shape and torch.isfinite(out).all()
    # the one-node Edit is the same computation (move: cfg 4 by default)
    ref = edit(sd15_model, conds, traj, spec)
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())
    assert tm.weights_hash(sd15_model) == before


def test_edit_sampler_bad_inputs(sd15_model, sdxl_model, sdxl_conds, flow_model, conds, latent, source):
    traj, sigmas = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    spec = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=16, dy=0, scale=1.0)[0]
    sampler = run(DiffEditorEditSampler, trajectory=traj, spec=spec,
                  **dict(KNOBS, guidance_strength=0.0, options=options(visual_cross_attention="off")))[0]
    with pytest.raises(ValueError, match="^sigmas: .*DiffEditor Invert"):
        advanced(sd15_model, conds, sampler, sigmas * 1.01, traj.shape)
    with pytest.raises(ValueError, match="^sigmas: "):
        advanced(sd15_model, conds, sampler, sigmas[2:], traj.shape)
    with pytest.raises(ValueError, match="^latent_image: "):
        advanced(sd15_model, conds, sampler, sigmas, (1, 4, 8, 8))
    with pytest.raises(ValueError, match="another model"):
        advanced(sdxl_model, sdxl_conds, sampler, sigmas, traj.shape)
    with pytest.raises(ValueError, match="^model: .*flow"):
        advanced(flow_model, conds, sampler, sigmas, traj.shape)
    no_bank, _, _ = invert(sd15_model, conds, latent, bank=False)
    with pytest.raises(ValueError, match="^trajectory: .*no K,V bank.*record_kv_bank.*off"):
        run(DiffEditorEditSampler, trajectory=no_bank, spec=spec, **KNOBS)
    with pytest.raises(ValueError, match="^spec: "):
        run(DiffEditorEditSampler, trajectory=traj, spec="move", **KNOBS)
    with pytest.raises(ValueError, match="^trajectory: "):
        run(DiffEditorEditSampler, trajectory=latent, spec=spec, **KNOBS)


def test_schedule_knobs():
    from diffeditor.nodes.edit import EditSpecValue, _schedule
    from diffeditor.samplers.edit import preset_schedule
    from diffeditor.samplers.schedule import StepWindow, window_steps

    for preset in ("DiffEditor", "DragonDiffusion"):
        for task in ("move", "drag", "appearance", "paste"):
            assert _schedule(EditSpecValue(task, None), preset) == preset_schedule(preset, task)
            assert _schedule(EditSpecValue(task, None), preset, 1.0, options()) == preset_schedule(preset, task)
    dragon = _schedule(EditSpecValue("move", None), "DragonDiffusion", 1.0, options())
    assert dragon.sde is None and dragon.time_travel is None  # the preset's "off" survives the default windows
    move = EditSpecValue("move", None)
    s = _schedule(move, "DiffEditor", 2.0, options(guidance_start=0.1, guidance_end=0.4, sde_strength_outside=0.1,
                                                    time_travel="off", visual_cross_attention="concat",
                                                    kv_start=0.2))
    assert s.energy_scale == 1000.0 and s.kappa == 0.08 and s.eta_out == 0.1 and s.time_travel is None
    assert s.kv_mode == "concat" and s.kv == StepWindow(0.2, 1.0)
    assert sorted(window_steps(s.guidance, 50)) == [5, 6, 7, 8, 9, 10, 12, 14, 16, 18]
    s = _schedule(move, "DragonDiffusion", 1.0, options(regional_sde="on", sde_strength=0.0,
                                                        sde_strength_outside=0.2))
    assert s.sde == StepWindow(0.22, 0.4) and s.eta_in == 0.0 and s.eta_out == 0.2
    s = _schedule(move, "DiffEditor", 1.0, options(regional_sde="off", visual_cross_attention="off"))
    assert s.sde is None and s.kv_mode is None
    # bad options are caught by the Options node itself, naming the option
    for bad, name in ((dict(sde_start=0.5, sde_end=0.3), "sde_start"), (dict(guidance_start=0.7), "guidance_start"),
                      (dict(time_travel_start=0.6), "time_travel_start"), (dict(kv_start=0.9, kv_end=0.5), "kv_start"),
                      (dict(sde_strength=float("nan")), "sde_strength"), (dict(regional_sde="maybe"), "regional_sde")):
        with pytest.raises(ValueError, match=f"^{name}"):
            options(**bad)
    for bad, name in ((dict(guidance_strength=float("inf")), "guidance_strength"),
                      (dict(guidance_strength=-0.5), "guidance_strength")):
        with pytest.raises(ValueError, match=f"^{name}"):
            _schedule(move, "DiffEditor", **bad)
    with pytest.raises(ValueError, match="^preset: "):
        _schedule(move, "Dragon")
    with pytest.raises(ValueError, match="^options: "):
        _schedule(move, "DiffEditor", 1.0, "fast")


def test_dragon_preset_runs(sd15_model, conds, source):
    traj, _ = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    spec = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=-16, dy=16, scale=0.8)[0]
    out = edit(sd15_model, conds, traj, spec, preset="DragonDiffusion")
    assert out.shape == traj.shape and torch.isfinite(out).all()


def test_schemas_and_registration():
    from diffeditor.nodes import NODE_LIST
    from diffeditor.nodes.edit import EDIT_NODES

    assert all(n in NODE_LIST for n in EDIT_NODES)
    for node in EDIT_NODES:
        sch = node.define_schema()
        assert sch.node_id.startswith("DiffEditor")
        specs = node.__name__.endswith(("Spec", "PasteReference"))
        assert sch.category == ("DiffEditor/edit/specs" if specs else "DiffEditor/edit")
        for item in list(sch.inputs) + list(sch.outputs):
            assert item.tooltip, (sch.node_id, item.id)
    outs = {n.define_schema().node_id: [o.io_type for o in n.define_schema().outputs] for n in EDIT_NODES}
    assert outs["DiffEditorEdit"] == ["LATENT"] and outs["DiffEditorEditSampler"] == ["SAMPLER"]
    assert outs["DiffEditorMoveSpec"] == ["DIFFEDITOR_EDIT_SPEC"]
    assert outs["DiffEditorEditOptions"] == ["DIFFEDITOR_EDIT_OPTIONS"]
    assert outs["DiffEditorPasteReference"] == ["IMAGE", "MASK"]
    # the Edit nodes keep the preset and the knobs artists touch; the rest is on the Options node, with no
    # -1 sentinels there (named choices instead)
    widgets = {n.define_schema().node_id: [i.id for i in n.define_schema().inputs
                                          if i.get_io_type() in ("INT", "FLOAT", "BOOLEAN", "COMBO")]
               for n in EDIT_NODES}
    assert widgets["DiffEditorEdit"] == ["cfg", "preset", "seed", "guidance_strength", "keep_background"]
    assert widgets["DiffEditorEditSampler"] == ["preset", "seed", "guidance_strength", "keep_background"]
    opts = DiffEditorEditOptions.define_schema().inputs
    assert all(getattr(i, "min", 0) is None or getattr(i, "min", 0) >= 0 for i in opts)
    assert all(i.default != -1 for i in opts)


@pytest.fixture(scope="module")
def sdxl_source(sdxl_model, sdxl_conds):
    lat = tm.random_latent(5)
    traj, _, _ = invert(sdxl_model, sdxl_conds, lat)
    ref, _, _ = invert(sdxl_model, sdxl_conds, {"samples": lat["samples"].flip(-1)})
    return traj, ref


def test_sdxl_every_task(sdxl_model, sdxl_conds, sdxl_source):
    traj, ref = sdxl_source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    m = square_mask(H, W, 32, 64, 24, 56)
    specs = [run(DiffEditorMoveSpec, mask=m, dx=32, dy=0, scale=1.0)[0],
             run(DiffEditorMoveSpec, mask=m, dx=0, dy=0, scale=1.3)[0],
             run(DiffEditorDragSpec, points="40,40->72,48")[0],
             run(DiffEditorAppearanceSpec, mask=m, reference=ref, ref_mask=m)[0],
             run(DiffEditorPasteSpec, reference=ref, mask=m, dx=32, dy=16)[0]]
    for spec in specs:
        out = edit(sdxl_model, sdxl_conds, traj, spec)
        assert out.shape == traj.shape and torch.isfinite(out).all(), spec.task


def test_bad_inputs(sd15_model, sdxl_model, conds, latent, source, flow_model, sdxl_source):
    traj, _ = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    m = square_mask(H, W, 32, 64, 24, 56)
    with pytest.raises(ValueError, match="points"):
        run(DiffEditorDragSpec, points="10,10->nonsense")
    with pytest.raises(ValueError, match="mask.*empty"):
        run(DiffEditorMoveSpec, mask=torch.zeros(1, H, W), dx=8, dy=0, scale=1.0)
    off = run(DiffEditorMoveSpec, mask=m, dx=4096, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match="spec: .*d[xy]"):
        edit(sd15_model, conds, traj, off)
    outside = run(DiffEditorDragSpec, points=f"10,10->{W + 50},10")[0]
    with pytest.raises(ValueError, match="spec: "):
        edit(sd15_model, conds, traj, outside)
    small = run(DiffEditorMoveSpec, mask=square_mask(H // 2, W // 2, 8, 16, 8, 16), dx=8, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match="spec: "):
        edit(sd15_model, conds, traj, small)
    no_bank, _, _ = invert(sd15_model, conds, latent, bank=False)
    spec = run(DiffEditorMoveSpec, mask=m, dx=16, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match="no K,V bank"):
        edit(sd15_model, conds, no_bank, spec)
    assert torch.isfinite(edit(sd15_model, conds, no_bank, spec,
                               options=options(visual_cross_attention="off"))).all()
    with pytest.raises(ValueError, match="another model"):
        edit(sdxl_model, conds, traj, spec)
    with pytest.raises(ValueError, match="^model: .*flow"):
        edit(flow_model, conds, traj, spec)
    other = run(DiffEditorAppearanceSpec, mask=m, reference=sdxl_source[1], ref_mask=m)[0]
    with pytest.raises(ValueError, match="^reference trajectory was inverted with another model"):
        edit(sd15_model, conds, traj, other)
    lat2 = tm.random_latent(4, h=8, w=8)
    ref_small, _, _ = invert(sd15_model, conds, lat2)
    app = run(DiffEditorAppearanceSpec, mask=m, reference=ref_small, ref_mask=m)[0]
    with pytest.raises(ValueError, match="reference trajectory"):
        edit(sd15_model, conds, traj, app)
    with pytest.raises(ValueError, match="^sde_start"):
        edit(sd15_model, conds, traj, spec, options={"sde_start": 0.5, "sde_end": 0.3})  # (an API-made value)
    # drag points are checked at once against an editable-region mask, else at edit time against the latent
    with pytest.raises(ValueError, match="^points: pair 1 target .*outside the 128x128 image"):
        run(DiffEditorDragSpec, points=f"10,10->{W + 50},10", mask=m)
    with pytest.raises(ValueError, match="^mask: .*empty"):
        run(DiffEditorAppearanceSpec, mask=torch.zeros(1, H, W), reference=traj, ref_mask=m)
    with pytest.raises(ValueError, match="^reference: "):
        run(DiffEditorPasteSpec, reference=None, mask=m, dx=8, dy=0)
    paste_off = run(DiffEditorPasteSpec, reference=traj, mask=m, dx=-4096, dy=0)[0]
    with pytest.raises(ValueError, match="^spec: .*outside"):
        edit(sd15_model, conds, traj, paste_off)


def test_drag_optimize_then_sample_on(sd15_model, conds, source):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced

    from diffeditor.nodes.drag import DiffEditorDragOptimize
    from diffeditor.nodes.sampler import DiffEditorSampler

    traj, _ = source
    before = tm.weights_hash(sd15_model)
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    latent, sigmas, handles = run(DiffEditorDragOptimize, model=sd15_model, positive=conds[0], negative=conds[1],
                                  trajectory=traj, points="40,40->80,40", strength=0.7, steps=5, lr=0.01, r_m=1,
                                  r_p=3, lam=0.1, mask=square_mask(H, W, 16, 80, 16, 110))
    assert latent["samples"].shape == traj.shape and torch.isfinite(latent["samples"]).all()
    assert len(sigmas) == traj.steps - 3 + 1 and len(handles.splitlines()) == 1  # 10 steps: strength 0.7 -> step 3
    sampler = run(DiffEditorSampler, eta=0.0, eta_outside=0.0, eta_start=0.0, eta_end=1.0)[0]
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(sd15_model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(1.0)
        out = SamplerCustomAdvanced().sample(Noise_EmptyNoise(), guider, sampler, sigmas, latent)[0]["samples"]
    assert torch.isfinite(out).all()
    assert tm.weights_hash(sd15_model) == before
    with pytest.raises(ValueError, match="points"):
        run(DiffEditorDragOptimize, model=sd15_model, positive=conds[0], negative=conds[1], trajectory=traj,
            points=f"40,40->{W + 10},40", strength=0.7, steps=5, lr=0.01, r_m=1, r_p=3, lam=0.1)


def test_sampler_shares_kv_after_a_drag(sd15_model, conds, source):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced

    from diffeditor.nodes.drag import DiffEditorDragOptimize
    from diffeditor.nodes.sampler import DiffEditorSampler

    traj, _ = source
    latent, sigmas, _ = run(DiffEditorDragOptimize, model=sd15_model, positive=conds[0], negative=conds[1],
                            trajectory=traj, points="40,40->80,40", strength=0.7, steps=3, lr=0.01, r_m=1, r_p=3,
                            lam=0.1)
    outs = []
    for kv in (None, traj):
        sampler = run(DiffEditorSampler, eta=0.0, eta_outside=0.0, eta_start=0.0, eta_end=1.0, kv_trajectory=kv,
                      kv_mode="replace")[0]
        with torch.inference_mode():
            guider = comfy.samplers.CFGGuider(sd15_model)
            guider.set_conds(conds[0], conds[1])
            guider.set_cfg(1.0)
            outs.append(SamplerCustomAdvanced().sample(Noise_EmptyNoise(), guider, sampler, sigmas, latent)[0]["samples"])
    assert torch.isfinite(outs[1]).all() and not torch.allclose(outs[0], outs[1])


def test_paste_reference_scale_resizes_the_pasted_object(sd15_model, conds, latent, source):
    """The paste scale (official: the reference image is rescaled before inversion) through the nodes:
    DiffEditor Paste Reference rescales the image and the mask together, the spec pastes the rescaled
    object, and the object that lands in the base image has scale^2 of the area."""
    from diffeditor.nodes.edit import _task

    traj, _ = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    img = torch.full((1, H, W, 3), 0.5)
    img[:, 32:64, 24:56] = torch.tensor([1.0, 0.0, 0.0])  # a red 32x32 object
    m = square_mask(H, W, 32, 64, 24, 56)
    areas = {}
    for scale in (0.5, 1.0, 1.5):
        out_img, out_mask = run(DiffEditorPasteReference, image=img, mask=m, scale=scale)
        assert out_img.shape == img.shape and out_mask.shape == (1, H, W)
        red = (out_img[0, ..., 0] > 0.75) & (out_img[0, ..., 1] < 0.25)
        assert abs(float(red.sum()) / 1024 - scale ** 2) < 0.06, scale  # the reference object, rescaled
        assert abs(float((out_mask > 0.5).sum()) / 1024 - scale ** 2) < 0.06, scale
        # invert "the rescaled reference" (here: the source latent; the geometry is what matters) and paste
        spec = run(DiffEditorPasteSpec, reference=traj, mask=out_mask, dx=16, dy=16)[0]
        task = _task(spec, traj, None)
        areas[scale] = float(task.geometry.m_b.sum())
        assert torch.isfinite(edit(sd15_model, conds, traj, spec, options=options(visual_cross_attention="off"),
                                   guidance_strength=0.0)).all()
    assert abs(areas[0.5] / areas[1.0] - 0.25) < 0.06 and abs(areas[1.5] / areas[1.0] - 2.25) < 0.2
    with pytest.raises(ValueError, match="^scale: "):
        run(DiffEditorPasteReference, image=img, mask=m, scale=float("nan"))
    with pytest.raises(ValueError, match="^mask: .*empty"):
        run(DiffEditorPasteReference, image=img, mask=torch.zeros(1, H, W), scale=0.5)
    with pytest.raises(ValueError, match="^image: .*reference image is 64x64"):
        run(DiffEditorPasteReference, image=torch.zeros(1, 64, 64, 3), mask=m, scale=0.5)


def test_bad_inputs_found_by_the_server_catalogue(sd15_model, conds, latent, source):
    """The cases of issue 12's catalogue that did not end in a clear message naming the input."""
    from diffeditor.nodes.drag import DiffEditorDragOptimize

    traj, sigmas = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    drag = dict(model=sd15_model, positive=conds[0], negative=conds[1], trajectory=traj, strength=0.7, steps=2,
                lr=0.01, r_m=1, r_p=3, lam=0.1)
    # Drag Optimize validates the mask size like the Edit node (a 96x96 mask for a 128x128 trajectory)
    with pytest.raises(ValueError, match=r"^mask is 96x96 pixels .*must be 128x128 pixels"):
        run(DiffEditorDragOptimize, points="40,40->72,48", mask=square_mask(96, 96, 16, 80, 16, 80), **drag)
    with pytest.raises(ValueError, match=r"^mask is 16x16 pixels"):  # a latent-size mask: also not the image
        run(DiffEditorDragOptimize, points="40,40->72,48", mask=square_mask(16, 16, 2, 10, 2, 10), **drag)
    # ... and says "points:" once
    for bad in ("40,40->nonsense", f"40,40->{W + 10},40", "", "5,5->5,5"):
        with pytest.raises(ValueError, match="^points: ") as e:
            run(DiffEditorDragOptimize, points=bad, **drag)
        assert "points: points" not in str(e.value)
    # Edit cfg: -1 is the documented auto; other negatives are rejected by name
    spec = run(DiffEditorMoveSpec, mask=square_mask(H, W, 32, 64, 24, 56), dx=16, dy=0, scale=1.0)[0]
    for cfg in (-0.5, -0.99, float("nan")):
        with pytest.raises(ValueError, match=r"^cfg: expected -1 \(the task's official cfg"):
            edit(sd15_model, conds, traj, spec, cfg=cfg)
    # the Edit Sampler names latent_image for a NaN latent
    sampler = run(DiffEditorEditSampler, trajectory=traj, spec=spec,
                  **dict(KNOBS, guidance_strength=0.0, options=options(visual_cross_attention="off")))[0]
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(sd15_model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(4.0)
        with pytest.raises(ValueError, match="^latent_image contains NaN"):
            SamplerCustomAdvanced().sample(Noise_EmptyNoise(), guider, sampler, sigmas,
                                           {"samples": torch.full(traj.shape, float("nan"))})
