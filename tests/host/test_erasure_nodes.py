"""Concept erasure nodes on tiny real MODELs: UCE weight patches and SLD guidance.

CLIP: *real* ``comfy.sd.CLIP`` objects built from ComfyUI's own SD1.5 / SDXL / SD2 clip targets, with the
text-model configs shrunk through ``model_options["clip_{l,g,h}_model_config"]`` (3 layers, hidden 32 = the tiny
UNets' context dim; SDXL: CLIP-L 12 ‖ CLIP-G 20 = 32) and seeded weights. The tokenizers are the real ones (the
BPE vocabulary ships with ComfyUI), so padding (CLIP-L pads with the end token, OpenCLIP with 0), the 75-token
chunking and SDXL's L‖G concatenation are exercised as in a real checkpoint. Building the three takes ~1 s.
"""
import comfy.model_management
import comfy.sample
import comfy.sd
import comfy.supported_models
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_erasure import concept_embeddings, current_kv_weights, parse_concepts
from diffeditor.guidance.sld import SLDConfig, SLDState, sld_guidance
from diffeditor.nodes.erasure import DiffEditorEraseConcept, DiffEditorSafeGuidance


def _tiny_text_config(hidden):
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": 2, "num_hidden_layers": 3,
            "projection_dim": hidden}


def build_clip(kind: str, dim: int = tm.CONTEXT_DIM, seed: int = 0):
    if kind == "sd15":
        target, opts = comfy.supported_models.SD15({}).clip_target(), {"clip_l_model_config": _tiny_text_config(dim)}
    elif kind == "sdxl":
        target = comfy.supported_models.SDXL({}).clip_target()
        opts = {"clip_l_model_config": _tiny_text_config(12), "clip_g_model_config": _tiny_text_config(dim - 12)}
    elif kind == "sd2":
        target, opts = comfy.supported_models.SD20({}).clip_target(), {"clip_h_model_config": _tiny_text_config(dim)}
    else:
        raise ValueError(kind)
    clip = comfy.sd.CLIP(target=target, model_options=opts)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # ComfyUI's ops leave torch.empty garbage: seed every tensor
        for name, p in clip.cond_stage_model.named_parameters():
            if p.ndim == 0:
                continue
            if p.ndim == 1 and not name.endswith("bias"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return clip


@pytest.fixture(scope="module")
def clips():
    return {k: build_clip(k) for k in ("sd15", "sdxl", "sd2")}


def enc(clip, text):
    with torch.inference_mode():
        return clip.encode_from_tokens(clip.tokenize(text)).float()


def cond_of(clip, text, pooled_dim=tm.CONTEXT_DIM, **extra):
    with torch.inference_mode():
        return [[clip.encode_from_tokens(clip.tokenize(text)), dict({"pooled_output": torch.zeros(1, pooled_dim)},
                                                                    **extra)]]


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result[0]


def sample(model, pos, neg, cfg=4.0, steps=6, seed=3):
    lat = tm.random_latent(7)["samples"]
    with torch.inference_mode():
        noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(model, noise, steps, cfg, "ddim", "ddim_uniform", pos, neg, torch.zeros_like(lat),
                                   seed=seed)


def kv_keys_by_module(model) -> set:
    """attn2 K/V weight keys found by walking the modules (independent of the adapter's key regex)."""
    return {f"diffusion_model.{n}.{p}.weight" for n, _ in model.model.diffusion_model.named_modules()
            if n.endswith("attn2") for p in ("to_k", "to_v")}


def erase(model, clip, concepts="red", guide="", preserve="", lam=0.5, erase_scale=1.0, preserve_scale=1.0):
    return run(DiffEditorEraseConcept, model=model, clip=clip, concepts=concepts, guide=guide, preserve=preserve,
               erase_scale=erase_scale, preserve_scale=preserve_scale, lam=lam)


# ------------------------------------------------------------------------------------------------------ text side
def test_parse_concepts():
    assert parse_concepts(" red car,\n\nblue ; red car , ") == ["red car", "blue"]


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "sd2"])
def test_concept_vector_is_the_last_content_token_on_real_tokenizers(clips, kind):
    clip = clips[kind]
    tok = clip.tokenize("a red circle")
    assert all(len(v) == 1 for v in tok.values())  # one 77-token chunk per encoder
    with torch.inference_mode():
        got = concept_embeddings(clip, ["a red circle", ""], "concepts")
    full, empty = enc(clip, "a red circle"), enc(clip, "")
    assert full.shape == (1, 77, tm.CONTEXT_DIM)  # SDXL: CLIP-L 12 ‖ CLIP-G 20 per token
    # "a red circle" is 3 BPE tokens after the start token: its last content token sits at index 3 (SD2/SDXL-G
    # pad with 0 after the end token, SD1/SDXL-L with the end token; both must give 3)
    assert torch.equal(got[0], full[0, 3])
    assert torch.equal(got[1], empty[0, 0])  # the empty guide: the start token ...
    assert torch.allclose(full[0, 0], empty[0, 0], atol=1e-6)  # ... which is prompt-independent (causal encoder)


