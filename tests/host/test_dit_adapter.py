"""The ComfyUI DiT adapter (``adapters/comfy_dit.py``) on tiny real Flux.1 and SD3.5-style MMDiT MODELs.

Built from ComfyUI's own classes (``supported_models.Flux`` / ``SD3`` configs -> ``model_base.Flux`` / ``SD3``)
under ``torch.inference_mode`` like loaded checkpoints: exact inversion and reconstruction, the trajectory
anchor, energy guidance, K,V injection (replace / concat / composite), hooks of other packs still called, call
accounting, truncated feature passes, the user's MODEL untouched, and the refusals.
"""
from dataclasses import replace

import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters import comfy_adapter as ca
from diffeditor.adapters import comfy_dit as cd
from diffeditor.adapters import comfy_jobs as jobs
from diffeditor.samplers import edit
from diffeditor.samplers.blend import TrajectoryAnchor
from diffeditor.samplers.hooks import KVBank, KVInjection
from tiny_models import ToyTask

STEPS = 8
FAMILIES = ("flux", "sd3")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def flux_model():
    return tm.build_flux(seed=30)


@pytest.fixture(scope="module")
def sd3_model():
    return tm.build_sd3(seed=31)


@pytest.fixture(scope="module", params=FAMILIES)
def dit(request):
    """(family, MODEL, (positive, negative), LATENT) for each tiny DiT."""
    fam = request.param
    model = request.getfixturevalue(f"{fam}_model")
    conds = tm.dit_conditioning(40, fam), tm.dit_conditioning(41, fam, scale=0.5)
    return fam, model, conds, tm.dit_latent(42)


def sigmas_for(model, steps=STEPS):
    import comfy.samplers

    with torch.inference_mode():
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def run_engine(model, conds, engine, latent, sigmas=None, cfg=1.0):
    """``engine`` as a SAMPLER through comfy.sample.sample_custom under inference mode (as the executor)."""
    import comfy.sample

    with torch.inference_mode():
        sigmas = sigmas_for(model, 4) if sigmas is None else sigmas
        return comfy.sample.sample_custom(model, torch.zeros_like(latent["samples"]), cfg, ca.make_sampler(engine),
                                          sigmas, conds[0], conds[1], latent["samples"], seed=0)


def plain_sample(model, conds, latent, cfg=1.0):
    """A plain core sampling (comfy.sample.sample, euler / simple, 3 steps)."""
    import comfy.sample

    with torch.inference_mode():
        noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(5))
        return comfy.sample.sample(model, noise, 3, cfg, "euler", "simple", conds[0], conds[1], latent["samples"],
                                   seed=5)


