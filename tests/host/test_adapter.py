"""ComfyUI adapter: decoder layout, hook installation, identity, model checks."""
import copy

import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters import comfy_adapter as ca
from diffeditor.samplers.hooks import EditHooks, default_feature_levels

SD15_REAL = {"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
SDXL_REAL = {"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}


def test_layout_sd15_matches_reference():
    lay = ca.decoder_layout(SD15_REAL)
    assert lay.num_up_blocks == 4
    # DiffEditor levels (1, 2) = h entering ("output", 6) and ("output", 9) (reference §1.5)
    assert lay.feature_points == {3: 0, 6: 1, 9: 2}
    assert set(default_feature_levels(lay.num_up_blocks)) <= set(lay.capturable_levels)
    # 9 decoder self-attentions on ("output", 3..11) (reference §1.4), diffusers names
    assert sorted(lay.attention) == list(range(3, 12))
    assert lay.attention[3] == (1, 0, 1) and lay.attention[8] == (2, 2, 1) and lay.attention[11] == (3, 2, 1)
    names = lay.layer_names()
    assert len(names) == 9 and names[0] == "up_blocks.1.attentions.0.transformer_blocks.0"


def test_layout_sdxl_matches_reference():
    lay = ca.decoder_layout(SDXL_REAL)
    assert lay.num_up_blocks == 3
    assert lay.feature_points == {3: 0, 6: 1}
    assert set(default_feature_levels(3)) == set(lay.capturable_levels) == {0, 1}
    assert lay.attention[0] == (0, 0, 10) and lay.attention[5] == (1, 2, 2) and 6 not in lay.attention
    assert len(lay.layer_names()) == 3 * 10 + 3 * 2


@pytest.mark.parametrize("which", ["sd15_model", "sdxl_model"])
def test_layout_from_config_matches_module(which, request):
    m = request.getfixturevalue(which)
    cfg = m.model.model_config.unet_config
    from_cfg = ca.decoder_layout(cfg)
    no_tdo = {k: v for k, v in cfg.items() if k != "transformer_depth_output"}
    from_module = ca.decoder_layout(no_tdo, m.model.diffusion_model)
    assert from_cfg == from_module
    assert len(default_feature_levels(from_cfg.num_up_blocks)) == 2


def test_install_hooks_copies_and_composes(sd15_model):
    calls = []

    def user_patch(q, k, v, extra_options):
        calls.append(k.shape)
        return q * 0 + 1

    base = sd15_model.clone()
    base.set_model_attn1_replace(user_patch, "output", 2)
    before = copy.deepcopy(base.model_options)
    mo = ca.install_hooks(base.model_options, EditHooks(), sd15_model.model.model_config.unet_config)
    assert base.model_options == before  # the given options are untouched
    rep = mo["transformer_options"]["patches_replace"]["attn1"]
    assert ("output", 2) in rep and ("output", 2, 0) in rep and ("output", 5, 0) in rep
    assert len(mo["transformer_options"]["patches"]["output_block_patch"]) == 1
    q = torch.randn(1, 4, 8)
    out = rep[("output", 2, 0)](q, q, q, {"n_heads": 2, "cond_or_uncond": [0], "activations_shape": [1, 8, 2, 2]})
    assert calls and torch.equal(out, torch.ones_like(q))  # the user's patch was kept, with hooked k,v


def test_model_id_tracks_weights_and_patches(sd15_model):
    mid = ca.model_id(sd15_model)
    assert mid == ca.model_id(sd15_model.clone()) == ca.model_id(sd15_model)
    lora = sd15_model.clone()
    w = sd15_model.model.diffusion_model.out[2].weight
    with torch.inference_mode():
        lora.add_patches({"diffusion_model.out.2.weight": (torch.randn_like(w) * 0.01,)}, 1.0)
    lid = ca.model_id(lora)
    assert lid != mid
    weaker = sd15_model.clone()
    with torch.inference_mode():
        weaker.add_patches({"diffusion_model.out.2.weight": (torch.randn_like(w) * 0.01,)}, 0.5)
    assert ca.model_id(weaker) not in (mid, lid)
    other = tm.build_sd15(seed=5)
    assert ca.model_id(other) != mid
    # loading the patched clone (weights patched in place) changes neither id
    import comfy.model_management as mm
    with torch.inference_mode():
        mm.load_models_gpu([lora])
    try:
        assert ca.model_id(sd15_model) == mid and ca.model_id(lora) == lid
    finally:
        mm.unload_all_models()


def test_cond_fingerprint(conds):
    pos, neg = conds
    fp = ca.cond_fingerprint(pos, neg)
    assert fp == ca.cond_fingerprint([[pos[0][0].clone(), dict(pos[0][1])]], neg)
    assert fp != ca.cond_fingerprint(neg, pos)


def test_flow_model_rejected(flow_model, sd15_model):
    with pytest.raises(ValueError, match=r"model.*SD1\.x, SD2\.x and SDXL"):
        ca.check_supported(flow_model, "model")
    ca.check_supported(sd15_model, "model")