# ------------------------------------------------------------------------------------------------------ UCE
@pytest.mark.parametrize("which,kind", [("sd15_model", "sd15"), ("sdxl_model", "sdxl")])
def test_uce_patches_every_kv_projection_and_leaves_the_model_untouched(request, clips, which, kind):
    model = request.getfixturevalue(which)
    before = tm.weights_hash(model)
    erased = erase(model, clips[kind], concepts="red circle\nsquare", preserve="blue")
    kv = kv_keys_by_module(model)
    assert len(kv) >= 14 and set(erased.patches) == kv
    assert all(len(erased.patches[k]) == 1 and erased.patches[k][0][1][0] == "diff" for k in kv)
    assert tm.weights_hash(model) == before and not model.patches and erased.model is model.model


def _uce_bound(W, Wn, c_e, c_g, c_p, lam):
    """Residuals of the erase / preserve constraints on the edited weight and their bound.

    With C = [c_e, c_p] (columns), G = CᵀC and targets V = [W c_g, W c_p], the normal equations give
    W' = (λW + V Cᵀ)(λI + C Cᵀ)⁻¹, and the push-through identity (λI + CCᵀ)⁻¹C = C(λI + G)⁻¹ gives exactly
        W'C − V = λ (WC − V)(λI + G)⁻¹.
    WC − V has only the erase column W(c_e − c_g), so every residual column is at most
        λ / (λ + λ_min(G)) · ‖W(c_e − c_g)‖.
    """
    C = torch.stack([c_e, c_p], 1).double()
    V = torch.stack([W.double() @ c_g.double(), W.double() @ c_p.double()], 1)
    G = C.T @ C
    R = Wn.double() @ C - V
    exact = lam * (W.double() @ C - V) @ torch.linalg.inv(lam * torch.eye(2, dtype=G.dtype) + G)
    miss = float((W.double() @ (c_e - c_g).double()).norm())
    bound = lam / (lam + float(torch.linalg.eigvalsh(G)[0])) * miss
    return R, exact, bound, miss


