"""Concept erasure: UCE closed form (guidance/uce.py), its reversible diffusers application
(adapters/diffusers_erasure.py) and SLD guidance (guidance/sld.py). CPU, seeded, fast.

Notation for UCE (see guidance/uce.py): stack all concepts (erase first, then preserve) as rows of C ([N, D]),
targets V = [W C_gᵀ | W C_pᵀ] ([out, N]), weights S = diag(s), Gram G = C Cᵀ. W' minimises
    λ‖W' − W‖² + Σ_i s_i ‖W' c_i − v_i‖²,
whose stationarity condition is λ(W' − W) + E S C = 0 with the residual E = W' Cᵀ − V. Multiplying by Cᵀ:
    λ(E − D0) + E S G = 0   ⇒   E = λ D0 (λI + S G)⁻¹,   D0 = W Cᵀ − V  (the residual before the edit).
For S = I, G is symmetric PSD so ‖(λI + G)⁻¹‖₂ = 1/(λ + σ_min(G)) and
    ‖E‖_F ≤ λ/(λ + σ_min(G)) · ‖D0‖_F .
With linearly independent concepts σ_min(G) > 0, so E → 0 as λ → 0 (the constraints become exact); at λ = 0.5 with
randn embeddings (‖c‖² ≈ D, σ_min(G) ≈ (√D − √N)²) the factor is ≈ 0.5/(0.5 + 27) < 0.02 for D = 64, N = 7.
D0 is zero in the preserve columns, so the preserve residual is bounded by the same quantity.
"""
import hashlib

import pytest
import torch

from diffeditor.guidance.uce import (concept_embedding, last_content_token_index, uce_deltas, uce_solve)
from diffeditor.guidance.sld import (SLD_PRESETS, SLDConfig, SLDState, sld_correction_sigma, sld_guidance,
                                     sld_guidance_sigma, sld_preset)

D, OUT, NE, NP = 64, 48, 3, 4


