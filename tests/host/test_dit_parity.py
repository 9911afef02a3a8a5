"""DiT adapter parity: the same tiny Flux.1 / SD3.5-style weights through the ComfyUI DiT adapter
(``adapters/comfy_dit.py``) and the diffusers DiT adapter (``adapters/diffusers_dit.py``).

The ComfyUI transformer's state dict is converted with ComfyUI's own diffusers key maps
(``comfy.utils.flux_to_diffusers`` / ``mmdit_to_diffusers``: fused qkv rows sliced, adaLN (shift, scale) swapped)
into a ``FluxTransformer2DModel`` / ``SD3Transformer2DModel`` of the equivalent config, loaded strictly. Both
hosts are then asked, on the same model-space latent and sigma: the CFG denoised, the conditional denoised, the
block features and the image K,V of every block attention.
"""
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_adapter import make_sampler
from diffeditor.samplers.hooks import KVBank

TOL = 1e-4

DIFFUSERS_FLUX = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                      num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                      axes_dims_rope=(4, 6, 6))
DIFFUSERS_SD3 = dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=3,
                     attention_head_dim=64, num_attention_heads=3, joint_attention_dim=32, caption_projection_dim=192,
                     pooled_projection_dim=32, pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,))


def convert(comfy_sd: dict, key_map: dict) -> dict:
    """A diffusers state dict from a ComfyUI one through a ``comfy.utils.*_to_diffusers`` map."""
    out = {}
    for dkey, src in key_map.items():
        sl = fn = None
        if isinstance(src, tuple):  # (key, (dim, start, length) or None[, function])
            src, sl, *rest = src
            fn = rest[0] if rest else None
        if src not in comfy_sd:
            continue
        t = comfy_sd[src]
        if sl is not None:
            t = t.narrow(*sl)
        if fn is not None:
            t = fn(t)
        out[dkey] = t.detach().clone()
    return out


def diffusers_twin(family: str, comfy_model):
    import comfy.utils
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    dm = comfy_model.model.diffusion_model
    with torch.inference_mode(False):
        sd = {k: v.clone() for k, v in dm.state_dict().items()}
        ucfg = comfy_model.model.model_config.unet_config
        if family == "flux":
            model = FluxTransformer2DModel(**DIFFUSERS_FLUX).eval()
            key_map = comfy.utils.flux_to_diffusers(ucfg)
        else:
            model = SD3Transformer2DModel(**DIFFUSERS_SD3).eval()
            key_map = comfy.utils.mmdit_to_diffusers(ucfg)
            key_map["pos_embed.pos_embed"] = "pos_embed"  # the positional table (a buffer; not in the map)
        converted = convert(sd, key_map)
        want = set(model.state_dict())
        missing, unexpected = want - set(converted), set(converted) - want
        assert not missing and not unexpected, (sorted(missing)[:8], sorted(unexpected)[:8])
        used = {(v[0] if isinstance(v, tuple) else v) for k, v in key_map.items() if k in converted}
        assert used == set(sd), sorted(set(sd) - used)[:8]  # every ComfyUI weight went somewhere
        model.load_state_dict(converted, strict=True)
    return model


@pytest.fixture(scope="module", params=["flux", "sd3"])
def pair(request):
    fam = request.param
    model = tm.build_flux(seed=30) if fam == "flux" else tm.build_sd3(seed=31)
    conds = tm.dit_conditioning(60, fam), tm.dit_conditioning(61, fam, scale=0.5)
    return fam, model, diffusers_twin(fam, model), conds


@pytest.fixture(scope="module")
def probe():
    return torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(42))


def comfy_side(model, conds, x, sigma_index, cfg, levels):
    import comfy.sample
    import comfy.samplers

    res = {}

    def engine(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[sigma_index]
        xx = x.to(x_in)
        res["sigma"] = float(s)
        res["cfg"] = model_k(xx, s * xx.new_ones([1]), **extra_args)
        res["cond"] = host.denoise_cond(xx, s)
        res["features"] = host.features(xx, s, levels)
        bank = KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=bank):
            host.denoise_cond(xx, s)
        res["bank"] = bank
        return x_in

    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 10)
        comfy.sample.sample_custom(model, torch.zeros(1, 16, 16, 16), cfg, make_sampler(engine), sigmas,
                                   conds[0], conds[1], torch.zeros(1, 16, 16, 16), seed=0)
    return res


def diffusers_side(transformer, conds, x, sigma, cfg, levels):
    from diffeditor.adapters.diffusers_dit import DiTHost, FlowDenoiser

    (c, co), (u, uo) = conds[0][0], conds[1][0]
    den = FlowDenoiser(transformer, c.clone(), co["pooled_output"].clone(), u.clone(), uo["pooled_output"].clone(),
                       cfg=cfg, guidance=float(co.get("guidance", 3.5)))
    host = DiTHost(den)
    s = torch.tensor([sigma])
    res = {}
    with torch.no_grad():
        res["cfg"] = den(x, s)
        res["cond"] = host.denoise_cond(x, s)
        res["features"] = host.features(x, s, levels)
        bank = KVBank(dtype=torch.float32)
        with den.hooks.using(step=0, record=bank):
            host.denoise_cond(x, s)
        res["bank"] = bank
    return res


@pytest.mark.parametrize("sigma_index, cfg", [(2, 3.0), (7, 1.0)])
def test_comfy_and_diffusers_dit_adapters_agree(pair, probe, sigma_index, cfg, record_property):
    fam, model, twin, conds = pair
    if fam == "flux":
        cfg = 1.0  # guidance-distilled: cfg 1 with the guidance embedding (cfg > 1 is refused on both hosts)
    levels = tuple(range(len(model.model.diffusion_model.double_blocks) +
                         len(model.model.diffusion_model.single_blocks))) if fam == "flux" else (0, 1, 2)
    c = comfy_side(model, conds, probe, sigma_index, cfg, levels)
    d = diffusers_side(twin, conds, probe, c["sigma"], cfg, levels)
    err = {"cond": (c["cond"] - d["cond"]).abs().max().item(), "cfg": (c["cfg"] - d["cfg"]).abs().max().item()}
    assert (c["cond"] - probe).abs().max().item() > 1e-3  # the probe is non-trivial
    assert set(c["features"]) == set(d["features"]) == set(levels)
    for lvl in levels:
        assert c["features"][lvl].shape == d["features"][lvl].shape
        err[f"feature {lvl}"] = (c["features"][lvl] - d["features"][lvl]).abs().max().item()
    assert c["bank"].recorded_layers() == d["bank"].recorded_layers() and len(c["bank"]) == len(levels)
    for layer in c["bank"].recorded_layers():
        (ck, cv), (dk, dv) = c["bank"].get(layer, 0), d["bank"].get(layer, 0)
        assert ck.shape == dk.shape
        err[f"K {layer}"] = (ck - dk).abs().max().item()
        err[f"V {layer}"] = (cv - dv).abs().max().item()
    worst = max(err.values())
    record_property(f"{fam}_sigma{c['sigma']:.3f}_cfg{cfg:g}_max_abs_diff", worst)
    print(f"\n{fam} sigma {c['sigma']:.4f} cfg {cfg:g}: max |ComfyUI - diffusers| {worst:.3e} "
          f"(denoised cond {err['cond']:.2e}, cfg {err['cfg']:.2e})")
    assert worst < TOL, {k: v for k, v in err.items() if v >= TOL}