def test_uce_solution_read_back_from_the_loaded_clone_and_original_restored(sd15_model, clips):
    clip = clips["sd15"]
    mm = comfy.model_management
    mm.load_models_gpu([sd15_model])  # whatever ran before: the original's weights are live now
    h0 = tm.weights_hash(sd15_model)
    w0 = current_kv_weights(sd15_model)
    pos_red, pos_blue, neg = cond_of(clip, "a red circle"), cond_of(clip, "a blue square"), cond_of(clip, "")
    ref_red, ref_blue = sample(sd15_model, pos_red, neg), sample(sd15_model, pos_blue, neg)
    lam = 0.01
    erased = erase(sd15_model, clip, concepts="red", guide="", preserve="blue", lam=lam)
    assert tm.weights_hash(sd15_model) == h0

    out_red = sample(erased, pos_red, neg)
    assert (out_red - ref_red).abs().max() > 1e-3  # the erased concept's prompt renders differently
    # read W' back from the live module of the loaded clone (ComfyUI applied the diff patches in place)
    mm.load_models_gpu([erased])
    live = erased.model.state_dict()
    for name in ("red", "blue"):
        assert len(clip.tokenize(name)["l"][0]) == 77 and clip.tokenize(name)["l"][0][2][0] == 49407  # 1 token
    c_e, c_g, c_p = enc(clip, "red")[0, 1], enc(clip, "")[0, 0], enc(clip, "blue")[0, 1]
    for k, w in w0.items():
        wn = live[k].detach().float()
        assert not torch.equal(wn, w)
        R, exact, bound, miss = _uce_bound(w, wn, c_e, c_g, c_p, lam)
        fp32 = 1e-5 * float(wn.norm()) * float(max(c_e.norm(), c_p.norm()))  # storage rounding of W'
        assert torch.allclose(R, exact, atol=fp32, rtol=1e-4), k
        assert float(R[:, 0].norm()) <= bound + fp32 and float(R[:, 1].norm()) <= bound + fp32, k  # W'c_e≈Wc_g
        assert bound < 0.05 * miss, k  # the check is meaningful: c_e was moved >95% of the way to the guide
    # the user's MODEL comes back bit for bit once it is sampled again
    assert torch.equal(sample(sd15_model, pos_red, neg), ref_red)
    assert torch.equal(sample(sd15_model, pos_blue, neg), ref_blue)
    assert tm.weights_hash(sd15_model) == h0
    live0 = sd15_model.model.state_dict()
    assert all(torch.equal(live0[k], w) for k, w in w0.items())


def test_uce_starts_from_the_current_weights_lora_included(sd15_model, clips):
    clip = clips["sd15"]
    w0 = current_kv_weights(sd15_model)
    g = torch.Generator().manual_seed(5)
    lora = sd15_model.clone()
    lora.add_patches({k: ("diff", (0.3 * torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5,))
                      for k, w in w0.items()})
    w_lora = current_kv_weights(lora)
    assert not any(torch.equal(w_lora[k], w0[k]) for k in w0)
    erased = erase(lora, clip, concepts="red", preserve="blue", lam=0.01)
    assert all(len(erased.patches[k]) == 2 for k in w0) and all(len(lora.patches[k]) == 1 for k in w0)
    w_new = current_kv_weights(erased)  # ComfyUI's calculate_weight: base + LoRA diff + UCE diff
    c_e, c_g, c_p = enc(clip, "red")[0, 1], enc(clip, "")[0, 0], enc(clip, "blue")[0, 1]
    for k in w0:
        R, exact, bound, miss = _uce_bound(w_lora[k], w_new[k], c_e, c_g, c_p, 0.01)
        assert float(R[:, 0].norm()) <= bound * 1.01 + 1e-5 * float(w_new[k].norm()) * float(c_e.norm()), k


# ------------------------------------------------------------------------------------------------------ SLD
def sld(model, safety, preset="custom", warmup_steps=0, guidance_scale=0.0, threshold=0.01, momentum_scale=0.0,
        momentum_beta=0.4):
    return run(DiffEditorSafeGuidance, model=model, safety=safety, preset=preset, warmup_steps=warmup_steps,
               guidance_scale=guidance_scale, threshold=threshold, momentum_scale=momentum_scale,
               momentum_beta=momentum_beta)


def reference_sld_model(model, safety_tensor, config):
    """SLD written independently: the safety x0 from ``BaseModel.apply_model`` directly, eps-space
    :func:`sld_guidance`, one fresh state per sampling run (the first call of a run has the largest sigma)."""
    box = {"state": None, "sigma": None}

    def cfg(args):
        x, sigma, base = args["input"], args["sigma"], args["model"]
        if box["sigma"] is None or float(sigma[0]) > box["sigma"]:
            box["state"] = SLDState()
        box["sigma"] = float(sigma[0])
        d_s = base.apply_model(x, sigma, c_crossattn=safety_tensor.to(x))
        s = sigma.reshape(-1, 1, 1, 1)
        e_u, e_c, e_s = (x - args["uncond_denoised"]) / s, (x - args["cond_denoised"]) / s, (x - d_s) / s
        return s * sld_guidance(e_u, e_c, e_s, args["cond_scale"], config, box["state"])

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg, disable_cfg1_optimization=True)
    return m