def _setup(seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(OUT, D, generator=g, dtype=torch.float64) / D ** 0.5
    ce = torch.randn(NE, D, generator=g, dtype=torch.float64) * scale
    cg = torch.randn(NE, D, generator=g, dtype=torch.float64) * scale
    cp = torch.randn(NP, D, generator=g, dtype=torch.float64) * scale
    return W.to(dtype), ce.to(dtype), cg.to(dtype), cp.to(dtype)


def _residuals(W_new, W, ce, cg, cp):
    """E = W' Cᵀ − V and D0 = W Cᵀ − V, in float64, erase columns first."""
    W_new, W, ce, cg, cp = (t.double() for t in (W_new, W, ce, cg, cp))
    C = torch.cat([ce, cp], 0)
    V = torch.cat([W @ cg.T, W @ cp.T], 1)
    return W_new @ C.T - V, W @ C.T - V


def _explicit(W, ce, cg, cp, lam, se, sp):
    W, ce, cg, cp = (t.double() for t in (W, ce, cg, cp))
    num = lam * W + se * (W @ cg.T) @ ce + sp * (W @ cp.T) @ cp
    den = lam * torch.eye(W.shape[1], dtype=torch.float64) + se * ce.T @ ce + sp * cp.T @ cp
    return num @ torch.linalg.inv(den)


# ----------------------------------------------------------------------------------------------------- UCE
@pytest.mark.parametrize("lam,se,sp", [(0.5, 1.0, 1.0), (2.0, 0.3, 3.0), (1e-3, 5.0, 0.5)])
def test_solve_equals_explicit_inverse_formula(lam, se, sp):
    W, ce, cg, cp = _setup(1)
    W_new = uce_solve(W, ce, cg, cp, lam=lam, erase_scale=se, preserve_scale=sp)
    assert W_new.dtype == torch.float32 and W_new.shape == W.shape
    ref = _explicit(W, ce, cg, cp, lam, se, sp)
    torch.testing.assert_close(W_new.double(), ref, rtol=1e-5, atol=1e-6)


def test_solve_equals_independent_regularised_lstsq():
    # W'ᵀ is the least-squares solution of the stacked equations
    #   √λ I W'ᵀ = √λ Wᵀ,   √s_e c_eᵀ W'ᵀ = √s_e (W c_g)ᵀ,   √s_p c_pᵀ W'ᵀ = √s_p (W c_p)ᵀ
    W, ce, cg, cp = _setup(2)
    lam, se, sp = 0.5, 2.0, 0.7
    W_new = uce_solve(W, ce, cg, cp, lam=lam, erase_scale=se, preserve_scale=sp)
    Wd, ced, cgd, cpd = (t.double() for t in (W, ce, cg, cp))
    M = torch.cat([lam ** 0.5 * torch.eye(D, dtype=torch.float64), se ** 0.5 * ced, sp ** 0.5 * cpd], 0)
    R = torch.cat([lam ** 0.5 * Wd.T, se ** 0.5 * (Wd @ cgd.T).T, sp ** 0.5 * (Wd @ cpd.T).T], 0)
    sol = torch.linalg.lstsq(M, R).solution.T
    torch.testing.assert_close(W_new.double(), sol, rtol=1e-5, atol=1e-6)


def test_residual_matches_closed_form_and_bound_at_default_lambda():
    W, ce, cg, cp = _setup(3)
    lam = 0.5
    W_new = uce_solve(W, ce, cg, cp, lam=lam)
    E, D0 = _residuals(W_new, W, ce, cg, cp)
    C = torch.cat([ce, cp], 0).double()
    G = C @ C.T
    E_pred = lam * D0 @ torch.linalg.inv(lam * torch.eye(G.shape[0], dtype=torch.float64) + G)
    # fp32 rounding of W' (|W'| ~ 1/√D per entry) times |c| ~ √D: absolute error ~1e-6
    torch.testing.assert_close(E, E_pred, rtol=1e-4, atol=1e-5)
    s_min = torch.linalg.eigvalsh(G)[0].item()
    factor = lam / (lam + s_min)
    assert factor < 0.02  # randn concepts in 64-d: σ_min(G) ≈ (8 − √7)² ≈ 29
    assert E.norm() <= factor * D0.norm() * (1 + 1e-4) + 1e-5
    # concretely: erased concepts now map (almost) onto their guides, preserved ones (almost) onto themselves
    e_err = (W_new.double() @ ce.double().T - W.double() @ cg.double().T).norm()
    p_err = (W_new.double() @ cp.double().T - W.double() @ cp.double().T).norm()
    assert e_err <= factor * D0.norm() + 1e-5
    assert p_err <= factor * D0.norm() + 1e-5
    assert e_err < 0.02 * D0[:, :NE].norm()


def test_constraints_become_exact_as_lambda_vanishes():
    W, ce, cg, cp = _setup(4)
    errs = []
    for lam in (1.0, 1e-2, 1e-4, 1e-7):
        E, D0 = _residuals(uce_solve(W, ce, cg, cp, lam=lam), W, ce, cg, cp)
        errs.append((E.norm() / D0.norm()).item())
    assert all(b < a for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-5  # λ/σ_min ≈ 4e-9, the rest is fp32 rounding of W'


def test_scales_are_monotone():
    # For the minimiser x(s) of f(x) + s·h(x), h(x(s)) is non-increasing in s: comparing the optimality of x(a)
    # and x(b) gives (b − a)(h(x(b)) − h(x(a))) ≤ 0. Here h = Σ_e ‖W'c_e − W c_g‖² (erase_scale) and
    # h = Σ_p ‖W'c_p − W c_p‖² (preserve_scale). Unit-norm-ish concepts so λ = 0.5 matters.
    W, ce, cg, cp = _setup(5, scale=D ** -0.5)
    scales = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0]
    erase_h, pres_h = [], []
    for s in scales:
        E, _ = _residuals(uce_solve(W, ce, cg, cp, lam=0.5, erase_scale=s), W, ce, cg, cp)
        erase_h.append((E[:, :NE] ** 2).sum().item())
        E, _ = _residuals(uce_solve(W, ce, cg, cp, lam=0.5, preserve_scale=s), W, ce, cg, cp)
        pres_h.append((E[:, NE:] ** 2).sum().item())
    assert all(b <= a * (1 + 1e-6) + 1e-10 for a, b in zip(erase_h, erase_h[1:])), erase_h
    assert all(b <= a * (1 + 1e-6) + 1e-10 for a, b in zip(pres_h, pres_h[1:])), pres_h
    assert erase_h[-1] < 0.2 * erase_h[0] and pres_h[-1] < 0.2 * max(pres_h)
    # erase_scale = 0: nothing to erase, preserve terms alone are satisfied by W itself → W' = W
    torch.testing.assert_close(uce_solve(W, ce, cg, cp, erase_scale=0.0), W, rtol=0, atol=1e-6)


def test_per_concept_scales_and_shared_guide():
    W, ce, cg, cp = _setup(6)
    a = uce_solve(W, ce, cg[0], cp, erase_scale=[1.0, 2.0, 0.5])
    Wd, ced, cgd, cpd = (t.double() for t in (W, ce, cg[0:1].expand(NE, -1), cp))
    s = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    num = 0.5 * Wd + (Wd @ cgd.T * s) @ ced + (Wd @ cpd.T) @ cpd
    den = 0.5 * torch.eye(D, dtype=torch.float64) + (ced.T * s) @ ced + cpd.T @ cpd
    ref = num @ torch.linalg.inv(den)
    torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-6)
    # guide == erase concept → nothing changes
    torch.testing.assert_close(uce_solve(W, ce, ce, cp), W, rtol=0, atol=1e-6)


