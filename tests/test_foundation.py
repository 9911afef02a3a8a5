"""Foundation: sigma-space DDIM, inversion, masked blending, regional eta, K,V bank, diffusers adapter."""
import pytest
import torch

from diffeditor.adapters.diffusers_adapter import DiffusersDenoiser, DiffusersHost, model_id
from diffeditor.samplers.blend import TrajectoryAnchor, blend_window, mask_to_latent
from diffeditor.samplers.ddim import ancestral_sigmas, ddim_step
from diffeditor.samplers.hooks import EditHooks, KVBank, KVBudgetError, KVInjection, compose_kv, default_feature_levels
from diffeditor.samplers.inversion import invert
from diffeditor.samplers.sampling import sample_diffeditor
from diffeditor.samplers.schedule import StepWindow, ddim_sigmas, ddim_timesteps, scaled_linear_alphas_cumprod

from tiny_models import make_tiny_unet


# ------------------------------------------------------------------------------------------ DDIM step
def test_ddim_timesteps_match_diffusers():
    assert ddim_timesteps(50)[:3] == [981, 961, 941] and ddim_timesteps(50)[-1] == 1
    ac = scaled_linear_alphas_cumprod()
    s = ddim_sigmas(50)
    assert s.shape == (51,) and float(s[-1]) == 0.0
    assert torch.allclose(s[0].double(), ((1 - ac[981]) / ac[981]).sqrt(), rtol=1e-6)


def test_eta_variance_is_ddpm_variance_in_vp_coordinates():
    """sigma_up in VE coordinates equals DDIM's sigma_t(eta) divided by sqrt(alpha_bar_prev)."""
    ac = scaled_linear_alphas_cumprod()
    t, tp = 501, 481
    a, ap = ac[t], ac[tp]
    s, sp = ((1 - a) / a).sqrt(), ((1 - ap) / ap).sqrt()
    for eta in (0.4, 1.0):
        ddim_sigma_t = eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
        down, up = ancestral_sigmas(s, sp, eta)
        assert torch.allclose(up, ddim_sigma_t / ap.sqrt(), rtol=1e-10)
        # the direction coefficient sqrt(1 - a' - sigma_t^2) / sqrt(a') is sigma_down
        assert torch.allclose(down, (1 - ap - ddim_sigma_t ** 2).sqrt() / ap.sqrt(), rtol=1e-10)


def test_regional_eta_step_outside_equals_ode():
    g = torch.Generator().manual_seed(0)
    x, d, n = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:5, 3:7] = 1
    ode = ddim_step(x, d, 3.0, 2.0)
    sde = ddim_step(x, d, 3.0, 2.0, eta=0.4 * m, noise=n)
    assert torch.equal(sde * (1 - m), ode * (1 - m))
    assert (sde - ode)[m.expand_as(x) > 0].abs().min() > 0


def test_guided_step_changes_only_x0_term():
    g = torch.Generator().manual_seed(1)
    x, d, dg = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    a = ddim_step(x, d, 3.0, 2.0, denoised_guided=dg)
    assert torch.allclose(a - ddim_step(x, d, 3.0, 2.0), dg - d, atol=1e-6)


def test_step_windows_map_to_official_indices():
    assert StepWindow(0.22, 0.4).indices(50) == list(range(11, 20))
    assert StepWindow(0.44, 0.6, 2).indices(50) == [22, 24, 26, 28]
    assert blend_window("last fraction", 0.2).indices(50) == list(range(40, 50))
    with pytest.raises(ValueError, match="fraction"):
        blend_window("until fraction", 1.5)


