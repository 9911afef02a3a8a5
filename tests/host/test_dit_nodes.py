"""The pack's nodes on tiny in-process Flux.1 (dev) and SD3 MODELs: the same nodes as on SD1.5, end to end.

* The Flux and SD3 example workflows (``workflows/api``) run as graphs: every DiffEditor and core node of the
  committed API prompt executes in-process with the committed widget values, only the loaders' outputs are
  substituted (the tiny MODEL, a CLIP that returns the tiny models' conditioning, a fixed linear "VAE"): their
  real text encoders (T5-XXL) and weights cannot be built on a test machine.
* Every editing node on both families: Invert, Reconstruct, DiffEditor Sampler, Masked Blend, Edit (DiffEditor
  and DiffEditor+) for move, resize, drag, appearance and paste, Edit Sampler, Stable Edit, Warp & Inpaint, Drag
  Optimize (DragDiffusion and AlDD).
* Bad input: an unsupported family names ``model``; cfg above 1 on guidance-distilled Flux names ``cfg``; an
  SD1.5 trajectory into a Flux edit; a trajectory of another resolution; UCE, SLD and the image prompt refuse a
  DiT naming ``model``.

The tiny models are random, so these tests check plumbing and the regional contracts (what changes where),
not image quality.
"""
import json
import pathlib
import re

import pytest
import torch

import comfy_tiny as tm
from diffeditor.nodes.drag import DiffEditorDragOptimize
from diffeditor.nodes.edit import (DiffEditorAppearanceSpec, DiffEditorDragSpec, DiffEditorEdit,
                                   DiffEditorEditSampler, DiffEditorMoveSpec, DiffEditorPasteSpec, _task)
from diffeditor.nodes.inversion import DiffEditorInvert, DiffEditorReconstruct
from diffeditor.nodes.sampler import DiffEditorMaskedBlend, DiffEditorSampler
from diffeditor.nodes.stability import DiffEditorStableEdit
from diffeditor.nodes.warp import DiffEditorWarpInpaint

WF = pathlib.Path(__file__).resolve().parents[2] / "workflows"
STEPS = 6
SIZE = 128  # pixels: the tiny models' 16x16 latent
FAMILIES = ("flux", "sd3")
KNOBS = dict(seed=42, guidance_strength=1.0, keep_background=False)


def changed_region(spec, traj, preset="DiffEditor+"):
    """Where an edit may change the latent: the task's edited region; for a DiffEditor+ warp also wherever the
    warp lands (a drag moves its whole region with the points, so the object can land outside it; the same on
    SD1.5)."""
    from diffeditor.nodes.edit import spec_warp

    region = _task(spec, traj, None).edited_region > 0.5
    if preset == "DiffEditor+" and spec.task in ("move", "drag", "paste"):
        w = spec_warp(spec, traj)
        region = region | w.target.to(region.device)[None, None] | w.hole.to(region.device)[None, None]
    return region.expand(traj.shape)


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result


@pytest.fixture(scope="module")
def dit():
    """{family: (MODEL, (positive, negative), LATENT)} for the tiny Flux.1 dev and SD3 MODELs."""
    out = {}
    for family, build in (("flux", tm.build_flux), ("sd3", tm.build_sd3)):
        conds = (tm.dit_conditioning(40, family), tm.dit_conditioning(41, family, scale=0.5))
        out[family] = (build(), conds, tm.dit_latent(33))
    return out


def invert(model, conds, latent, bank=True, steps=STEPS, cfg=1.0):
    return run(DiffEditorInvert, model=model, positive=conds[0], negative=conds[1], latent=latent, steps=steps,
               scheduler="simple", cfg=cfg, exact=False, exact_iters=3, record_kv_bank=bank, bank_start=0.0,
               bank_end=1.0, kv_budget_mb=4096.0)


@pytest.fixture(scope="module")
def sources(dit):
    """{family: (trajectory with a K,V bank, its sigmas)}."""
    out = {}
    for family, (model, conds, latent) in dit.items():
        traj, _, sigmas = invert(model, conds, latent)
        out[family] = (traj, sigmas)
    return out


def square(y0, y1, x0, x1, size=SIZE):
    m = torch.zeros(1, size, size)
    m[:, y0:y1, x0:x1] = 1
    return m


