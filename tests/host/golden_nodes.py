"""Golden outputs of the Edit nodes on the tiny real ComfyUI SD1.x MODEL: every task x preset, with the
node defaults and with a few non-default knobs, through DiffEditor Edit and through the Edit Sampler in core
SamplerCustomAdvanced.

The cases are written in the *first* Edit-node interface (every knob on the node, -1 = auto). They were
recorded with that interface (``COMFYUI_ROOT=... python tests/host/golden_nodes.py --record``, before the
options redesign); ``test_golden_nodes.py`` runs them through today's nodes, after migrating the old inputs
with ``workflows/migrate.py`` (the same migration the workflow builder offers users), and asserts
``torch.equal``: the redesign changed the interface, not one bit of the result.
"""
from __future__ import annotations

import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "data" / "golden_nodes.pt"
STEPS = 10
PRESETS = ("DiffEditor", "DragonDiffusion")



def old_defaults() -> dict:
    """The first Edit-node interface's widget defaults: every knob, -1 = auto (samplers.edit.LEGACY_KNOBS)."""
    from diffeditor.samplers.edit import LEGACY_KNOBS

    return dict(seed=42, keep_background=False, **LEGACY_KNOBS)


# Non-default knob sets (old interface) whose results the new interface must reproduce exactly.
VARIANTS = {
    "defaults": {},
    "strong_late_concat": dict(energy=1.0, guidance_start=0.1, guidance_end=0.4, sde_strength_outside=0.1,
                               time_travel_repeats=1, visual_cross_attention="concat", kv_start=0.2, kv_end=0.9),
    "sde_tt_on_keep": dict(sde_strength=0.3, sde_start=0.2, sde_end=0.5, time_travel_repeats=2,
                           time_travel_start=0.4, time_travel_end=0.7, keep_background=True, seed=7),
    "no_guidance_no_kv": dict(energy=0.0, regional=False, sde_strength=0.0, visual_cross_attention="off"),
}


def square_mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, h, w)
    m[:, y0:y1, x0:x1] = 1
    return m


def build(model, conds, latent):
    """(source trajectory, reference trajectory, sigmas, {case: (spec node, spec inputs)})."""
    from diffeditor.nodes.inversion import DiffEditorInvert

    def invert(lat):
        with torch.inference_mode():
            return DiffEditorInvert.execute(model=model, positive=conds[0], negative=conds[1], latent=lat,
                                            steps=STEPS, scheduler="ddim_uniform", cfg=1.0, exact=False,
                                            exact_iters=10, record_kv_bank=True, bank_start=0.0, bank_end=1.0,
                                            kv_budget_mb=4096.0).result

    traj, _, sigmas = invert(latent)
    ref, _, _ = invert({"samples": latent["samples"].flip(-1)})
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    m = square_mask(H, W, 32, 64, 24, 56)
    specs = {
        "move": ("DiffEditorMoveSpec", dict(mask=m, dx=32, dy=8, scale=1.0)),
        "resize": ("DiffEditorMoveSpec", dict(mask=m, dx=0, dy=0, scale=1.3)),
        "drag": ("DiffEditorDragSpec", dict(points="40,40->72,48", mask=square_mask(H, W, 16, 80, 16, 100))),
        "appearance": ("DiffEditorAppearanceSpec", dict(mask=m, reference=ref, ref_mask=m.flip(-1))),
        "paste": ("DiffEditorPasteSpec", dict(reference=ref, mask=m.flip(-1), dx=-32, dy=16)),
    }
    return traj, ref, sigmas, specs


def cases():
    """``(name, spec case, preset, old knobs)`` of every recorded run."""
    out = []
    for spec in ("move", "resize", "drag", "appearance", "paste"):
        for preset in PRESETS:
            out.append((f"{spec}/{preset}/defaults", spec, preset, {}))
    for variant in ("strong_late_concat", "sde_tt_on_keep", "no_guidance_no_kv"):
        for spec, preset in (("move", "DiffEditor"), ("paste", "DragonDiffusion")):
            out.append((f"{spec}/{preset}/{variant}", spec, preset, VARIANTS[variant]))
    return out


def advanced(model, conds, sampler, sigmas, shape, cfg):
    """Core SamplerCustomAdvanced with a core CFGGuider, no added noise (the host tests' one wiring)."""
    from test_edit_nodes import advanced as core_advanced

    return core_advanced(model, conds, sampler, sigmas, shape, cfg)


def record_old_interface(model, conds, latent) -> dict:
    """Run every case through the first Edit-node interface (only valid on the code that still has it)."""
    import diffeditor.nodes.edit as E

    traj, _, sigmas, specs = build(model, conds, latent)
    out = {}
    for name, spec_case, preset, knobs in cases():
        node, inputs = specs[spec_case]
        inputs = dict(inputs)
        if node == "DiffEditorPasteSpec":
            inputs["scale"] = 1.0
        with torch.inference_mode():
            spec = getattr(E, node).execute(**inputs).result[0]
            k = dict(old_defaults(), **knobs)
            out[f"edit/{name}"] = E.DiffEditorEdit.execute(model=model, positive=conds[0], negative=conds[1],
                                                           trajectory=traj, spec=spec, cfg=-1.0, preset=preset,
                                                           **k).result[0]["samples"]
            sampler = E.DiffEditorEditSampler.execute(trajectory=traj, spec=spec, preset=preset, **k).result[0]
        cfg = {"appearance": 5.0}.get(spec.task, 4.0)
        out[f"sampler/{name}"] = advanced(model, conds, sampler, sigmas, traj.shape, cfg)
    return out


if __name__ == "__main__":
    ROOT = HERE.parents[1]
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_bootstrap

    comfy_bootstrap.setup()
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    import comfy_tiny as tm

    if "--record" in sys.argv:
        torch.set_num_threads(1)
        model = tm.build_sd15(seed=0)
        conds = (tm.random_conditioning(10), tm.random_conditioning(11, scale=0.5))
        data = {"torch": str(torch.__version__), "outputs": record_old_interface(model, conds, tm.random_latent(3))}
        DATA.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, DATA)
        print(f"wrote {DATA.relative_to(ROOT)}: {len(data['outputs'])} outputs")