def rel_l2(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def inverted(dit):
    """Exact inversion with a K,V bank (all blocks, every step) and its reconstruction."""
    fam, model, conds, latent = dit
    sig = sigmas_for(model)
    with torch.inference_mode():
        traj, z_T = jobs.invert_latent(model, conds[0], conds[1], latent["samples"], sig, cfg=1.0, exact_iters=50,
                                       bank=KVBank())
        rec = jobs.reconstruct(model, conds[0], conds[1], traj, cfg=1.0)
    return traj, z_T, rec, sig


def mask_latent(h=16, w=16):
    m = torch.zeros(1, 1, h, w)
    m[..., 4:10, 5:11] = 1
    return m


# ------------------------------------------------------------------------------------- detection
def test_families_layout_and_levels(flux_model, sd3_model):
    assert cd.dit_family(flux_model) == "flux" and cd.dit_family(sd3_model) == "sd3"
    lf, ls = cd.dit_layout(flux_model), cd.dit_layout(sd3_model)
    assert (lf.n_double, lf.n_single, lf.patch_size, lf.hidden) == (2, 2, 2, 32)
    assert (ls.n_double, ls.n_single, ls.patch_size, ls.hidden) == (3, 0, 2, 192)
    assert lf.layer_names() == ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"]
    from diffeditor.samplers.dit import default_dit_levels
    assert lf.default_levels() == default_dit_levels(2, 2) and ls.default_levels() == default_dit_levels(3, 0)
    for m in (flux_model, sd3_model):
        ca.check_supported(m, "model")
        assert ca.host_class(m) is cd.ComfyDiTHost
        assert ca.model_id(m) == ca.model_id(m.clone())
    assert ca.model_id(flux_model) != ca.model_id(tm.build_flux(seed=99))
    # bank estimate: the image tokens of every block attention, heads merged
    assert ca.decoder_attention_shapes(flux_model, (16, 16)) == [(n, 64, 32) for n in lf.layer_names()]
    assert ca.decoder_attention_shapes(sd3_model, (15, 17)) == [(n, 8 * 9, 192) for n in ls.layer_names()]


def test_guidance_distilled(flux_model, sd3_model):
    schnell = tm.build_flux(seed=32, guidance_embed=False)
    assert cd.is_guidance_distilled(flux_model) and cd.is_guidance_distilled(schnell)
    assert not cd.is_guidance_distilled(sd3_model)
    ca.check_supported(schnell, "model")  # FLOW sampling (CONST) on a Flux transformer
    with pytest.raises(ValueError, match=r"^cfg: 3.5 .*guidance-distilled.*set cfg 1.*FluxGuidance"):
        cd.check_distilled_cfg(flux_model, 3.5)
    with pytest.raises(ValueError, match=r"^cfg: .*set cfg 1.*schnell"):
        cd.check_distilled_cfg(schnell, 2.0)
    cd.check_distilled_cfg(flux_model, 1.0)
    cd.check_distilled_cfg(sd3_model, 7.0)


def test_cfg_above_one_refused_on_flux(flux_model):
    conds = tm.dit_conditioning(40, "flux"), tm.dit_conditioning(41, "flux")
    lat = tm.dit_latent(42)
    with pytest.raises(ValueError, match=r"^cfg: 2 on a guidance-distilled"), torch.inference_mode():
        jobs.invert_latent(flux_model, conds[0], conds[1], lat["samples"], sigmas_for(flux_model), cfg=2.0,
                           exact_iters=0, bank=None)
    # a SAMPLER inside core sampling with a CFGGuider at cfg 3: the host refuses it too
    with pytest.raises(ValueError, match=r"^cfg: 3 on a guidance-distilled"):
        run_engine(flux_model, conds, lambda m, x, s, **kw: x, lat, cfg=3.0)


def test_unsupported_models_are_refused(flow_model, flux_model):
    qwen = tm.build_qwen_image()
    with pytest.raises(ValueError, match=r"^model: .*Qwen-Image is not supported.*SD1\.x, SD2\.x and SDXL.*Flux\.1"
                                         r".*SD3"):
        ca.check_supported(qwen, "model")
    with pytest.raises(ValueError, match=r"^model: .*supported are SD1\.x, SD2\.x and SDXL.*Flux\.1.*SD3"):
        ca.check_supported(flow_model, "model")  # a flow-matching *UNet*
    # UNet-only nodes (concept erasure, image prompt) refuse DiTs, naming their input
    with pytest.raises(ValueError, match=r"^model: .*Flux\.1.*UNets only"):
        ca.check_supported(flux_model, "model", dit=False)
    # a DiT whose sampling was switched to eps is refused
    import comfy.model_sampling

    class EPSFlow(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    bad = flux_model.clone()
    bad.add_object_patch("model_sampling", EPSFlow(flux_model.model.model_config))
    with pytest.raises(ValueError, match=r"^model: .*not rectified flow"):
        ca.check_supported(bad, "model")


# ----------------------------------------------------------------------------- inversion / anchor
def test_exact_inversion_reconstructs(dit, inverted, record_property):
    fam, model, conds, latent = dit
    traj, z_T, rec, sig = inverted
    assert traj.param == "flow" and traj.steps == STEPS
    err = rel_l2(rec, latent["samples"])
    record_property(f"{fam}_reconstruction_rel_l2", err)
    print(f"\n{fam}: exact inversion ({STEPS} steps, 50 fixed-point iterations) -> reconstruction rel L2 {err:.3e}")
    assert err < 1e-3
    assert traj.bank is not None and len(traj.bank.recorded_steps()) == STEPS
    assert traj.bank.recorded_layers() == sorted(cd.dit_layout(model).layer_names())


def test_anchor_keeps_outside_exactly_and_counts(dit, inverted, record_property):
    """The full DiffEditor schedule (guidance, regional SDE, time travel, K,V replace) with the trajectory anchor:
    the outside equals the source bit for bit, the inside changed; model calls per purpose are the stats."""
    fam, model, conds, latent = dit
    traj, _, _, sig = inverted
    m = mask_latent()
    calls = {"apply": 0, "first": 0, "last": 0}
    lay = cd.dit_layout(model)
    counted = model.clone()  # "another pack": an APPLY_MODEL wrapper and dit patches on the first/last block

    def count_apply(executor, *a, **kw):
        calls["apply"] += 1
        return executor(*a, **kw)

    def spy(key):
        def patch(args, extra):
            calls[key] += 1
            return extra["original_block"](args)
        return patch

    import comfy.patcher_extension
    counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "other_pack", count_apply)
    counted.set_model_patch_replace(spy("first"), "dit", "double_block", 0)
    last = ("single_block", lay.n_single - 1) if lay.n_single else ("double_block", lay.n_double - 1)
    counted.set_model_patch_replace(spy("last"), "dit", *last)

    stats = edit.EditStats()
    sched = replace(edit.preset_schedule("DiffEditor", "move"), kv_mode="replace")
    sampler = ca.make_sampler(edit.sample_edit, trajectory=traj, task=ToyTask(m), schedule=sched, seed=1,
                              blend=TrajectoryAnchor(traj, m), stats=stats, with_model_id=True)
    with torch.inference_mode():
        out = jobs.sample(counted, sampler, sig, conds[0], conds[1], 1.0, shape=traj.shape, seed=1)
    src = model.get_model_object("latent_format").process_out(traj.x0.float())
    outside = (m == 0).expand_as(out)
    assert torch.equal(out[outside], src[outside].to(out.dtype))
    inside_change = float((out - src)[~outside].abs().max())
    assert inside_change > 1e-4
    s = stats.as_dict()
    record_property(f"{fam}_edit_stats", s)
    print(f"\n{fam}: edit stats {s}, model calls {calls}, inside change {inside_change:.3g}")
    assert s["guidance_evals"] > 0 and s["backward_passes"] > 0 and s["renoise_forwards"] > 0
    assert s["guidance_evals"] == s["feature_forwards"]
    full = s["cfg_forwards"] + s["renoise_forwards"]
    assert calls["apply"] == full + s["feature_forwards"] + s["reference_forwards"]
    assert calls["first"] == calls["apply"]
    deepest = max(lay.default_levels())
    if deepest < lay.num_levels - 1:  # feature passes stop after the deepest level: the last block runs less
        assert calls["last"] == full
    else:
        assert calls["last"] == calls["apply"]


# ------------------------------------------------------------------------------------ guidance
def test_energy_decreases_after_guidance_step_on_its_region(dit, inverted):
    fam, model, conds, latent = dit
    traj, _, _, sig = inverted
    m = mask_latent()
    task = ToyTask(m)
    res = {}
    i = 2

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        levels = host.default_levels()
        s = sig[i] * x.new_ones([1])
        src = traj.at(i, like=x)
        ref = {k: v.detach() for k, v in host.features(src, s, levels).items()}
        g = torch.Generator().manual_seed(0)
        x_cur = src + 0.3 * torch.randn(src.shape, generator=g)  # away from the source: energies not minimal

        def energies(xx):
            return [float(e) for e in task.energy(host.features(xx, s, levels), ref, None)]

        grad, (e_edit, e_con) = edit.energy_gradient(host, task, x_cur, s, levels, ref, None, True)
        res["before"] = energies(x_cur)
        assert res["before"] == pytest.approx([e_edit, e_con], rel=1e-6)
        lat_m = m.to(x)
        for name, region in (("edit", lat_m), ("content", 1 - lat_m)):
            d = grad * region
            lr = 0.05 * float(x_cur.norm()) / max(float(d.norm()), 1e-12)
            res[name] = energies(x_cur - lr * d)
        # the gradient is the true one: a central difference along a random direction (float64 not needed)
        u = torch.randn(x_cur.shape, generator=g)
        with host.grad_context():
            xg = x_cur.detach().clone().requires_grad_(True)
            e = task.energy(host.features(xg, s, levels), ref, None)[0]
            (ge,) = torch.autograd.grad(e, xg)
        h = 1e-2
        fd = (energies(x_cur + h * u)[0] - energies(x_cur - h * u)[0]) / (2 * h)
        res["fd"] = (fd, float((ge * u).sum()))
        return x

    run_engine(model, conds, engine, latent)
    print(f"\n{fam}: energies before {res['before']}, after an edit-region step {res['edit']}, after a "
          f"content-region step {res['content']}; directional derivative fd/autograd {res['fd']}")
    assert res["edit"][0] < res["before"][0]
    assert res["content"][1] < res["before"][1]
    fd, ad = res["fd"]
    assert ad != 0 and abs(fd - ad) <= 0.05 * abs(ad) + 1e-7


# ------------------------------------------------------------------------------------------ K,V
def test_kv_injection_changes_output_and_leaves_model_untouched(dit):
    fam, model, conds, latent = dit
    before_hash = tm.weights_hash(model)
    before_state = tm.model_state(model)
    first = plain_sample(model, conds, latent)
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[1]
        g = torch.Generator().manual_seed(1)
        src = x + torch.randn(x.shape, generator=g)
        other = x + torch.randn(x.shape, generator=g)
        bank, ref_bank = KVBank(dtype=torch.float32), KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=bank):
            res["src"] = host.denoise_cond(src, s)
        with hooks.using(step=0, record=ref_bank):
            host.denoise_cond(other, s)
        res["plain"] = host.denoise_cond(x, s)
        m = mask_latent()
        injections = {
            "replace": KVInjection("replace", bank),
            "concat": KVInjection("concat", bank),
            "composite": KVInjection("composite", bank, ref_bank=ref_bank, src_mask=m, ref_mask=m),
        }
        for mode, inj in injections.items():
            with hooks.using(step=0, inject=inj):
                res[mode] = host.denoise_cond(x, s)
                res[mode + "_cfg"] = model_k(x, s * x.new_ones([1]), **extra_args)
        # the source's own K,V replacing its K,V changes nothing (the cut / re-join is exact)
        with hooks.using(step=0, inject=KVInjection("replace", bank)):
            res["self"] = host.denoise_cond(src, s)
        res["after"] = host.denoise_cond(x, s)
        res["layers"] = bank.recorded_layers()
        res["shape"] = tuple(bank.get(res["layers"][0], 0)[0].shape)
        return x

    run_engine(model, conds, engine, latent)
    lay = cd.dit_layout(model)
    assert res["layers"] == sorted(lay.layer_names()) and res["shape"] == (1, 64, lay.hidden)
    diffs = {mode: float((res[mode] - res["plain"]).abs().max()) for mode in ("replace", "concat", "composite")}
    print(f"\n{fam}: K,V injection max |change| of the denoised latent {diffs}")
    for mode, d in diffs.items():
        assert d > 1e-5, mode
        assert torch.equal(res[mode], res[mode + "_cfg"])  # cfg 1: the engine's CFG call is hooked the same
    assert float((res["self"] - res["src"]).abs().max()) < 1e-5
    assert torch.equal(res["after"], res["plain"])  # nothing left active once the injection ends
    # after sampling: the user's MODEL unchanged and plain core sampling equal bit for bit
    assert tm.weights_hash(model) == before_hash
    assert not tm.state_diff(before_state, tm.model_state(model))
    assert torch.equal(plain_sample(model, conds, latent), first)


