"""The nodes' execute paths on a tiny real MODEL, run under torch.inference_mode() like the executor."""
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_adapter import layout_of, model_id
from diffeditor.nodes import NODE_LIST
from diffeditor.nodes.inversion import DiffEditorInvert, DiffEditorReconstruct
from diffeditor.nodes.sampler import DiffEditorMaskedBlend, DiffEditorSampler

STEPS = 10


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result


def invert(model, conds, latent, **kw):
    args = dict(model=model, positive=conds[0], negative=conds[1], latent=latent, steps=STEPS,
                scheduler="ddim_uniform", cfg=1.0, exact=False, exact_iters=10, record_kv_bank=False,
                bank_start=0.0, bank_end=1.0, kv_budget_mb=4096.0)
    args.update(kw)
    return run(DiffEditorInvert, **args)


@pytest.fixture(scope="module")
def model_hash(sd15_model):
    return tm.weights_hash(sd15_model)


@pytest.fixture(scope="module")
def exact(sd15_model, conds, latent, model_hash):
    return invert(sd15_model, conds, latent, exact=True)


def advanced(model, conds, sampler, sigmas, latent, cfg=1.0, seed=0):
    """Core SamplerCustomAdvanced with add_noise off (EmptyNoise) and a CFGGuider."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, Noise_RandomNoise, SamplerCustomAdvanced

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(cfg)
        noise = Noise_RandomNoise(seed) if seed else Noise_EmptyNoise()  # seed 0: add_noise off
        return SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)[0]


def test_schemas():
    ids = set()
    for cls in NODE_LIST:
        s = cls.define_schema()
        s.validate()
        assert s.node_id.startswith("DiffEditor") and s.category.startswith("DiffEditor/")
        assert all(i.tooltip for i in s.inputs) and all(o.tooltip for o in s.outputs), s.node_id
        ids.add(s.node_id)
    assert len(ids) == len(NODE_LIST) >= 10


def test_invert_outputs(sd15_model, latent, exact):
    traj, inverted, sigmas = exact
    assert len(traj.latents) == traj.steps + 1 == sigmas.shape[0] == STEPS + 1
    assert torch.equal(traj.sigmas, sigmas) and float(sigmas[-1]) == 0.0
    assert traj.model_id == model_id(sd15_model)
    x0 = sd15_model.model.process_latent_in(latent["samples"])
    assert torch.allclose(traj.x0, x0)
    # the LATENT output is z_T in raw VAE space
    assert torch.allclose(inverted["samples"], sd15_model.model.process_latent_out(traj.z_T), atol=1e-6)
    assert traj.exact_iters == 10 and traj.model_calls > STEPS and traj.exact_residuals[-1] < 1e-3


def test_reconstruct_plain_and_exact(sd15_model, conds, latent, exact):
    src = latent["samples"]
    plain_traj = invert(sd15_model, conds, latent)[0]
    assert plain_traj.model_calls == STEPS
    (rec_plain,) = run(DiffEditorReconstruct, model=sd15_model, positive=conds[0], negative=conds[1],
                       trajectory=plain_traj, cfg=1.0)
    (rec_exact,) = run(DiffEditorReconstruct, model=sd15_model, positive=conds[0], negative=conds[1],
                       trajectory=exact[0], cfg=1.0)
    err_plain = (rec_plain["samples"] - src).abs().max().item()
    err_exact = (rec_exact["samples"] - src).abs().max().item()
    assert err_plain < 3.0  # plain DDIM inversion is approximate (random tiny model: ~1.0)
    assert err_exact < 5e-3 and err_exact < 0.05 * err_plain


def test_core_sampler_regenerates_inverted_latent(sd15_model, conds, latent, exact):
    """The inverted LATENT works with core samplers: ddim (= deterministic DDIM), add_noise off."""
    import comfy.samplers

    _, inverted, sigmas = exact
    out = advanced(sd15_model, conds, comfy.samplers.sampler_object("ddim"), sigmas, inverted)
    assert (out["samples"] - latent["samples"]).abs().max().item() < 5e-3


def test_sampler_node_with_trajectory(sd15_model, conds, latent, exact):
    traj, inverted, sigmas = exact
    (sampler,) = run(DiffEditorSampler, eta=0.0, eta_outside=0.0, eta_start=0.0, eta_end=1.0, trajectory=traj)
    empty = {"samples": torch.zeros_like(latent["samples"])}
    out = advanced(sd15_model, conds, sampler, sigmas, empty)
    assert (out["samples"] - latent["samples"]).abs().max().item() < 5e-3
    # regional eta: the region changes, the run is reproducible with the same seed
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1
    (sde,) = run(DiffEditorSampler, eta=1.0, eta_outside=0.0, eta_start=0.0, eta_end=0.5, trajectory=traj,
                 eta_mask=mask)
    a = advanced(sd15_model, conds, sde, sigmas, empty, seed=7)["samples"]
    b = advanced(sd15_model, conds, sde, sigmas, empty, seed=7)["samples"]
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert (a - out["samples"]).abs().max().item() > 1e-2


def test_sampler_node_checks_trajectory(sd15_model, conds, latent, exact):
    import comfy.samplers

    traj, _, sigmas = exact
    (sampler,) = run(DiffEditorSampler, trajectory=traj)
    empty = {"samples": torch.zeros_like(latent["samples"])}
    other_sigmas = comfy.samplers.calculate_sigmas(sd15_model.get_model_object("model_sampling"), "normal", STEPS)
    with pytest.raises(ValueError, match="same steps and scheduler"):
        advanced(sd15_model, conds, sampler, other_sigmas, empty)
    with pytest.raises(ValueError, match="latent"):
        advanced(sd15_model, conds, sampler, sigmas, {"samples": torch.zeros(1, 4, 8, 8)})
    lora = sd15_model.clone()
    w = sd15_model.model.diffusion_model.out[2].weight
    with torch.inference_mode():
        lora.add_patches({"diffusion_model.out.2.weight": (torch.randn_like(w) * 0.01,)}, 1.0)
    with pytest.raises(ValueError, match="another model"):
        advanced(lora, conds, sampler, sigmas, empty)
    with pytest.raises(ValueError, match="another model"):
        run(DiffEditorReconstruct, model=lora, positive=conds[0], negative=conds[1], trajectory=traj, cfg=1.0)


def test_masked_blend_keeps_outside(sd15_model, conds, latent, exact):
    """Any sampler (core ddim) + another prompt: outside the mask the result is the source."""
    import comfy.samplers

    traj, inverted, sigmas = exact
    mask = torch.zeros(1, 128, 128)
    mask[:, 40:88, 40:88] = 1
    edit_conds = (tm.random_conditioning(99), conds[1])
    (blend,) = run(DiffEditorMaskedBlend, sampler=comfy.samplers.sampler_object("ddim"), trajectory=traj,
                   mask=mask, feather_px=0.0, schedule="every step", fraction=1.0)
    out = advanced(sd15_model, edit_conds, blend, sigmas, inverted)["samples"]
    free = advanced(sd15_model, edit_conds, comfy.samplers.sampler_object("ddim"), sigmas, inverted)["samples"]
    src = latent["samples"]
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[5:11, 5:11] = False
    assert (out - src)[..., outside].abs().max().item() < 1e-4
    assert (out - src)[..., ~outside].abs().max().item() > 1e-2  # edited inside
    assert (free - src)[..., outside].abs().max().item() > 1e-2  # without the blend the outside drifts
    # also wraps the DiffEditor sampler, and the partial schedules run
    (inner,) = run(DiffEditorSampler, trajectory=traj)
    (blend2,) = run(DiffEditorMaskedBlend, sampler=inner, trajectory=traj, mask=mask, feather_px=4.0,
                    schedule="last fraction", fraction=0.5)
    out2 = advanced(sd15_model, edit_conds, blend2, sigmas, {"samples": torch.zeros_like(src)})["samples"]
    assert torch.isfinite(out2).all()


def test_kv_bank_recording(sd15_model, conds, latent):
    traj = invert(sd15_model, conds, latent, record_kv_bank=True, bank_start=0.5, bank_end=1.0, cfg=2.0)[0]
    bank = traj.bank
    assert bank.recorded_steps() == list(range(5, 10))
    assert bank.recorded_layers() == sorted(layout_of(sd15_model).layer_names())
    k, v = bank.get("up_blocks.2.attentions.1.transformer_blocks.0", 5)
    assert k.shape == (1, 256, 32) and k.dtype == torch.float16  # conditional chunk only, [B, N, C]
    with pytest.raises(ValueError, match="^kv_budget_mb: .*bank_start/bank_end") as err:
        invert(sd15_model, conds, latent, record_kv_bank=True, kv_budget_mb=0.01)
    assert type(err.value) is ValueError  # not a class whose name is a file-system path inside ComfyUI


@pytest.mark.parametrize("kw, match", [
    (dict(steps=0), "steps"),
    (dict(record_kv_bank=True, bank_start=0.6, bank_end=0.5), "bank_start"),
    (dict(cfg=float("nan")), "cfg"),
])
def test_invert_validation(sd15_model, conds, latent, kw, match):
    with pytest.raises(ValueError, match=match):
        invert(sd15_model, conds, latent, **kw)


def test_input_validation(sd15_model, flow_model, conds, latent, exact):
    import comfy.samplers

    nan = {"samples": latent["samples"].clone()}
    nan["samples"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="latent.*NaN"):
        invert(sd15_model, conds, nan)
    with pytest.raises(ValueError, match=r"model.*SD1\.x, SD2\.x and SDXL"):
        invert(flow_model, conds, latent)
    with pytest.raises(ValueError, match="positive"):
        invert(sd15_model, (None, conds[1]), latent)
    traj = exact[0]
    ddim = comfy.samplers.sampler_object("ddim")
    blend = dict(sampler=ddim, trajectory=traj, feather_px=0.0, schedule="every step", fraction=1.0)
    with pytest.raises(ValueError, match="mask is empty"):
        run(DiffEditorMaskedBlend, mask=torch.zeros(1, 128, 128), **blend)
    with pytest.raises(ValueError, match="mask is 64x64"):
        run(DiffEditorMaskedBlend, mask=torch.ones(1, 64, 64), **blend)
    with pytest.raises(ValueError, match="mask has batch 2"):
        run(DiffEditorMaskedBlend, mask=torch.ones(2, 128, 128), **blend)
    with pytest.raises(ValueError, match="trajectory"):
        run(DiffEditorMaskedBlend, mask=torch.ones(1, 128, 128), **dict(blend, trajectory=latent))
    with pytest.raises(ValueError, match="eta_mask"):
        run(DiffEditorSampler, eta=0.5, eta_mask=torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="eta_start"):
        run(DiffEditorSampler, eta=0.5, eta_start=0.5, eta_end=0.2)


def test_model_unchanged_by_all_node_calls(sd15_model, model_hash):
    """Runs last in this module: nothing above changed the MODEL's weights, patches or options."""
    assert tm.weights_hash(sd15_model) == model_hash