def edit(model, conds, traj, spec, preset, family, **over):
    return run(DiffEditorEdit, model=model, positive=conds[0], negative=conds[1], trajectory=traj, spec=spec,
               cfg=-1.0, preset=preset, **dict(KNOBS, **over))[0]["samples"]


def advanced(model, conds, sampler, sigmas, latent, cfg=1.0):
    """Core SamplerCustomAdvanced, a CFGGuider (cfg 1 on Flux: its guidance is in the conditioning), no noise."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(cfg)
        return SamplerCustomAdvanced().sample(Noise_EmptyNoise(), guider, sampler, sigmas, latent)[0]


# --------------------------------------------------------------------------------------- the workflows
class _TinyClip:
    """What a CLIP loader gives the graph: CLIPTextEncode returns the tiny models' conditioning."""

    def __init__(self, family):
        self.family = family


class _LinearVAE:
    """A fixed linear stand-in for the Flux / SD3 VAE (16 latent channels, 8 pixels a cell): enough for the
    graph's VAEEncode / VAEDecode plumbing; the models are random anyway."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(16, 3, generator=g)

    def encode(self, pixels):
        x = torch.nn.functional.avg_pool2d(pixels[..., :3].movedim(-1, 1).float(), 8)
        return torch.einsum("cd,bdhw->bchw", self.w, x - 0.5)

    def decode(self, latent):
        x = torch.einsum("dc,bchw->bdhw", torch.linalg.pinv(self.w), latent.float()) + 0.5
        return torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest").movedim(1, -1).clamp(0, 1)


def _asset(name):
    import numpy as np
    from PIL import Image

    with Image.open(WF / "assets" / name) as im:
        a = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.NEAREST), dtype=np.float32) / 255
    return torch.from_numpy(a)[None]


def run_graph(api: dict, models: dict, family: str) -> dict:
    """Execute an API prompt in-process in its (topological) order: DiffEditor and core nodes as they are,
    the loaders' outputs and the text encoders substituted; returns {node id: outputs}."""
    import nodes as comfy_nodes
    from comfy_extras.nodes_flux import FluxGuidance

    from diffeditor.nodes import NODE_LIST

    model, conds, _ = models[family]
    vae, saved = _LinearVAE(), []
    pack = {cls.define_schema().node_id: cls for cls in NODE_LIST}

    def encode(clip, text):  # the prompt -> the tiny positive, "" -> the tiny negative (no guidance set)
        c, opts = conds[0 if text else 1][0]
        return ([[c, {k: v for k, v in opts.items() if k != "guidance"}]],)

    substitute = {
        "UNETLoader": lambda **kw: (model,),
        "CheckpointLoaderSimple": lambda **kw: (model, _TinyClip(family), vae),
        "DualCLIPLoader": lambda **kw: (_TinyClip(family),),
        "TripleCLIPLoader": lambda **kw: (_TinyClip(family),),
        "VAELoader": lambda **kw: (vae,),
        "CLIPTextEncode": encode,
        "LoadImage": lambda image: (_asset(image), torch.zeros(1, SIZE, SIZE)),
        "VAEEncode": lambda pixels, vae: ({"samples": vae.encode(pixels)},),
        "VAEDecode": lambda samples, vae: (vae.decode(samples["samples"]),),
        "SaveImage": lambda images, filename_prefix: saved.append(images) or (),
        "PreviewImage": lambda images: (),
    }
    outputs = {}
    for nid in sorted(api, key=int):
        node = api[nid]
        t = node["class_type"]
        kw = {k: (outputs[v[0]][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
        if t in substitute:
            out = substitute[t](**kw)
        elif t == "FluxGuidance":
            out = FluxGuidance.execute(**kw).result
        elif t in pack:
            out = run(pack[t], **kw)
        else:
            cls = comfy_nodes.NODE_CLASS_MAPPINGS[t]
            with torch.inference_mode():
                out = getattr(cls(), cls.FUNCTION)(**kw)
        outputs[nid] = out
    outputs["saved"] = saved
    return outputs


def shrink(api: dict) -> dict:
    """The committed prompt with fewer inversion steps (a DiffEditor Canvas whose editor state records its image
    size scales its own coordinates to the 128x128 image)."""
    g = json.loads(json.dumps(api))
    for node in g.values():
        if node["class_type"] == "DiffEditorInvert":
            node["inputs"]["steps"] = STEPS
        assert node["class_type"] != "DiffEditorCanvas" or '"size":[512,512]' in node["inputs"]["editor"]
    return g


def _workflow(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffeditor_workflow_build", WF / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return json.loads((WF / "api" / f"{build.NAMES[name]}.json").read_text())


@pytest.mark.parametrize("name", ["flux_move", "flux_drag", "sd3_move"])
def test_dit_workflow_graph_runs(dit, name):
    """The committed Flux / SD3 API workflow, executed node by node on the tiny MODEL of its family."""
    family = name.split("_")[0]
    api = shrink(_workflow(name))
    before = tm.weights_hash(dit[family][0])
    out = run_graph(api, dit, family)
    (image,) = out["saved"]
    assert image.shape == (1, SIZE, SIZE, 3) and torch.isfinite(image).all()
    edit_id = next(k for k, n in api.items() if n["class_type"] == "DiffEditorEdit")
    inv_id = next(k for k, n in api.items() if n["class_type"] == "DiffEditorInvert")
    traj = out[inv_id][0]
    assert traj.param == "flow" and traj.steps == STEPS
    result = out[edit_id][0]["samples"]
    src = dit[family][0].model.process_latent_out(traj.x0.float())
    canvas = out[next(k for k, n in api.items() if n["class_type"] == "DiffEditorCanvas")]
    inside = changed_region(canvas[0], traj)
    # DiffEditor+ (the workflows' preset) warps the object and paints the uncovered area: the outside is the
    # source, the edited region changed
    assert torch.allclose(result[~inside], src[~inside], atol=1e-4)
    assert float((result - src)[inside].abs().mean()) > 1e-2
    assert tm.weights_hash(dit[family][0]) == before


def test_flux_workflow_positive_carries_flux_guidance(dit):
    api = shrink(_workflow("flux_move"))
    out = run_graph(api, dit, "flux")
    edit = next(n for n in api.values() if n["class_type"] == "DiffEditorEdit")
    pos = out[edit["inputs"]["positive"][0]][0]
    assert pos[0][1]["guidance"] == 3.5 and edit["inputs"]["cfg"] == 1.0


# ------------------------------------------------------------------------------------------ every node
@pytest.mark.parametrize("family", FAMILIES)
def test_invert_reconstruct_sampler_and_masked_blend(dit, sources, family):
    import comfy.samplers

    model, conds, latent = dit[family]
    traj, sigmas = sources[family]
    assert traj.param == "flow" and len(traj.latents) == STEPS + 1 and traj.bank is not None
    # the trajectory starts at the source itself (a flow model's sampler would scale a start latent by 1 - sigma)
    assert torch.allclose(traj.x0, model.model.process_latent_in(latent["samples"]).to(traj.x0), atol=1e-6)
    (rec,) = run(DiffEditorReconstruct, model=model, positive=conds[0], negative=conds[1], trajectory=traj, cfg=1.0)
    src = latent["samples"]
    assert rec["samples"].shape == src.shape and torch.isfinite(rec["samples"]).all()
    err = float((rec["samples"] - src).abs().max())
    # DiffEditor Sampler from the trajectory's z_T is the same deterministic sampling
    (sampler,) = run(DiffEditorSampler, eta=0.0, eta_outside=0.0, eta_start=0.0, eta_end=1.0, trajectory=traj)
    out = advanced(model, conds, sampler, sigmas, {"samples": torch.zeros_like(src)})
    gap = float((out["samples"] - rec["samples"]).abs().max())
    assert gap < 1e-4, gap
    assert err < 3.0
    # regional eta: reproducible with a seed, and it changes the result
    (sde,) = run(DiffEditorSampler, eta=1.0, eta_outside=0.0, eta_start=0.0, eta_end=0.5, trajectory=traj,
                 eta_mask=square(32, 96, 32, 96))
    a = advanced(model, conds, sde, sigmas, {"samples": torch.zeros_like(src)})["samples"]
    assert torch.isfinite(a).all() and float((a - out["samples"]).abs().max()) > 1e-3
    # Masked Blend around a core sampler with another prompt: outside the mask the source
    other = (tm.dit_conditioning(99, family), conds[1])
    (blend,) = run(DiffEditorMaskedBlend, sampler=comfy.samplers.sampler_object("euler"), trajectory=traj,
                   mask=square(40, 88, 40, 88), feather_px=0.0, schedule="every step", fraction=1.0)
    _, inverted, _ = invert(model, conds, latent, bank=False)
    blended = advanced(model, other, blend, sigmas, inverted)["samples"]
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[5:11, 5:11] = False
    assert float((blended - src)[..., outside].abs().max()) < 1e-3
    assert float((blended - src)[..., ~outside].abs().max()) > 1e-3


def _specs(model, conds, latent, traj):
    ref_traj, _, _ = invert(model, conds, {"samples": latent["samples"].flip(-1)})
    m = square(32, 64, 24, 56)
    return {
        "move": run(DiffEditorMoveSpec, mask=m, dx=32, dy=0, scale=1.0)[0],
        "resize": run(DiffEditorMoveSpec, mask=m, dx=0, dy=0, scale=1.3)[0],
        "drag": run(DiffEditorDragSpec, points="40,40->72,48", mask=square(16, 80, 16, 100))[0],
        "appearance": run(DiffEditorAppearanceSpec, mask=m, reference=ref_traj, ref_mask=m.flip(-1))[0],
        "paste": run(DiffEditorPasteSpec, reference=ref_traj, mask=m.flip(-1), dx=-32, dy=16)[0],
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", ["DiffEditor", "DiffEditor+"])
def test_edit_every_task(dit, sources, family, preset):
    """Edit on the DiT for move, resize, drag, appearance and paste: finite, the edit region changed more than
    the outside; DiffEditor+ keeps the outside exactly (its warp plans and its locked guided edit)."""
    model, conds, latent = dit[family]
    traj, _ = sources[family]
    before = tm.weights_hash(model)
    src = model.model.process_latent_out(traj.x0.float())
    for task, spec in _specs(model, conds, latent, traj).items():
        out = edit(model, conds, traj, spec, preset, family)
        assert out.shape == traj.shape and torch.isfinite(out).all(), (task, preset)
        inside = changed_region(spec, traj, preset)
        d = (out - src).abs()
        assert float(d[inside].mean()) > 1e-2, (task, preset)
        if preset == "DiffEditor+":
            assert float(d[~inside].max()) < 1e-3, (task, float(d[~inside].max()))
        else:
            assert float(d[inside].mean()) > float(d[~inside].mean()), (task, preset)
    assert tm.weights_hash(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_sampler_equals_the_edit(dit, sources, family):
    model, conds, latent = dit[family]
    traj, sigmas = sources[family]
    spec = run(DiffEditorMoveSpec, mask=square(32, 64, 24, 56), dx=16, dy=8, scale=1.2)[0]
    for preset in ("DiffEditor", "DiffEditor+"):
        (sampler,) = run(DiffEditorEditSampler, trajectory=traj, spec=spec, preset=preset, **KNOBS)
        cfg = 1.0 if family == "flux" else 4.0  # the Edit's -1: 1 on Flux, the official move cfg on SD3
        out = advanced(model, conds, sampler, sigmas, {"samples": torch.zeros(traj.shape)}, cfg=cfg)["samples"]
        ref = edit(model, conds, traj, spec, preset, family)
        assert torch.allclose(out, ref, atol=1e-4), (preset, float((out - ref).abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_stable_edit_and_warp_inpaint(dit, sources, family):
    model, conds, latent = dit[family]
    traj, _ = sources[family]
    spec = run(DiffEditorMoveSpec, mask=square(32, 64, 24, 56), dx=32, dy=0, scale=1.0)[0]
    out, report = run(DiffEditorStableEdit, model=model, positive=conds[0], negative=conds[1], trajectory=traj,
                      spec=spec, cfg=-1.0, threshold_db=35.0, max_level=3, preset="DiffEditor", **KNOBS)
    assert torch.isfinite(out["samples"]).all() and "level" in report.lower()
    cfg = 1.0 if family == "flux" else 4.0
    warped, start = run(DiffEditorWarpInpaint, model=model, positive=conds[0], negative=conds[1], trajectory=traj,
                        spec=spec, strength=0.5, cfg=cfg, seed=42, grow=0)
    assert torch.isfinite(warped["samples"]).all() and start["samples"].shape == traj.shape
    src = model.model.process_latent_out(traj.x0.float())
    inside = changed_region(spec, traj)
    assert float((warped["samples"] - src)[~inside].abs().max()) < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["DragDiffusion", "AlDD"])
def test_drag_optimize(dit, sources, family, method):
    model, conds, latent = dit[family]
    traj, _ = sources[family]
    before = tm.weights_hash(model)
    dragged, sigmas, handles = run(DiffEditorDragOptimize, model=model, positive=conds[0], negative=conds[1],
                                   trajectory=traj, points="40,40->72,40", strength=0.7, steps=3, lr=0.01, r_m=1,
                                   r_p=3, lam=0.1, method=method, mask=square(16, 80, 16, 110))
    assert dragged["samples"].shape == traj.shape and torch.isfinite(dragged["samples"]).all()
    assert len(handles.splitlines()) == 1 and float(sigmas[-1]) == 0.0
    (sampler,) = run(DiffEditorSampler, eta=0.0, eta_outside=0.0, eta_start=0.0, eta_end=1.0)
    out = advanced(model, conds, sampler, sigmas, dragged)
    assert torch.isfinite(out["samples"]).all()
    assert tm.weights_hash(model) == before


# ------------------------------------------------------------------------------------------- bad input
def test_guidance_distilled_flux_takes_cfg_1(dit, sources):
    """Flux dev: the Edit's -1 is 1 and anything above 1 is refused naming cfg, on every node with a cfg."""
    from diffeditor.nodes.edit import edit_cfg

    model, conds, latent = dit["flux"]
    traj, _ = sources["flux"]
    assert edit_cfg(model, -1.0, "move") == 1.0 and edit_cfg(model, 1.0, "appearance") == 1.0
    assert edit_cfg(dit["sd3"][0], -1.0, "move") == 4.0 and edit_cfg(dit["sd3"][0], -1.0, "appearance") == 5.0
    spec = run(DiffEditorMoveSpec, mask=square(32, 64, 24, 56), dx=32, dy=0, scale=1.0)[0]
    io = dict(model=model, positive=conds[0], negative=conds[1], trajectory=traj, spec=spec)
    cfg_msg = r"^cfg: .*guidance-distilled.*(FluxGuidance|cfg 1)"
    with pytest.raises(ValueError, match=cfg_msg):
        run(DiffEditorEdit, cfg=4.0, preset="DiffEditor", **io, **KNOBS)
    with pytest.raises(ValueError, match=cfg_msg):
        run(DiffEditorStableEdit, cfg=2.0, threshold_db=35.0, max_level=3, preset="DiffEditor", **io, **KNOBS)
    with pytest.raises(ValueError, match=cfg_msg):
        run(DiffEditorWarpInpaint, strength=0.5, cfg=4.0, seed=42, grow=0, **io)
    with pytest.raises(ValueError, match=cfg_msg):
        invert(model, conds, latent, bank=False, cfg=2.0)
    with pytest.raises(ValueError, match=cfg_msg):
        run(DiffEditorReconstruct, model=model, positive=conds[0], negative=conds[1], trajectory=traj, cfg=3.0)
    # the Edit Sampler inside SamplerCustomAdvanced: the guider's cfg is checked when it runs
    (sampler,) = run(DiffEditorEditSampler, trajectory=traj, spec=spec, preset="DiffEditor+", **KNOBS)
    with pytest.raises(ValueError, match=cfg_msg):
        advanced(model, conds, sampler, sources["flux"][1], {"samples": torch.zeros(traj.shape)}, cfg=4.0)
    # Flux schnell (no guidance embedding) is guidance-distilled too
    schnell = tm.build_flux(guidance_embed=False)
    assert edit_cfg(schnell, -1.0, "appearance") == 1.0
    with pytest.raises(ValueError, match=r"^cfg: .*guidance-distilled"):
        edit_cfg(schnell, 2.0, "move")
    # SD3 samples with true CFG: the official cfg is taken
    sd3, sd3_conds, _ = dit["sd3"]
    out = run(DiffEditorWarpInpaint, model=sd3, positive=sd3_conds[0], negative=sd3_conds[1],
              trajectory=sources["sd3"][0], spec=spec, strength=0.5, cfg=4.0, seed=42, grow=0)[0]
    assert torch.isfinite(out["samples"]).all()


def test_sd15_trajectory_into_a_flux_edit(dit, sd15_model, conds, latent):
    from diffeditor.nodes.edit import DiffEditorEdit as Edit

    sd_traj, _, _ = invert(sd15_model, conds, latent, bank=False, steps=4)
    model, fconds, _ = dit["flux"]
    spec = run(DiffEditorMoveSpec, mask=square(32, 64, 24, 56), dx=32, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match=r"^trajectory was inverted on a eps.*rectified flow.*invert the image again"):
        run(Edit, model=model, positive=fconds[0], negative=fconds[1], trajectory=sd_traj, spec=spec, cfg=-1.0,
            preset="DiffEditor+", **KNOBS)
    with pytest.raises(ValueError, match=r"^trajectory was inverted on a eps"):
        run(DiffEditorReconstruct, model=model, positive=fconds[0], negative=fconds[1], trajectory=sd_traj, cfg=1.0)
    # and a Flux trajectory into an SD3 edit: both flow, another model
    with pytest.raises(ValueError, match=r"^trajectory was inverted with another model"):
        run(Edit, model=dit["sd3"][0], positive=dit["sd3"][1][0], negative=dit["sd3"][1][1],
            trajectory=invert(model, fconds, dit["flux"][2], bank=False, steps=4)[0], spec=spec, cfg=-1.0,
            preset="DiffEditor+", **KNOBS)


def test_trajectory_of_another_resolution(dit, sources):
    model, conds, latent = dit["flux"]
    traj, sigmas = sources["flux"]
    big = {"samples": torch.nn.functional.interpolate(latent["samples"], size=(24, 24))}
    other, _, _ = invert(model, conds, big)
    paste = run(DiffEditorPasteSpec, reference=other, mask=square(32, 64, 24, 56, size=192), dx=0, dy=0)[0]
    with pytest.raises(ValueError, match=r"^reference trajectory latent is 24x24 but the latent given is 16x16"):
        edit(model, conds, traj, paste, "DiffEditor", "flux")
    spec = run(DiffEditorMoveSpec, mask=square(32, 64, 24, 56), dx=16, dy=0, scale=1.0)[0]
    with pytest.raises(ValueError, match=r"^spec: "):  # a 128x128 mask on the 192x192 trajectory
        edit(model, conds, other, spec, "DiffEditor", "flux")
    (sampler,) = run(DiffEditorEditSampler, trajectory=traj, spec=spec, preset="DiffEditor", **KNOBS)
    with pytest.raises(ValueError, match=r"^latent_image: it is 24x24 latent cells but the trajectory is 16x16"):
        advanced(model, conds, sampler, sigmas, {"samples": torch.zeros(1, 16, 24, 24)})


def _fake_model(dit, base_cls, cls_name, module):
    """The tiny Flux MODEL dressed as a model this ComfyUI has no DiT hook for (HiDream) or a video model (Wan): a
    copy of its BaseModel with that class and a backbone class of that name, without building one."""
    import copy

    import comfy.model_base

    model = dit["flux"][0]
    base = copy.copy(model.model)
    base.__class__ = getattr(comfy.model_base, base_cls)
    base.__dict__["_modules"] = dict(base._modules,
                                     diffusion_model=type(cls_name, (torch.nn.Module,), {"__module__": module})())
    clone = model.clone()
    clone.model = base
    return clone


@pytest.mark.parametrize("base_cls,cls_name,module,why", [
    ("HiDream", "HiDreamImageTransformer2DModel", "comfy.ldm.hidream.model", "no 'dit' block hook"),
    ("WAN21", "WanModel", "comfy.ldm.wan.model", "video model")])
def test_unsupported_family_names_model(dit, sources, base_cls, cls_name, module, why):
    """The MODEL input is named, the reason given and the supported families listed, on every node with one."""
    model = _fake_model(dit, base_cls, cls_name, module)
    conds, latent = dit["flux"][1], dit["flux"][2]
    traj = sources["flux"][0]
    spec = run(DiffEditorMoveSpec, mask=square(32, 64, 24, 56), dx=16, dy=0, scale=1.0)[0]
    msg = rf"^model: .*{why}.*SD1\.x, SD2\.x and SDXL.*Flux\.1.*SD3"
    with pytest.raises(ValueError, match=msg):
        invert(model, conds, latent, bank=False)
    with pytest.raises(ValueError, match=msg):
        edit(model, conds, traj, spec, "DiffEditor+", "flux")
    with pytest.raises(ValueError, match=msg):
        run(DiffEditorDragOptimize, model=model, positive=conds[0], negative=conds[1], trajectory=traj,
            points="40,40->72,40", strength=0.7, steps=3, lr=0.01, r_m=1, r_p=3, lam=0.1, method="DragDiffusion")


def test_uce_sld_and_image_prompt_refuse_a_dit(dit):
    from diffeditor.nodes.erasure import DiffEditorEraseConcept, DiffEditorSafeGuidance
    from diffeditor.nodes.image_prompt import DiffEditorImagePrompt

    for family in FAMILIES:
        model, conds, _ = dit[family]
        label = "Flux" if family == "flux" else "SD3"
        with pytest.raises(ValueError, match=rf"^model: the MODEL is a {label}.*cross-attention.*does not apply"):
            run(DiffEditorEraseConcept, model=model, clip=None, concepts="red", guide="", preserve="",
                erase_scale=1.0, preserve_scale=1.0, lam=0.5)
        with pytest.raises(ValueError, match=rf"^model: the MODEL is a {label}.*SLD"):
            run(DiffEditorSafeGuidance, model=model, safety=conds[0], preset="medium")
        with pytest.raises(ValueError, match=rf"^model: the MODEL is a {label}.*cross-attention adapter"):
            run(DiffEditorImagePrompt, model=model, clip_vision=None, image=torch.zeros(1, 64, 64, 3),
                image_prompt={"resampler": None}, scale=0.1, start=0.2, end=0.4)


@pytest.mark.parametrize("method", ["DragDiffusion", "AlDD"])
@pytest.mark.parametrize("family", FAMILIES)
def test_drag_optimize_latent_is_what_a_core_sampler_starts_from(dit, sources, family, method):
    """Sampling on from Drag Optimize's LATENT and SIGMAS (the documented wiring): the sampler must start from
    the optimised latent at sigma_k (with a vanishing learning rate: the trajectory's latent there). A flow
    MODEL divides a sampler's result by 1 - sigma_end and scales a start latent by 1 - sigma_start; the job
    re-expresses the latent so the two meet (comfy_jobs.start_latent_for_core)."""
    import comfy.samplers

    model, conds, _ = dit[family]
    traj, _ = sources[family]
    dragged, sigmas, _ = run(DiffEditorDragOptimize, model=model, positive=conds[0], negative=conds[1],
                             trajectory=traj, points="40,40->72,40", strength=0.7, steps=1, lr=1e-6, r_m=1, r_p=3,
                             lam=0.1, method=method)
    seen = []

    def first_input(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        seen.append(x.clone())
        return x

    advanced(model, conds, comfy.samplers.KSAMPLER(first_input), sigmas, dragged)
    k = traj.steps - (len(sigmas) - 1)
    want = traj.at(k, like=seen[0])
    if method == "DragDiffusion":  # the optimised latent at sigma_k itself
        gap = float((seen[0] - want).abs().max())
        assert gap < 1e-3, gap
    else:  # AlDD denoised from its start to step k: the trajectory's latent there up to the inversion's error
        rel = float((seen[0] - want).norm() / want.norm())  # (a latent scaled by (1 - s_k) / (1 - s_k+1): > 0.2)
        assert rel < 0.02, rel


@pytest.mark.parametrize("family", FAMILIES)
def test_drag_optimize_at_sigma_one_is_refused_naming_strength(dit, sources, family):
    """Strength 1 starts the drag at sigma 1, where a flow LATENT cannot carry the latent (1 - sigma = 0)."""
    model, conds, _ = dit[family]
    traj, _ = sources[family]
    assert float(traj.sigmas[0]) == 1.0
    with pytest.raises(ValueError, match=r"^strength: on a flow model"):
        run(DiffEditorDragOptimize, model=model, positive=conds[0], negative=conds[1], trajectory=traj,
            points="40,40->72,40", strength=1.0, steps=1, lr=1e-6, r_m=1, r_p=3, lam=0.1, method="DragDiffusion")