def test_gradient_pass_leaves_model_untouched(dit, inverted):
    """Guidance gradients run on an autograd copy: the inference-tensor weights stay the same objects."""
    fam, model, conds, latent = dit
    assert next(model.model.diffusion_model.parameters()).is_inference()
    before = tm.model_state(model)
    first = plain_sample(model, conds, latent)
    traj, _, _, sig = inverted
    m = mask_latent()
    sched = replace(edit.preset_schedule("DiffEditor", "move"), kv_mode="concat")
    with torch.inference_mode():
        jobs.edit(model, conds[0], conds[1], traj, ToyTask(m), sched, cfg=1.0, seed=0)
    assert not tm.state_diff(before, tm.model_state(model))
    assert torch.equal(plain_sample(model, conds, latent), first)


# ----------------------------------------------------------------------------- other packs' hooks
def test_other_packs_patch_and_override_still_called(dit):
    fam, model, conds, latent = dit
    calls = {"patch": 0, "override": 0, "override_tokens": set()}

    def other_patch(args, extra):
        calls["patch"] += 1
        out = extra["original_block"](args)
        out["img"] = out["img"] * 1.0  # "modifies" the output
        return out

    def other_override(func, *args, **kwargs):
        calls["override"] += 1
        k = args[1]
        calls["override_tokens"].add(k.shape[2] if kwargs.get("skip_reshape") else k.shape[1])
        return func(*args, **kwargs)

    other = model.clone()
    other.set_model_patch_replace(other_patch, "dit", "double_block", 0)
    other.model_options["transformer_options"]["optimized_attention_override"] = other_override
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[1]
        bank = KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=bank):
            res["d"] = host.denoise_cond(x, s)
        res["calls_after_cond"] = dict(calls)
        res["feats"] = host.features(x, s, (0,))
        with hooks.using(step=0, inject=KVInjection("concat", bank)):
            res["concat"] = host.denoise_cond(x, s)
        res["layers"] = bank.recorded_layers()
        return x

    run_engine(other, conds, engine, latent)
    lay = cd.dit_layout(model)
    assert res["layers"] == sorted(lay.layer_names())
    assert res["calls_after_cond"]["patch"] == 1
    # one override call per block attention (SD3.5's image-only attn2 in block 0 as well)
    n_attn = lay.num_levels + (1 if fam == "sd3" else 0)
    assert res["calls_after_cond"]["override"] == n_attn
    assert calls["patch"] == 3 and 0 in res["feats"]
    # with concat, the other override saw the longer key sequence (called after our K,V hook)
    n_txt = tm.TOKENS
    assert n_txt + 64 + 64 in calls["override_tokens"] and n_txt + 64 in calls["override_tokens"]


