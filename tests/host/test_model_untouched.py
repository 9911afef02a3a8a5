"""The user's MODEL is never mutated: every weight and buffer (object, storage, inference flag, values) and the
patcher's state are compared before and after each node of a graph whose two branches share one MODEL.

Branch A edits with gradients (the one-node Edit, whose guidance backpropagates through the UNet); branch B runs
every other node that takes the MODEL or samples with it (patching nodes, SAMPLER nodes inside core
SamplerCustomAdvanced with a core CFGGuider on the MODEL, Drag Optimize, Reconstruct, Warp & Inpaint).
Branch A's result is the same before and after branch B ran. The tiny model is built under
``torch.inference_mode`` like a loaded checkpoint, so its weights are inference tensors: replacing them by clones
(even with equal values) is seen.
"""
import comfy.samplers
import torch
from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced

import comfy_tiny as tm
from diffeditor.nodes.drag import DiffEditorDragOptimize
from diffeditor.nodes.edit import DiffEditorEdit, DiffEditorEditSampler, DiffEditorMoveSpec
from diffeditor.nodes.erasure import DiffEditorEraseConcept, DiffEditorSafeGuidance
from diffeditor.nodes.image_prompt import DiffEditorImagePrompt
from diffeditor.nodes.inversion import DiffEditorInvert, DiffEditorReconstruct
from diffeditor.nodes.sampler import DiffEditorMaskedBlend, DiffEditorSampler
from diffeditor.nodes.warp import DiffEditorWarpInpaint

STEPS = 8
KNOBS = dict(preset="DiffEditor", seed=42, guidance_strength=1.0, keep_background=False)  # the official preset


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result


def advanced(model, conds, sampler, sigmas, latent, cfg=4.0):
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(cfg)
        return SamplerCustomAdvanced().sample(Noise_EmptyNoise(), guider, sampler, sigmas, latent)[0]["samples"]


def ksample(model, conds, steps=4):
    lat = tm.random_latent(7)["samples"]
    with torch.inference_mode():
        import comfy.sample

        noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(3))
        return comfy.sample.sample(model, noise, steps, 4.0, "ddim", "ddim_uniform", conds[0], conds[1],
                                   torch.zeros_like(lat), seed=3)


def test_shared_model_is_never_mutated_by_any_node(sd15_model, conds, latent):
    from test_erasure_nodes import build_clip
    from test_image_prompt_nodes import FakeClipVision, fix_widths, image_prompt_for

    model = sd15_model
    assert next(model.model.diffusion_model.parameters()).is_inference()  # like weights loaded by the executor
    ref = tm.model_state(model)
    seen = []

    def rebase():
        nonlocal ref
        ref = tm.model_state(model)

    def check(step, objects=True):
        seen.append(step)
        diff = tm.state_diff(ref, tm.model_state(model), objects)
        assert not diff, f"{step} mutated the shared MODEL: {len(diff)} entries differ, e.g. {diff[:6]}"

    # the common root of both branches
    traj, _, sigmas = run(DiffEditorInvert, model=model, positive=conds[0], negative=conds[1], latent=latent,
                          steps=STEPS, scheduler="ddim_uniform", cfg=1.0, exact=True, exact_iters=2,
                          record_kv_bank=True, bank_start=0.0, bank_end=1.0, kv_budget_mb=4096.0)
    check("DiffEditor Invert")
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    mask = torch.zeros(1, H, W)
    mask[:, 32:64, 24:56] = 1
    spec = run(DiffEditorMoveSpec, mask=mask, dx=24, dy=0, scale=1.0)[0]

    def branch_a():
        out = run(DiffEditorEdit, model=model, positive=conds[0], negative=conds[1], trajectory=traj, spec=spec,
                  cfg=-1.0, **KNOBS)[0]["samples"]
        check("DiffEditor Edit (guidance gradients through the UNet)")
        return out

    first = branch_a()

    # branch B: every other node that takes the MODEL or samples with it
    sampler = run(DiffEditorEditSampler, trajectory=traj, spec=spec, **KNOBS)[0]
    edited = advanced(model, conds, sampler, sigmas, {"samples": torch.zeros(traj.shape)})
    check("DiffEditor Edit Sampler in SamplerCustomAdvanced (gradients, the MODEL in a core CFGGuider)")
    assert torch.allclose(edited, first, atol=1e-5)

    dragged, tail, _ = run(DiffEditorDragOptimize, model=model, positive=conds[0], negative=conds[1],
                           trajectory=traj, points="40,40->64,40", strength=0.7, steps=3, lr=0.01, r_m=1, r_p=3,
                           lam=0.1, mask=mask)
    check("DiffEditor Drag Optimize (Adam through the UNet)")
    blend = run(DiffEditorMaskedBlend, sampler=run(DiffEditorSampler, eta=0.3, eta_outside=0.0, eta_start=0.0,
                                                    eta_end=1.0, kv_trajectory=traj, kv_mode="replace")[0],
                trajectory=traj, mask=mask, feather_px=4.0, schedule="every step", fraction=1.0)[0]
    check("DiffEditor Sampler / Masked Blend")
    advanced(model, conds, blend, sigmas, {"samples": torch.zeros(traj.shape)}, cfg=2.0)
    check("Masked Blend(DiffEditor Sampler) in SamplerCustomAdvanced")

    run(DiffEditorReconstruct, model=model, positive=conds[0], negative=conds[1], trajectory=traj, cfg=1.0)
    check("DiffEditor Reconstruct")
    run(DiffEditorWarpInpaint, model=model, positive=conds[0], negative=conds[1], trajectory=traj, spec=spec,
        strength=0.5, cfg=4.0, seed=1, grow=0)
    check("DiffEditor Warp & Inpaint")

    safety = tm.random_conditioning(12)
    guided = run(DiffEditorSafeGuidance, model=model, safety=safety, preset="max", warmup_steps=0,
                 guidance_scale=0.0, threshold=0.0, momentum_scale=0.0, momentum_beta=0.0)[0]
    check("DiffEditor Safe Guidance")
    ksample(guided, conds)
    check("KSampler with the Safe Guidance MODEL")

    ip = fix_widths(model, image_prompt_for(model))
    with_ip = run(DiffEditorImagePrompt, model=model, clip_vision=FakeClipVision(), image=torch.rand(1, 64, 64, 3),
                  image_prompt=ip, scale=0.5, start=0.0, end=1.0)[0]
    check("DiffEditor Image Prompt")
    ksample(with_ip, conds)
    check("KSampler with the Image Prompt MODEL")

    erased = run(DiffEditorEraseConcept, model=model, clip=build_clip("sd15"), concepts="red", guide="",
                 preserve="", erase_scale=1.0, preserve_scale=1.0, lam=0.5)[0]
    check("DiffEditor Erase Concept")
    ksample(erased, conds)  # ComfyUI patches the shared weights while the erased clone is loaded ...
    ksample(model, conds)  # ... and restores them when the user's MODEL is loaded again (in new Parameter
    check("KSampler with the erased MODEL, then with the MODEL", objects=False)  # objects on the same storage)
    rebase()  # from here on, the re-wrapped parameters are the ones that must stay

    # branch A again: the same result after everything branch B did with the shared MODEL
    assert torch.equal(branch_a(), first)
    assert len(seen) == 15
