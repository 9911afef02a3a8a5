"""ComfyHost inside a real sampler run: gradients, truncated feature passes, conditional denoising, SDXL."""
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_adapter import make_sampler
from diffeditor.nodes.inversion import DiffEditorInvert, DiffEditorReconstruct
from diffeditor.samplers.hooks import default_feature_levels


def run_engine(model, conds, engine, latent, sigmas=None, cfg=1.0):
    """Run ``engine`` as a SAMPLER through comfy.sample.sample_custom under inference mode (like the executor)."""
    import comfy.sample
    import comfy.samplers

    with torch.inference_mode():
        if sigmas is None:
            sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 4)
        return comfy.sample.sample_custom(model, torch.zeros_like(latent["samples"]), cfg, make_sampler(engine), sigmas,
                                          conds[0], conds[1], latent["samples"], seed=0)


def test_gradient_through_features(sd15_model, conds, latent):
    """host.features under grad_context gives finite non-zero gradients with inference-mode weights."""
    res = {}

    def engine(model, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        assert not torch.is_inference_mode_enabled() and not x.is_inference()
        levels = default_feature_levels(host.num_up_blocks)
        with host.grad_context():
            xg = x.detach().clone().requires_grad_(True)
            feats = host.features(xg, sigmas[1], levels)
            energy = sum(f.float().pow(2).mean() for f in feats.values())
            (g,) = torch.autograd.grad(energy, xg)
            xg2 = x.detach().clone().requires_grad_(True)
            d = host.denoise_cond(xg2, sigmas[1])
            (g2,) = torch.autograd.grad(d.square().mean(), xg2)
        res.update(levels=levels, shapes={k: tuple(v.shape) for k, v in feats.items()}, g=g, g2=g2)
        return x

    run_engine(sd15_model, conds, engine, latent)
    assert res["levels"] == (0, 1)
    assert res["shapes"] == {0: (1, 64, 8, 8), 1: (1, 64, 16, 16)}
    for g in (res["g"], res["g2"]):
        assert torch.isfinite(g).all() and g.abs().max() > 0


def test_features_truncate_forward(sd15_model, conds, latent):
    """Capturing level 0 stops the UNet at ("output", 2): later output blocks never run."""
    seen = []

    def spy(h, hsp, transformer_options):
        seen.append(transformer_options["block"][1])
        return h, hsp

    model = sd15_model.clone()
    model.set_model_output_block_patch(spy)

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        seen.clear()
        host.features(x, sigmas[0], (0,))
        res["truncated"] = list(seen)
        seen.clear()
        host.denoise_cond(x, sigmas[0])
        res["full"] = list(seen)
        with pytest.raises(ValueError, match="levels"):
            host.features(x, sigmas[0], (2,))  # the last up block's output is not exposed
        return x

    res = {}
    run_engine(model, conds, engine, latent)
    assert res["truncated"] == [0, 1, 2] and res["full"] == [0, 1, 2, 3, 4, 5]


def test_denoise_cond_equals_cfg1_call(sd15_model, conds, latent):
    res = {}

    def engine(model, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s_in = x.new_ones([x.shape[0]])
        res["cfg"] = model(x, sigmas[0] * s_in, **extra_args)
        res["cond"] = host.denoise_cond(x, sigmas[0])
        return x

    run_engine(sd15_model, conds, engine, latent, cfg=1.0)
    assert torch.allclose(res["cfg"], res["cond"], atol=1e-6)


def test_sdxl_inversion_and_features(sdxl_model, sdxl_conds):
    latent = tm.random_latent(4, h=16, w=16)
    h0 = tm.weights_hash(sdxl_model)
    with torch.inference_mode():
        traj, inverted, sigmas = DiffEditorInvert.execute(
            model=sdxl_model, positive=sdxl_conds[0], negative=sdxl_conds[1], latent=latent, steps=8,
            scheduler="ddim_uniform", cfg=1.0, exact=True, exact_iters=10, record_kv_bank=True, bank_start=0.0,
            bank_end=1.0, kv_budget_mb=4096.0).result
        (rec,) = DiffEditorReconstruct.execute(model=sdxl_model, positive=sdxl_conds[0], negative=sdxl_conds[1],
                                               trajectory=traj, cfg=1.0).result
    assert (rec["samples"] - latent["samples"]).abs().max().item() < 0.1  # exact inversion, 8 big steps
    layers = traj.bank.recorded_layers()
    assert "up_blocks.0.attentions.1.transformer_blocks.1" in layers and len(layers) == 2 * 2 + 2
    assert not any(l.startswith("up_blocks.2.") for l in layers)

    res = {}

    def engine(model, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        with host.grad_context():
            xg = x.detach().clone().requires_grad_(True)
            feats = host.features(xg, sigmas[1], default_feature_levels(host.num_up_blocks))
            (g,) = torch.autograd.grad(sum(f.square().mean() for f in feats.values()), xg)
        res.update(shapes={k: tuple(v.shape) for k, v in feats.items()}, g=g)
        return x

    run_engine(sdxl_model, sdxl_conds, engine, latent)
    assert res["shapes"] == {0: (1, 64, 8, 8), 1: (1, 64, 16, 16)}
    assert torch.isfinite(res["g"]).all() and res["g"].abs().max() > 0
    assert tm.weights_hash(sdxl_model) == h0