def test_truncated_feature_pass_makes_fewer_block_calls(dit):
    fam, model, conds, latent = dit
    seen = []
    lay = cd.dit_layout(model)
    spy_model = model.clone()
    for kind, n in (("double_block", lay.n_double), ("single_block", lay.n_single)):
        for i in range(n):
            def patch(args, extra, _k=(kind, i)):
                seen.append(_k)
                return extra["original_block"](args)
            spy_model.set_model_patch_replace(patch, "dit", kind, i)
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        seen.clear()
        f = host.features(x, sigmas[1], (1,))
        res["truncated"] = list(seen)
        res["shape"] = tuple(f[1].shape)
        seen.clear()
        host.denoise_cond(x, sigmas[1])
        res["full"] = list(seen)
        return x

    run_engine(spy_model, conds, engine, latent)
    assert res["truncated"] == [("double_block", 0), ("double_block", 1)]
    assert len(res["full"]) == lay.num_levels > len(res["truncated"])
    assert res["shape"] == (1, lay.hidden, 8, 8)


def test_bad_levels_and_foreign_trajectory(dit, sd15_model, conds, latent):
    """Feature levels that do not exist and a trajectory of an SD1.5 MODEL fed to a DiT edit: clear errors."""
    fam, model, dconds, dlatent = dit
    lay = cd.dit_layout(model)

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        host.features(x, sigmas[1], (lay.num_levels,))
        return x

    want = rf"feature levels \[{lay.num_levels}\] do not exist.*0\.\.{lay.num_levels - 1}"
    with pytest.raises(ValueError, match=want):
        run_engine(model, dconds, engine, dlatent)
    sd_sig = sigmas_for(sd15_model, 4)
    with torch.inference_mode():
        sd_traj, _ = jobs.invert_latent(sd15_model, conds[0], conds[1], latent["samples"], sd_sig, cfg=1.0,
                                        exact_iters=0, bank=None)
    m = mask_latent()
    sched = edit.preset_schedule("DiffEditor", "move")
    with pytest.raises(ValueError, match=r"trajectory was inverted on a eps prediction.*this MODEL is rectified flow"
                                         r".*invert the image again with this MODEL"), torch.inference_mode():
        jobs.edit(model, dconds[0], dconds[1], sd_traj, ToyTask(m), sched, cfg=1.0, seed=0)