def test_sld_scale_zero_is_plain_cfg_exactly(sd15_model, clips):
    clip = clips["sd15"]
    pos, neg, safety = cond_of(clip, "a red circle"), cond_of(clip, ""), cond_of(clip, "red")
    plain = sample(sd15_model, pos, neg)
    off = sld(sd15_model, safety, guidance_scale=0.0, momentum_scale=0.5, momentum_beta=0.7)
    assert torch.equal(sample(off, pos, neg), plain)
    assert sd15_model.model_options.get("sampler_cfg_function") is None


def test_sld_matches_an_independent_reference_and_resets_per_run(sd15_model, clips):
    clip = clips["sd15"]
    pos, neg, safety = cond_of(clip, "a red circle"), cond_of(clip, ""), cond_of(clip, "red")
    config = SLDConfig(warmup_steps=2, guidance_scale=200.0, threshold=0.01, momentum_scale=0.3, momentum_beta=0.4)
    node_model = sld(sd15_model, safety, warmup_steps=2, guidance_scale=200.0, threshold=0.01, momentum_scale=0.3,
                     momentum_beta=0.4)
    plain = sample(sd15_model, pos, neg)
    first, second = sample(node_model, pos, neg), sample(node_model, pos, neg)
    assert torch.equal(first, second)  # the SLD state starts fresh on every sampling run
    ref = sample(reference_sld_model(sd15_model, safety[0][0], config), pos, neg)
    assert (ref - plain).abs().max() > 1e-3  # the safety term is active in this setting ...
    # ... and the node computes the same guidance (max diff seen 5e-5; a wrong warm-up gives 1.1, no momentum 0.05)
    assert torch.allclose(first, ref, rtol=1e-4, atol=1e-3)
    # a shorter run after a longer one (a new schedule): still fresh
    assert torch.equal(sample(node_model, pos, neg, steps=4), sample(node_model, pos, neg, steps=4))
    assert sd15_model.model_options.get("sampler_cfg_function") is None and not sd15_model.patches
    assert not sd15_model.model_options.get("sampler_post_cfg_function")


def other_pack_cfg(model, log):
    """Stand-in for another pack's guidance set through the MODEL's cfg function (a clone with
    ``set_model_sampler_cfg_function``, as core RescaleCFG and friends do); it records every call."""
    def cfg(args):
        log.append(float(args["sigma"].flatten()[0]))
        c, u, w = args["cond"], args["uncond"], args["cond_scale"]  # noise-like: x - denoised
        guided = u + w * (c - u)
        return 0.8 * guided + 0.2 * c  # a visibly different guidance rule

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg)
    return m