def test_deltas_match_per_layer_solve():
    g = torch.Generator().manual_seed(7)
    _, ce, cg, cp = _setup(7)
    weights = {f"l{i}.to_{kv}": torch.randn(o, D, generator=g) / D ** 0.5
               for i, o in enumerate((16, 40)) for kv in "kv"}
    weights["half"] = (torch.randn(24, D, generator=g) / D ** 0.5).half()
    deltas = uce_deltas(weights, ce, cg, cp, lam=0.5, erase_scale=1.5, preserve_scale=0.8)
    assert set(deltas) == set(weights)
    for n, W in weights.items():
        assert deltas[n].dtype == torch.float32 and deltas[n].shape == W.shape
        ref = uce_solve(W, ce, cg, cp, lam=0.5, erase_scale=1.5, preserve_scale=0.8).double() - W.double()
        torch.testing.assert_close(deltas[n].double(), ref, rtol=1e-4, atol=2e-6)
        # rank ≤ number of erase concepts
        assert torch.linalg.matrix_rank(deltas[n].double(), rtol=1e-6).item() <= NE


def test_validation_errors():
    W, ce, cg, cp = _setup(8)
    with pytest.raises(ValueError, match="concepts"):
        uce_solve(W, [], cg, cp)
    with pytest.raises(ValueError, match="concepts"):
        uce_deltas({"w": W}, torch.empty(0, D), cg, cp)
    with pytest.raises(ValueError, match="context-dim mismatch"):
        uce_solve(W[:, :32], ce, cg, cp)
    with pytest.raises(ValueError, match="context-dim mismatch"):
        uce_deltas({"a.to_k": W, "b.to_v": torch.zeros(8, 2048)}, ce, cg, cp)
    with pytest.raises(ValueError, match="guide"):
        uce_solve(W, ce, cg[:2], cp)
    with pytest.raises(ValueError, match="preserve"):
        uce_solve(W, ce, cg, cp[:, :10])
    with pytest.raises(ValueError, match="erase_scale"):
        uce_solve(W, ce, cg, cp, erase_scale=-1.0)
    with pytest.raises(ValueError, match="lam"):
        uce_solve(W, ce, cg, cp, lam=0.0)
    with pytest.raises(ValueError, match="empty"):
        uce_deltas({}, ce, cg, cp)
    uce_solve(W, ce, cg, None)  # no preserve concepts is fine


def test_token_position_and_concept_embedding():
    assert last_content_token_index(2) == 0  # "" → start token
    assert last_content_token_index(5) == 3  # <s> a b c </s> → "c"
    with pytest.raises(ValueError):
        last_content_token_index(1)
    hs = torch.arange(77 * 4, dtype=torch.float32).reshape(1, 77, 4)
    torch.testing.assert_close(concept_embedding(hs, 5), hs[0, 3])
    torch.testing.assert_close(concept_embedding(hs[0], 2), hs[0, 0])
    torch.testing.assert_close(concept_embedding(hs, torch.tensor(4)), hs[0, 2])
    hb = torch.cat([hs, hs + 1000], 0)
    torch.testing.assert_close(concept_embedding(hb, [3, 6]), torch.stack([hs[0, 1], hs[0, 4] + 1000]))
    with pytest.raises(ValueError):
        concept_embedding(hb, 3)
    with pytest.raises(ValueError):
        concept_embedding(hs, 100)