def test_kv_in_a_cfg_batch(sd3_model):
    """SD3 at cfg 3 (cond and uncond in one batch): K,V are recorded from the conditional chunk only (equal to a
    conditional-only pass) and injected into both chunks."""
    conds = tm.dit_conditioning(40, "sd3"), tm.dit_conditioning(41, "sd3", scale=0.5)
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[1]
        xx = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        a, b = KVBank(dtype=torch.float32), KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=a):
            res["plain_cfg"] = model_k(xx, s * xx.new_ones([1]), **extra_args)
        with hooks.using(step=0, record=b):
            host.denoise_cond(xx, s)
        res["rec"] = max(float((a.get(n, 0)[i] - b.get(n, 0)[i]).abs().max()) for n in a.recorded_layers()
                         for i in range(2))
        res["shape"] = tuple(a.get("double_blocks.0", 0)[0].shape)
        with hooks.using(step=0, inject=KVInjection("concat", b)):
            res["inj_cfg"] = model_k(x, s * x.new_ones([1]), **extra_args)
        res["cfg"] = model_k(x, s * x.new_ones([1]), **extra_args)
        return x

    run_engine(sd3_model, conds, engine, tm.dit_latent(42), cfg=3.0)
    assert res["shape"] == (1, 64, 192) and res["rec"] < 1e-5
    assert torch.isfinite(res["inj_cfg"]).all() and float((res["inj_cfg"] - res["cfg"]).abs().max()) > 1e-5