def test_sld_composes_with_another_packs_cfg_function_in_either_order(sd15_model, clips):
    clip = clips["sd15"]
    pos, neg, safety = cond_of(clip, "a red circle"), cond_of(clip, ""), cond_of(clip, "red")
    kw = dict(warmup_steps=1, guidance_scale=200.0, threshold=0.01, momentum_scale=0.3, momentum_beta=0.4)
    config = SLDConfig(**kw)
    log = []
    other = sample(other_pack_cfg(sd15_model, log), pos, neg)
    assert log
    sld_only = sample(sld(sd15_model, safety, **kw), pos, neg)
    # SLD whose safety term is identically 0 (threshold below any difference, no momentum): the other pack's
    # guidance comes out exactly, and it was called on every step
    log.clear()
    inert = sld(other_pack_cfg(sd15_model, log), safety, warmup_steps=0, guidance_scale=200.0, threshold=-10.0,
                momentum_scale=0.0, momentum_beta=0.0)
    assert torch.equal(sample(inert, pos, neg), other) and log
    # active SLD with the other pack's cfg function set before it, or after it: both apply, in either order
    log.clear()
    before = sample(sld(other_pack_cfg(sd15_model, log), safety, **kw), pos, neg)
    calls_before = len(log)
    log.clear()
    after = sample(other_pack_cfg(sld(sd15_model, safety, **kw), log), pos, neg)
    assert calls_before and len(log) == calls_before
    assert torch.allclose(before, after, atol=1e-6)
    assert (before - other).abs().max() > 1e-3 and (before - sld_only).abs().max() > 1e-3

    # ... and the result is the other pack's guidance plus the SLD term, computed independently
    box = {"state": None, "sigma": None}

    def reference(args):
        x, sigma, base = args["input"], args["sigma"], args["model"]
        if box["sigma"] is None or float(sigma[0]) > box["sigma"]:
            box["state"] = SLDState()
        box["sigma"] = float(sigma[0])
        d_s = base.apply_model(x, sigma, c_crossattn=safety[0][0].to(x))
        s = sigma.reshape(-1, 1, 1, 1)
        e_u, e_c, e_s = (x - args["uncond_denoised"]) / s, (x - args["cond_denoised"]) / s, (x - d_s) / s
        w = args["cond_scale"]
        plain = args["uncond"] + w * (args["cond"] - args["uncond"])
        sld_term = plain - s * sld_guidance(e_u, e_c, e_s, w, config, box["state"])
        c, u = args["cond"], args["uncond"]
        return (0.8 * (u + w * (c - u)) + 0.2 * c) - sld_term

    ref_model = sd15_model.clone()
    ref_model.set_model_sampler_cfg_function(reference, disable_cfg1_optimization=True)
    ref = sample(ref_model, pos, neg)
    assert torch.allclose(before, ref, rtol=1e-4, atol=1e-3), float((before - ref).abs().max())
    assert not sd15_model.model_options.get("sampler_post_cfg_function")


def test_sld_runs_on_sdxl(sdxl_model, sdxl_conds):
    pos, neg = sdxl_conds
    safety = tm.random_conditioning(22, pooled_dim=1280, width=128, height=128, crop_w=0, crop_h=0,
                                    target_width=128, target_height=128)
    plain = sample(sdxl_model, pos, neg, steps=4)
    out = sample(sld(sdxl_model, safety, preset="max"), pos, neg, steps=4)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------------ errors
def test_bad_inputs(sd15_model, flow_model, clips):
    clip = clips["sd15"]
    with pytest.raises(ValueError, match="concepts"):
        erase(sd15_model, clip, concepts=" , \n")
    with pytest.raises(ValueError, match=r"concepts: .*75-token"):
        erase(sd15_model, clip, concepts=" ".join(["word"] * 80))
    with pytest.raises(ValueError, match=r"^concepts: the concept 'w0 w1 w2 w3 w4 w5 w6 w7 \.\.\.' \(120 words\) "
                                         r"is longer than .*75-token") as e:
        erase(sd15_model, clip, concepts=" ".join(f"w{i}" for i in range(120)))
    assert "w8 " not in str(e.value) and len(str(e.value)) < 250  # the message does not repeat all 120 words
    with pytest.raises(ValueError, match=r"guide: .*75-token"):
        erase(sd15_model, clip, guide=" ".join(["word"] * 80))
    with pytest.raises(ValueError, match="preserve"):
        erase(sd15_model, clip, concepts="red", preserve="red")
    with pytest.raises(ValueError, match="clip"):
        erase(sd15_model, None)
    with pytest.raises(ValueError, match="clip/model: context-dim mismatch.*24.*32"):
        erase(sd15_model, build_clip("sd15", dim=24))
    with pytest.raises(ValueError, match="model"):
        erase(flow_model, clip)
    with pytest.raises(ValueError, match="lam"):
        erase(sd15_model, clip, lam=0.0)
    with pytest.raises(ValueError, match="erase_scale"):
        erase(sd15_model, clip, erase_scale=float("nan"))
    safety = cond_of(clip, "red")
    with pytest.raises(ValueError, match="safety"):
        sld(sd15_model, [], preset="weak")
    with pytest.raises(ValueError, match="guidance_scale"):
        sld(sd15_model, safety, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="momentum_beta"):
        sld(sd15_model, safety, guidance_scale=1.0, momentum_beta=1.5)
    with pytest.raises(ValueError, match="preset"):
        sld(sd15_model, safety, preset="extreme")
    with pytest.raises(ValueError, match="model"):
        sld(flow_model, safety, preset="max")