# ------------------------------------------------------------------------------------ inversion
@pytest.fixture(scope="module")
def lively():
    """A tiny UNet whose eps predictions are O(0.3), so inversion errors are clearly measurable."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 16, 16, generator=g)
    cond = torch.randn(1, 6, 32, generator=g)
    return make_tiny_unet(out_scale=0.5), x0, cond


def test_plain_inversion_error_is_explained_by_local_defects(lively):
    """Plain DDIM inversion is only approximately invertible.

    Bound: each inverse step leaves a local defect e_j = |x_j - S(x_{j+1})| (S = the deterministic sampling
    step). The sampling chain maps these defects forward; for a deterministic DDIM step with small eps
    Jacobians each step is ~1-Lipschitz, so the reconstruction error is at most ~sum_j e_j. We assert it is
    below 2 * sum_j e_j (factor 2 = margin for the Lipschitz constant) and clearly non-zero.
    """
    unet, x0, cond = lively
    den = DiffusersDenoiser(unet, cond)
    sig = ddim_sigmas(50)
    tr = invert(den, x0, sig, disable=True)
    assert tr.model_calls == 50 and len(tr.latents) == 51 and torch.equal(tr.x0, x0)
    rec = sample_diffeditor(den, torch.zeros_like(x0), sig, trajectory=tr, disable=True)
    err = float((rec - x0).norm())
    defects = 0.0
    with torch.no_grad():
        for i in range(50):
            d = den(tr.latents[i], sig[i:i + 1])
            defects += float((tr.latents[i + 1] - ddim_step(tr.latents[i], d, sig[i], sig[i + 1])).norm())
    assert 0.01 * float(x0.norm()) < err < 2.0 * defects


def test_exact_inversion_reconstructs_within_1e3(lively):
    unet, x0, cond = lively
    den = DiffusersDenoiser(unet, cond)
    sig = ddim_sigmas(50)
    tr = invert(den, x0, sig, exact_iters=6, exact_tol=1e-6, disable=True)
    rec = sample_diffeditor(den, torch.zeros_like(x0), sig, trajectory=tr, disable=True)
    rel = float((rec - x0).norm() / x0.norm())
    assert rel <= 1e-3, rel
    assert 50 < tr.model_calls <= 50 * 7


def test_masked_blend_round_trip_outside_is_exact(tiny_unet, text_pair, latent):
    cond, uncond = text_pair
    sig = ddim_sigmas(20)
    tr = invert(DiffusersDenoiser(tiny_unet, cond), latent, sig, disable=True)
    mask_px = torch.zeros(1, 128, 128)
    mask_px[:, 32:80, 40:96] = 1
    m = mask_to_latent(mask_px, latent.shape, feather_px=4)
    assert ((m > 0.01) & (m < 0.99)).any()  # feathered: a soft edge exists
    anchor = TrajectoryAnchor(tr, m, blend_window("every step"))
    den = DiffusersDenoiser(tiny_unet, cond, uncond, cfg=5.0)
    out = sample_diffeditor(den, torch.zeros_like(latent), sig, trajectory=tr, blend=anchor, eta=0.6,
                            eta_mask=(m > 0).float(), seed=1, disable=True)
    outside = m == 0
    assert torch.allclose(out[outside.expand_as(out)], latent[outside.expand_as(latent)], atol=1e-6)
    assert (out - latent)[(m > 0.99).expand_as(out)].abs().max() > 1e-3  # the edit region did change


def test_anchor_wrap_model_makes_any_euler_loop_follow_trajectory(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    sig = ddim_sigmas(10)
    den = DiffusersDenoiser(tiny_unet, cond)
    tr = invert(den, latent, sig, disable=True)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:10, 4:10] = 1
    wrapped = TrajectoryAnchor(tr, m).wrap_model(den)
    x = tr.z_T.clone() + 0.5 * m * torch.randn_like(latent)  # a different start inside the mask
    with torch.no_grad():
        for i in range(10):  # a plain k-diffusion Euler loop, not our sampler
            d = wrapped(x, sig[i:i + 1])
            x = d + (x - d) / sig[i] * sig[i + 1] if sig[i + 1] > 0 else d
            assert torch.allclose((x * (1 - m)), tr.latents[i + 1] * (1 - m), atol=1e-5)


def test_regional_eta_full_run_outside_matches_ode_when_locked(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    sig = ddim_sigmas(12)
    den = DiffusersDenoiser(tiny_unet, cond)
    tr = invert(den, latent, sig, disable=True)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 5:11, 2:9] = 1
    anchor = TrajectoryAnchor(tr, m)
    ode = sample_diffeditor(den, latent, sig, trajectory=tr, blend=anchor, disable=True)
    sde = sample_diffeditor(den, latent, sig, trajectory=tr, blend=anchor, eta=0.5, eta_mask=m,
                            eta_window=StepWindow(0.2, 0.6), seed=5, disable=True)
    assert torch.equal(sde * (1 - m), ode * (1 - m))
    assert not torch.allclose(sde * m, ode * m)


# ------------------------------------------------------------------------------------------- K,V bank
def test_compose_kv_hand_computed():
    k = torch.arange(6.).reshape(1, 3, 2)
    v = -k
    sk = torch.full((1, 3, 2), 10.)
    sv = torch.full((1, 3, 2), 20.)
    rk = torch.full((1, 3, 2), 30.)
    rv = torch.full((1, 3, 2), 40.)
    assert torch.equal(compose_kv("replace", k, v, (sk, sv))[0], sk)
    ck, cv = compose_kv("concat", k.repeat(2, 1, 1), v.repeat(2, 1, 1), (sk, sv))
    assert ck.shape == (2, 6, 2) and torch.equal(ck[:, :3], k.repeat(2, 1, 1)) and torch.equal(cv[:, 3:], sv.repeat(2, 1, 1))
    keep_s = torch.tensor([True, False, True])
    keep_r = torch.tensor([False, True, False])
    ck, cv = compose_kv("composite", k, v, (sk, sv), (rk, rv), keep_s, keep_r)
    assert ck[0, :, 0].tolist() == [10., 10., 30.] and cv[0, :, 0].tolist() == [20., 20., 40.]


def test_composite_injection_masks_follow_token_grid():
    bank, ref = KVBank(dtype=torch.float32), KVBank(dtype=torch.float32)
    tok = torch.arange(16.).reshape(1, 16, 1)
    bank.put("L", 0, tok, tok)
    ref.put("L", 0, tok + 100, tok + 100)
    src_mask = torch.zeros(8, 8)
    src_mask[:4, :] = 1  # top half of the base is edited: keep its bottom half
    ref_mask = torch.zeros(8, 8)
    ref_mask[:, :4] = 1  # left half of the reference
    inj = KVInjection("composite", bank, ref_bank=ref, src_mask=src_mask, ref_mask=ref_mask)
    k, _ = inj.apply("L", 0, tok, tok, (4, 4))
    assert k[0, :, 0].tolist() == list(range(8, 16)) + [100 + i for i in (0, 1, 4, 5, 8, 9, 12, 13)]


def test_kv_record_then_replace_reproduces_output(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    hooks = EditHooks()
    den = DiffusersDenoiser(tiny_unet, cond, hooks=hooks)
    bank = KVBank(dtype=torch.float32)
    sigma = torch.tensor([2.0])
    with torch.no_grad(), hooks.using(step=3, record=bank):
        ref_out = den(latent, sigma)
    assert len(bank.recorded_layers()) == 4 and bank.recorded_steps() == [3]
    other = latent.flip(-1)
    with torch.no_grad(), hooks.using(step=3, inject=KVInjection("replace", bank)):
        same = den(latent, sigma)
        changed = den(other, sigma)
    with torch.no_grad():
        plain_other = den(other, sigma)
    assert torch.allclose(same, ref_out, atol=1e-5)
    assert not torch.allclose(changed, plain_other, atol=1e-4)  # injection did something on another input


def test_kv_bank_budget_and_steps():
    bank = KVBank(steps=[2, 3], byte_budget=1000)
    assert bank.wants("L", 2) and not bank.wants("L", 1)
    bank.put("L", 2, torch.zeros(1, 10, 10), torch.zeros(1, 10, 10))  # 400 bytes in fp16
    assert bank.nbytes == 400
    with pytest.raises(KVBudgetError, match="budget"):
        bank.put("M", 3, torch.zeros(1, 20, 10), torch.zeros(1, 20, 10))


def test_inversion_records_bank_on_requested_steps(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    hooks = EditHooks()
    den = DiffusersDenoiser(tiny_unet, cond, hooks=hooks)
    sig = ddim_sigmas(10)
    bank = KVBank(steps=StepWindow(0.2, 1.0).indices(10))
    tr = invert(den, latent, sig, hooks=hooks, bank=bank, disable=True)
    assert tr.bank is bank and bank.recorded_steps() == list(range(2, 10))
    assert all(k.dtype == torch.float16 and k.device.type == "cpu" for k, _ in bank._data.values())


# ------------------------------------------------------------------------------ features and gradients
def test_features_levels_shapes_gradient_and_truncation(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    den = DiffusersDenoiser(tiny_unet, cond)
    host = DiffusersHost(den)
    levels = default_feature_levels(host.num_up_blocks)
    assert levels == (0, 1)
    ran = []
    h = tiny_unet.up_blocks[2].register_forward_hook(lambda *a: ran.append(1))
    try:
        x = latent.clone().requires_grad_(True)
        with host.grad_context():
            f = host.features(x, torch.tensor([3.0]), levels)
            assert f[0].shape == (1, 64, 8, 8) and f[1].shape == (1, 64, 16, 16)  # half and full latent res
            (g,) = torch.autograd.grad(f[1].square().mean(), x)
    finally:
        h.remove()
    assert not ran, "the forward pass was not truncated after the deepest requested level"
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_hooks_restore_unet_processors(tiny_unet, text_pair, latent):
    before = {k: type(p) for k, p in tiny_unet.attn_processors.items()}
    cond, _ = text_pair
    with torch.no_grad():
        DiffusersDenoiser(tiny_unet, cond)(latent, torch.tensor([1.0]))
    assert {k: type(p) for k, p in tiny_unet.attn_processors.items()} == before


def test_hooked_attention_matches_stock_processor(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    sigma = torch.tensor([1.5])
    with torch.no_grad():
        ours = DiffusersDenoiser(tiny_unet, cond)(latent, sigma)
        xc = latent / (1 + sigma ** 2) ** 0.5
        t = DiffusersDenoiser(tiny_unet, cond).timestep(sigma)
        eps = tiny_unet(xc, t, encoder_hidden_states=cond).sample
    assert torch.allclose(ours, latent - sigma * eps, atol=1e-5)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_input(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    den = DiffusersDenoiser(tiny_unet, cond)
    sig = ddim_sigmas(5)
    bad = latent.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="latent contains NaN"):
        invert(den, bad, sig)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ddim_sigmas(0)
    tr = invert(den, latent, sig, model_id=model_id(tiny_unet), disable=True)
    with pytest.raises(ValueError, match="another model"):
        tr.check_compatible(model_id=model_id(make_tiny_unet(seed=9)))
    with pytest.raises(ValueError, match="trajectory has 5 steps"):
        sample_diffeditor(den, latent, ddim_sigmas(6), trajectory=tr, disable=True)
    with pytest.raises(ValueError, match="latent is 16x16"):
        sample_diffeditor(den, torch.zeros(1, 4, 8, 8), sig, trajectory=tr, disable=True)
    with pytest.raises(ValueError, match="mask is empty"):
        mask_to_latent(torch.zeros(1, 128, 128), latent.shape)
    with pytest.raises(ValueError, match="mask is 64x64 pixels"):
        mask_to_latent(torch.ones(1, 64, 64), latent.shape)
    with pytest.raises(ValueError, match="mask has batch 3"):
        mask_to_latent(torch.ones(3, 128, 128), latent.shape)
    assert model_id(tiny_unet) == model_id(tiny_unet)


def test_kv_sharing_on_a_tail_of_the_schedule_reads_the_matching_bank_steps(tiny_unet, text_pair, latent):
    cond, _ = text_pair
    hooks = EditHooks()
    den = DiffusersDenoiser(tiny_unet, cond, hooks=hooks)
    sig = ddim_sigmas(10)
    # exact inversion: the last fixed-point call evaluates the converged latent, i.e. the sampling path
    tr = invert(den, latent, sig, hooks=hooks, bank=KVBank(dtype=torch.float32), exact_iters=8, exact_tol=1e-7,
                disable=True)
    read = []

    class Spy(KVBank):
        def get(self, layer, step, like=None):
            read.append(step)
            return tr.bank.get(layer, step, like)

    k = 4
    shared = sample_diffeditor(den, tr.latents[k], sig[k:], kv=KVInjection("replace", Spy()), kv_trajectory=tr,
                               hooks=hooks, disable=True)
    plain = sample_diffeditor(den, tr.latents[k], sig[k:], disable=True)
    assert sorted(set(read)) == list(range(k, 10))
    # replacing K,V with those recorded on the same trajectory reproduces the source path (the bank is fp32)
    assert torch.allclose(shared, plain, atol=1e-4)
    with pytest.raises(ValueError, match="a tail of"):
        sample_diffeditor(den, tr.latents[k], ddim_sigmas(6), kv=KVInjection("replace", tr.bank), kv_trajectory=tr,
                          hooks=hooks, disable=True)