def test_flux_kontext_reference_tokens(flux_model):
    """Flux Kontext: reference latents add image tokens after the image; the hooks see the image's own tokens
    (K,V and features on its token grid) and keep the reference tokens in place."""
    ref = tm.dit_latent(50, h=12, w=12)["samples"]
    pos = tm.dit_conditioning(40, "flux")
    pos[0][1]["reference_latents"] = [ref]
    conds = pos, tm.dit_conditioning(41, "flux")
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[1]
        bank = KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=bank):
            res["d"] = host.denoise_cond(x, s)
        with hooks.using(step=0, inject=KVInjection("replace", bank)):
            res["self"] = host.denoise_cond(x, s)
        with hooks.using(step=0, inject=KVInjection("concat", bank)):
            res["concat"] = host.denoise_cond(x, s)
        res["feats"] = {k: tuple(v.shape) for k, v in host.features(x, s, (1, 3)).items()}
        res["kv"] = tuple(bank.get("single_blocks.1", 0)[0].shape)
        return x

    tokens = []
    spy = flux_model.clone()
    spy.set_model_patch_replace(lambda args, extra: tokens.append(args["img"].shape[1]) or
                                extra["original_block"](args), "dit", "double_block", 0)
    run_engine(spy, conds, engine, tm.dit_latent(42))
    assert set(tokens) == {64 + 36}  # the 8x8 image tokens and the 6x6 reference tokens
    assert res["kv"] == (1, 64, 32) and res["feats"] == {1: (1, 32, 8, 8), 3: (1, 32, 8, 8)}
    assert float((res["self"] - res["d"]).abs().max()) < 1e-5
    assert float((res["concat"] - res["d"]).abs().max()) > 1e-5