# ------------------------------------------------------------------------------------------- diffusers UNet
def _tiny_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    return unet.eval()


def _hash(module):
    h = hashlib.sha256()
    for n, t in module.state_dict().items():
        h.update(n.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_unet_patch_erases_concept_and_restores_bit_exactly():
    from diffeditor.adapters.diffusers_erasure import cross_attention_kv_weights, patched, uce_patch

    unet = _tiny_unet()
    g = torch.Generator().manual_seed(11)
    ce = torch.randn(2, 32, generator=g)
    guide = torch.randn(32, generator=g)
    cp = torch.randn(2, 32, generator=g)
    x = torch.randn(1, 4, 8, 8, generator=g)

    def run(ctx):
        with torch.no_grad():
            return unet(x, 500, encoder_hidden_states=ctx.unsqueeze(0)).sample

    targets = cross_attention_kv_weights(unet)
    n_attn2 = sum(1 for n, _ in unet.named_modules() if n.endswith(".attn2"))  # down 1, mid 1, up 2
    assert n_attn2 == 4 and len(targets) == 2 * n_attn2 and all("attn2.to_" in n for n in targets)
    before_hash = _hash(unet)
    before = {n: t.clone() for n, t in unet.state_dict().items()}

    ctx_erase = torch.stack([ce[0], ce[1], cp[0]])
    ctx_guide = torch.stack([guide, guide, cp[0]])
    ctx_keep = cp
    y_erase, y_guide, y_keep = run(ctx_erase), run(ctx_guide), run(ctx_keep)

    # Tight λ: per-token K/V residual ≤ λ/(λ+σ_min(G)) ≈ 1e-5 relative (σ_min ≈ (√32 − 2)² ≈ 13), so the patched
    # model must see the erased tokens as the guide and the preserved ones as themselves.
    deltas = uce_patch(unet, ce, guide, cp, lam=1e-4)
    assert set(deltas) == set(targets)
    with patched(unet, deltas) as m:
        assert m is unet
        assert _hash(unet) != before_hash
        p_erase, p_keep = run(ctx_erase), run(ctx_keep)
    gap = (y_erase - y_guide).norm()
    assert gap > 1e-3 * y_erase.norm()  # the concept matters to the unpatched model
    assert (p_erase - y_erase).norm() > 0.5 * gap  # output changes for the erased concept ...
    assert (p_erase - y_guide).norm() < 1e-3 * gap  # ... to what the guide gives
    assert (p_keep - y_keep).norm() < 1e-3 * gap  # preserved concepts unaffected
    assert _hash(unet) == before_hash
    for n, t in unet.state_dict().items():
        assert torch.equal(t, before[n]), n

    # default λ, and restoration when the block raises
    deltas = uce_patch(unet, ce, guide, cp)
    with pytest.raises(RuntimeError, match="boom"):
        with patched(unet, deltas):
            assert not torch.equal(run(ctx_erase), y_erase)
            raise RuntimeError("boom")
    assert _hash(unet) == before_hash
    torch.testing.assert_close(run(ctx_erase), y_erase, rtol=0, atol=0)

    with pytest.raises(ValueError, match="context-dim mismatch"):
        uce_patch(unet, torch.randn(1, 64), torch.randn(64), None)
    with pytest.raises(KeyError):
        with patched(unet, {"nope.weight": torch.zeros(1)}):
            pass
    assert _hash(unet) == before_hash


# ----------------------------------------------------------------------------------------------------- SLD
def test_presets_match_table():
    table = {  # warm-up, s_S, λ_th, s_m, β_m  (reference §4.2 = diffusers SafetyConfig)
        "weak": (15, 20, 0.0, 0.0, 0.0),
        "medium": (10, 1000, 0.01, 0.3, 0.4),
        "strong": (7, 2000, 0.025, 0.5, 0.7),
        "max": (0, 5000, 1.0, 0.5, 0.7),
    }
    assert set(SLD_PRESETS) == set(table)
    for k, v in table.items():
        c = SLD_PRESETS[k]
        assert (c.warmup_steps, c.guidance_scale, c.threshold, c.momentum_scale, c.momentum_beta) == v
        assert sld_preset(k.upper()) is c
    with pytest.raises(ValueError):
        sld_preset("extreme")


def _eps(seed, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * 0.3 for _ in range(3)]


def test_zero_guidance_scale_is_plain_cfg_exactly():
    for mom in (0.0, 0.5):
        cfg = SLDConfig(warmup_steps=0, guidance_scale=0.0, threshold=0.5, momentum_scale=mom, momentum_beta=0.7)
        st, st_sig = SLDState(), SLDState()
        for i in range(4):
            eu, ec, es = _eps(i)
            out = sld_guidance(eu, ec, es, 7.5, cfg, st)
            assert torch.equal(out, eu + 7.5 * (ec - eu))
            # sigma space: n = x − D = σ ε; result must equal ComfyUI's noise-space CFG n_u + w (n_c − n_u)
            x = torch.randn_like(eu)
            sigma = torch.tensor([3.0, 0.7])
            s4 = sigma.view(-1, 1, 1, 1)
            Dc, Du, Ds = x - s4 * ec, x - s4 * eu, x - s4 * es
            res = sld_guidance_sigma(x, sigma, Dc, Du, Ds, 7.5, cfg, st_sig)
            nc, nu = x - Dc, x - Du
            assert torch.equal(res, nu + 7.5 * (nc - nu))
        assert st.step == 4 and torch.equal(st.momentum, torch.zeros_like(st.momentum))


def test_safety_pushes_away_from_safety_direction():
    # With ν = 0 and i ≥ i_warm: ε − ε_cfg = −w·μ⊙(ε_S − ε_u) = w·μ⊙(T − ε_u), T = ε_u − (ε_S − ε_u).
    # Where the mask is active (ε_c − ε_S < λ_th) and γ > 0 the result moves from plain CFG in the direction of
    # T − ε_u, i.e. sign(ε − ε_cfg) = −sign(ε_S − ε_u); where it is inactive the result is plain CFG exactly.
    eu, ec, es = _eps(20)
    w = 6.0
    cfg = SLDConfig(warmup_steps=0, guidance_scale=5.0, threshold=0.05, momentum_scale=0.0, momentum_beta=0.0)
    out = sld_guidance(eu, ec, es, w, cfg, SLDState())
    plain = eu + w * (ec - eu)
    delta = out - plain
    diff = ec - es
    active = diff < cfg.threshold
    gamma = torch.clamp(5.0 * diff.abs(), max=1.0)
    assert active.any() and (~active).any() and (gamma[active] == 1).any() and (gamma[active] < 1).any()
    assert torch.equal(delta[~active], torch.zeros_like(delta[~active]))
    nz = active & (gamma > 0) & ((es - eu).abs() > 1e-6)
    assert torch.equal(torch.sign(delta[nz]), -torch.sign((es - eu)[nz]))
    T = eu - (es - eu)
    torch.testing.assert_close(delta[active], (w * gamma * (T - eu))[active], rtol=1e-5, atol=1e-6)
    assert (delta * (es - eu)).sum() < 0
    sat = active & (gamma == 1)  # saturated: ε = ε_u + w(ε_c − ε_S), guidance relative to the safety concept
    torch.testing.assert_close(out[sat], (eu + w * (ec - es))[sat], rtol=1e-5, atol=1e-6)


def test_momentum_recursion_by_hand():
    # Element 0: ε_u = 0, ε_c = 0, ε_S = 1 → ε_c − ε_S = −1 < 0 = λ_th, γ = min(1, 10·1) = 1, μ(ε_S − ε_u) = 1.
    # Element 1: ε_S = −1 → ε_c − ε_S = 1 ≥ 0, mask off: ψ = s_m ν with ν ≡ 0 → ε = 0 throughout.
    # s_m = 0.5, β = 0.5, warm-up 2, w = 2; ψ_i = 1 + 0.5 ν_i, ν_{i+1} = 0.5 ν_i + 0.5 ψ_i:
    #   i=0: ψ=1        ν=0.5        ε = 0 (warm-up)
    #   i=1: ψ=1.25     ν=0.875      ε = 0 (warm-up, ν still updated)
    #   i=2: ψ=1.4375   ν=1.15625    ε = 2(0 − 1.4375)   = −2.875
    #   i=3: ψ=1.578125 ν=1.3671875  ε = 2(0 − 1.578125) = −3.15625
    cfg = SLDConfig(warmup_steps=2, guidance_scale=10.0, threshold=0.0, momentum_scale=0.5, momentum_beta=0.5)
    eu = torch.zeros(2)
    ec = torch.zeros(2)
    es = torch.tensor([1.0, -1.0])
    st = SLDState()
    expected = [(0.0, 0.5), (0.0, 0.875), (-2.875, 1.15625), (-3.15625, 1.3671875)]
    for i, (e, nu) in enumerate(expected):
        out = sld_guidance(eu, ec, es, 2.0, cfg, st)
        assert torch.equal(out, torch.tensor([e, 0.0])), (i, out)
        assert torch.equal(st.momentum, torch.tensor([nu, 0.0])), (i, st.momentum)
        assert st.step == i + 1
    st.reset()
    assert st.momentum is None and st.step == 0


def test_sigma_wrapper_is_sigma_times_eps_guidance():
    cfg = SLD_PRESETS["medium"]
    st_e, st_s = SLDState(step=10), SLDState(step=10)  # past warm-up
    for i in range(3):
        eu, ec, es = _eps(30 + i)
        x = torch.randn_like(eu)
        sigma = 2.5 - i
        ref = sigma * sld_guidance(eu, ec, es, 5.0, cfg, st_e)
        res = sld_guidance_sigma(x, torch.tensor(sigma), x - sigma * ec, x - sigma * eu, x - sigma * es, 5.0, cfg,
                                 st_s)
        torch.testing.assert_close(res, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(st_s.momentum, st_e.momentum, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ref, sigma * (eu + 5.0 * (ec - eu)))  # SLD did something


def test_sld_validation():
    with pytest.raises(ValueError):
        SLDConfig(momentum_beta=1.5)
    with pytest.raises(ValueError):
        SLDConfig(warmup_steps=-1)
    eu, ec, es = _eps(40)
    st = SLDState()
    sld_guidance(eu, ec, es, 3.0, SLD_PRESETS["strong"], st)
    with pytest.raises(ValueError, match="reset"):
        sld_guidance(eu[:1], ec[:1], es[:1], 3.0, SLD_PRESETS["strong"], st)
    with pytest.raises(ValueError):
        sld_guidance(eu, ec, es[:1], 3.0, SLD_PRESETS["strong"], SLDState())
    with pytest.raises(ValueError, match="sigma"):
        sld_guidance_sigma(eu, 0.0, ec, eu, es, 3.0, SLD_PRESETS["strong"], SLDState())


def test_sld_as_an_additive_correction_equals_sld_on_plain_cfg():
    """``sld_correction_sigma`` (what the node adds after the MODEL's guidance): plain CFG plus the correction is
    the full SLD result at every step, zeros during warm-up, with the same state updates."""
    cfg = SLDConfig(warmup_steps=2, guidance_scale=300.0, threshold=0.02, momentum_scale=0.3, momentum_beta=0.4)
    full, corr = SLDState(), SLDState()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for i in range(6):
        eu, ec, es = _eps(30 + i)
        sigma = torch.tensor([4.0, 2.5]) / (i + 1)
        s4 = sigma.view(-1, 1, 1, 1)
        Dc, Du, Ds = x - s4 * ec, x - s4 * eu, x - s4 * es
        want = x - sld_guidance_sigma(x, sigma, Dc, Du, Ds, 6.0, cfg, full)
        term = sld_correction_sigma(x, sigma, Dc, Du, Ds, 6.0, cfg, corr)
        if i < cfg.warmup_steps:
            assert torch.equal(term, torch.zeros_like(term))
        else:
            assert term.abs().max() > 1e-3
        assert torch.allclose(Du + 6.0 * (Dc - Du) + term, want, atol=1e-5)
        assert corr.step == full.step and torch.allclose(corr.momentum, full.momentum)
    with pytest.raises(ValueError, match="sigma > 0"):
        sld_correction_sigma(x, 0.0, Dc, Du, Ds, 6.0, cfg, SLDState())