def test_edit_sampler_in_sampler_custom_advanced(sd3_model):
    """The Edit SAMPLER inside core SamplerCustomAdvanced with a core CFGGuider (cfg 2) on a DiT; a plain
    SamplerCustomAdvanced run before and after it is the same bit for bit."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, Noise_RandomNoise, SamplerCustomAdvanced

    conds = tm.dit_conditioning(40, "sd3"), tm.dit_conditioning(41, "sd3", scale=0.5)
    lat = tm.dit_latent(42)
    sig = sigmas_for(sd3_model, 6)

    def advanced(sampler, noise, latent):
        with torch.inference_mode():
            guider = comfy.samplers.CFGGuider(sd3_model)
            guider.set_conds(conds[0], conds[1])
            guider.set_cfg(2.0)
            return SamplerCustomAdvanced().sample(noise, guider, sampler, sig, latent)[0]["samples"]

    euler = comfy.samplers.sampler_object("euler")
    first = advanced(euler, Noise_RandomNoise(7), lat)
    with torch.inference_mode():
        traj, _ = jobs.invert_latent(sd3_model, conds[0], conds[1], lat["samples"], sig, cfg=2.0, exact_iters=5,
                                     bank=KVBank())
    m = mask_latent()
    sched = replace(edit.preset_schedule("DiffEditor", "move"), kv_mode="concat")
    out = advanced(jobs.edit_sampler(traj, ToyTask(m), sched, seed=3), Noise_EmptyNoise(),
                   {"samples": torch.zeros(traj.shape)})
    assert out.shape == lat["samples"].shape and torch.isfinite(out).all()
    assert torch.equal(advanced(euler, Noise_RandomNoise(7), lat), first)


def test_attention_mask_columns_follow_the_keys():
    """An attention mask (regional prompts) keeps its text / reference key columns; new image keys are attended."""
    n_txt, n_img, n_ref = 3, 4, 2
    n = n_txt + n_img + n_ref
    fm = torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n)
    out = cd._rejoin_mask(fm, n_txt, n_img, 6)
    assert out.shape == (1, 1, n, n_txt + 6 + n_ref)
    assert torch.equal(out[..., :n_txt], fm[..., :n_txt]) and torch.equal(out[..., -n_ref:], fm[..., -n_ref:])
    assert torch.equal(out[..., n_txt:n_txt + 6], torch.zeros(1, 1, n, 6))
    bm = torch.rand(2, n, n) > 0.5
    out = cd._rejoin_mask(bm, n_txt, n_img, 8)
    assert out.dtype == torch.bool and out[..., n_txt:n_txt + 8].all() and out.shape == (2, n, n_txt + 8 + n_ref)
    assert cd._rejoin_mask(bm, n_txt, n_img, n_img) is bm  # same key count (replace): unchanged


def test_flux_attention_mask_with_injected_keys(flux_model):
    """Flux with an attention mask in the conditioning (as StyleModelApply's attn_bias makes): concat injection
    gives the mask columns for the extra keys; the masked text keys stay masked."""
    n = tm.TOKENS + 64
    pos = tm.dit_conditioning(40, "flux")
    with torch.inference_mode():
        mask = torch.zeros(1, n, n)
        mask[:, :, :2] = -1e4  # nobody attends to the first two text tokens
    pos[0][1].update(attention_mask=mask, attention_mask_img_shape=(8, 8))
    conds = pos, tm.dit_conditioning(41, "flux")
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[1]
        bank = KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=bank):
            res["d"] = host.denoise_cond(x, s)
        for mode in ("replace", "concat"):
            with hooks.using(step=0, inject=KVInjection(mode, bank)):
                res[mode] = host.denoise_cond(x, s)
        return x

    widths = set()

    def spy(func, *args, **kwargs):
        widths.add((args[1].shape[2], None if kwargs.get("mask") is None else kwargs["mask"].shape[-1]))
        return func(*args, **kwargs)

    spied = flux_model.clone()
    spied.model_options["transformer_options"]["optimized_attention_override"] = spy
    run_engine(spied, conds, engine, tm.dit_latent(42))
    assert widths == {(n, n), (n + 64, n + 64)}  # keys and mask columns agree, with and without concat
    assert float((res["replace"] - res["d"]).abs().max()) < 1e-5
    assert torch.isfinite(res["concat"]).all() and float((res["concat"] - res["d"]).abs().max()) > 1e-5


@pytest.mark.parametrize("module, cls, why", [
    ("comfy.ldm.hidream.model", "HiDreamImageTransformer2DModel", r"HiDream has no 'dit' block hook"),
    ("comfy.ldm.wan.model", "WanModel", r"WanModel is a video model"),
    ("comfy.ldm.chroma.model", "Chroma", r"Chroma is not supported yet"),
])
def test_other_dits_refused_with_their_reason(module, cls, why):
    """Backbones with no (validated) hook path are refused by name, the message listing what is supported."""
    import importlib
    from types import SimpleNamespace

    dm = object.__new__(getattr(importlib.import_module(module), cls))  # the class is all the check looks at
    fake = SimpleNamespace(diffusion_model=dm, model_sampling=None)
    with pytest.raises(ValueError, match=rf"^model: .*{why}.*supported are SD1\.x, SD2\.x and SDXL.*Flux\.1.*SD3"):
        ca.check_supported(fake, "model")


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_model_hooks_and_gradients(family):
    """bf16 weights (as real Flux / SD3.5 checkpoints run): K,V recorded in bf16, concat injection, finite
    feature gradients."""
    model = (tm.build_flux if family == "flux" else tm.build_sd3)(seed=34, dtype=torch.bfloat16)
    assert next(model.model.diffusion_model.parameters()).dtype == torch.bfloat16
    conds = tm.dit_conditioning(40, family), tm.dit_conditioning(41, family, scale=0.5)
    res = {}

    def engine(model_k, x, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[1]
        bank = KVBank()
        with hooks.using(step=0, record=bank):
            res["d"] = host.denoise_cond(x, s)
        with hooks.using(step=0, inject=KVInjection("concat", bank)):
            res["c"] = host.denoise_cond(x, s)
        with host.grad_context():
            xg = x.detach().clone().requires_grad_(True)
            f = host.features(xg, s, host.default_levels())
            (res["g"],) = torch.autograd.grad(sum(v.float().square().mean() for v in f.values()), xg)
        res["dtype"] = bank.get(bank.recorded_layers()[0], 0)[0].dtype
        return x

    run_engine(model, conds, engine, tm.dit_latent(42))
    assert res["dtype"] == torch.bfloat16
    assert float((res["c"] - res["d"]).abs().max()) > 1e-3
    assert torch.isfinite(res["g"]).all() and float(res["g"].abs().max()) > 0
