"""Energies, regional gradients and the sigma-space guided update (CPU, fast).

A small random conv net plays the feature estimator: it maps a latent ``[B, 4, h, w]`` to two feature levels
(half and full latent resolution, like diffusers ``up_blocks[1]`` / ``[2]``), so gradients flow through
something real.
"""
import pytest
import torch
import torch.nn as nn

from diffeditor.guidance.energies import (TASK_DEFAULTS, appearance_energy, content_consistency_energy,
                                          drag_energy, paste_energy, phi, similarity,
                                          to_feature_grid)
from diffeditor.guidance.regional import (grad_z_from_grad_x, guided_denoised, latent_mask, regional_gradient,
                                          x_from_z, z_from_x)
from diffeditor.guidance.tasks import (AppearanceSpec, DragSpec, MoveSpec, PasteSpec, make_task)
from diffeditor.samplers.schedule import scaled_linear_alphas_cumprod, sigma_from_alpha_bar

LAT = (16, 16)


class TinyFeatures(nn.Module):
    """Latent -> {1: [B, 24, h/2, w/2], 2: [B, 12, h, w]} with fixed random weights."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(4, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.up = nn.Conv2d(16 + 24, 12, 3, padding=1)

    def forward(self, z):
        a = torch.tanh(self.stem(z))
        b = torch.tanh(self.down(a))
        up = nn.functional.interpolate(b, scale_factor=2, mode="nearest")
        return {1: b, 2: torch.tanh(self.up(torch.cat([a, up], 1)))}


@pytest.fixture(scope="module")
def net():
    n = TinyFeatures().eval()
    for p in n.parameters():
        p.requires_grad_(False)
    return n


def box(y0, y1, x0, x1, H=128, W=128):
    m = torch.zeros(H, W)
    m[y0:y1, x0:x1] = 1.0
    return m


SPECS = {
    "move": lambda: MoveSpec(box(32, 64, 40, 72), dx=24, dy=16, ref_mask=box(96, 128, 0, 128)),
    "move_resize": lambda: MoveSpec(box(32, 64, 40, 72), dx=-16, dy=8, scale=1.5),
    "drag": lambda: DragSpec([((40.0, 40.0), (60.0, 44.0)), ((80.0, 90.0), (80.0, 70.0))], mask=box(16, 112, 16, 112)),
    "appearance": lambda: AppearanceSpec(box(32, 80, 32, 80), box(48, 112, 8, 72)),
    "paste": lambda: PasteSpec(box(16, 56, 16, 56), dx=48, dy=40, scale=1.0),
}


def setup_task(name, net, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    z_src = torch.randn(1, 4, *LAT, generator=g)
    z_ref = torch.randn(1, 4, *LAT, generator=g)
    task = make_task(SPECS[name](), LAT, **kw)
    with torch.no_grad():
        R, G = net(z_src), net(z_ref)
    x = task.init_latent(z_src, z_ref) + 0.5 * torch.randn(1, 4, *LAT, generator=g)
    return task, x, R, G


def energies_at(task, net, x, R, G):
    return task.energy(net(x), R, G)


# ----------------------------------------------------------------------------------------------- basics
def test_primitives():
    a, b = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    c = similarity(a, b, "cos")
    assert torch.allclose(similarity(a, b, "s"), (1 + c) / 2)
    assert torch.allclose(similarity(a, a, "s"), torch.ones(2, 5, 5))
    assert phi(torch.tensor(0.0), 4.0) == 4.0 and phi(torch.tensor(1.0), 4.0) == pytest.approx(0.8)
    f = to_feature_grid({2: torch.randn(1, 3, 8, 8), 1: torch.randn(1, 5, 4, 4).half()}, (16, 16))
    assert list(f) == [1, 2] and f[1].shape == (1, 5, 16, 16) and f[1].dtype == torch.float32
    assert torch.equal(f[1][..., ::4, ::4], f[1][..., 1::4, 3::4])  # nearest: 4x4 blocks
    assert TASK_DEFAULTS["move"]["energy_scale"] * TASK_DEFAULTS["move"]["kappa"] == pytest.approx(40)
    assert TASK_DEFAULTS["drag"]["energy_scale"] * TASK_DEFAULTS["drag"]["kappa"] == pytest.approx(80)
    assert TASK_DEFAULTS["paste"]["energy_scale"] * TASK_DEFAULTS["paste"]["kappa"] == pytest.approx(60)


def test_move_energy_matches_hand_computation(net):
    """The official move formula written out by hand for a pure translation (raw cos for edit/content)."""
    task, x, R, _ = setup_task("move", net)
    g = task.geometry
    Fx = net(x)
    e_edit, e_con = task.energy(Fx, R)
    Fg, Rg = to_feature_grid(Fx, g.grid_size), to_feature_grid(R, g.grid_size)
    exp_edit = exp_con = 0.0
    for k in (1, 2):
        f, r = Fg[k][0], Rg[k][0]  # [C, gh, gw]
        cur = f[:, g.m_cur]
        src = r[:, g.m_org]  # translation: same raster order
        exp_edit += 0.5 * 4.0 / (1 + 4 * torch.cosine_similarity(cur, src, dim=0).mean())
        exp_con += 0.5 * 6.0 / (1 + 4 * torch.cosine_similarity(r[:, g.m_other], f[:, g.m_other], dim=0).mean())
        s_no = (1 + torch.cosine_similarity(f[:, g.m_no], r[:, g.m_no], dim=0)) / 2
        exp_con += 0.5 * 0.2 * s_no.mean()
        s_in = (1 + torch.cosine_similarity(f[:, g.m_no].mean(1), r[:, g.m_ref].mean(1), dim=0)) / 2
        exp_con += 0.8 / (1 + 4 * s_in)
    assert torch.allclose(e_edit, exp_edit, atol=1e-6) and torch.allclose(e_con, exp_con, atol=1e-6)
    # consistent_cos maps the edit and background terms with s
    t2 = make_task(SPECS["move"](), LAT, consistent_cos=True)
    e2, _ = t2.energy(Fx, R)
    exp2 = 0.0
    for k in (1, 2):
        s = (1 + torch.cosine_similarity(Fg[k][0][:, g.m_cur], Rg[k][0][:, g.m_org], dim=0)) / 2
        exp2 += 0.5 * 4.0 / (1 + 4 * s.mean())
    assert torch.allclose(e2, exp2, atol=1e-6)


@pytest.mark.parametrize("name", list(SPECS))
def test_each_energy_decreases_after_a_step_on_its_region(net, name):
    task, x, R, G = setup_task(name, net)
    m = task.edit_mask
    for which, region in ((0, m), (1, 1 - m)):
        xg = x.clone().requires_grad_(True)
        e = energies_at(task, net, xg, R, G)[which]
        (grad,) = torch.autograd.grad(e, xg)
        step = grad * region
        assert step.abs().sum() > 0, f"{name}: energy {which} has no gradient on its region"
        x_new = x - 0.05 * step / step.norm()
        with torch.no_grad():
            e_new = energies_at(task, net, x_new, R, G)[which]
        assert e_new < e.detach(), f"{name}: energy {which} did not decrease ({float(e)} -> {float(e_new)})"


def test_drag_energy_terms(net):
    """Drag = attraction of each target patch to its handle patch + repulsion where the handle leaves."""
    task, x, R, _ = setup_task("drag", net)
    Fx = net(x)
    g = task.geometry
    e_edit, e_con = drag_energy(Fx, R, handle_index=g.handle_index, target_index=g.target_index,
                                m_other=g.m_other, w_edit=4.0, w_content=6.0, w_inpaint=0.0)
    Fg, Rg = to_feature_grid(Fx, g.grid_size), to_feature_grid(R, g.grid_size)
    exp = 0.0
    for k in (1, 2):
        f, r = Fg[k].flatten(2)[0], Rg[k].flatten(2)[0]
        for hi, ti in zip(g.handle_index, g.target_index):
            s = (1 + torch.cosine_similarity(f[:, ti], r[:, hi], dim=0)) / 2
            exp += 4.0 / (1 + 4 * s.mean())
    assert torch.allclose(e_edit, exp / 4, atol=1e-6)  # 1 / (2N), N = 2
    e_edit2, _ = drag_energy(Fx, R, handle_index=g.handle_index, target_index=g.target_index,
                             m_other=g.m_other, w_edit=4.0, w_content=6.0, w_inpaint=0.2)
    assert e_edit2 > e_edit
    exp_con = content_consistency_energy(Fx, R, g.m_other, 6.0, similarity_kind="s", level_weight=0.5)
    assert torch.allclose(e_con, exp_con)
    # no editable mask: no content term
    t0 = make_task(DragSpec([((40.0, 40.0), (60.0, 44.0))]), LAT)
    assert t0.energy(Fx, R)[1] == 0


def test_appearance_and_paste_use_reference_features(net):
    ta, x, R, G = setup_task("appearance", net)
    Fx = net(x)
    g = ta.geometry
    e_edit, e_con = appearance_energy(Fx, R, G, m_b=g.m_b, m_r=g.m_r)
    e_self, e_con2 = appearance_energy(Fx, R, Fx, m_b=g.m_b, m_r=g.m_b)
    assert e_self < e_edit and torch.allclose(e_con, e_con2)
    assert torch.allclose(e_self, torch.tensor(2 * 3.5 / 5))  # s = 1 on both levels
    tp, x, R, G = setup_task("paste", net)
    g = tp.geometry
    e_edit, _ = paste_energy(net(x), R, G, m_b=g.m_b, m_r=g.m_r)
    assert e_edit > 2 * 4.0 / 5
    with pytest.raises(ValueError, match="translates"):
        paste_energy(net(x), R, G, m_b=g.m_b, m_r=g.m_r & False)
    with pytest.raises(ValueError, match="ref2_feats"):
        tp.energy(net(x), R, None)


def test_feature_validation(net):
    task, x, R, _ = setup_task("move", net)
    with pytest.raises(ValueError, match="levels differ"):
        task.energy(net(x), {2: R[2]})
    with pytest.raises(ValueError, match="channels"):
        task.energy(net(x), {1: R[1], 2: R[1]})


# -------------------------------------------------------------------------------------------- regional
@pytest.mark.parametrize("name", ["move", "drag", "appearance"])
def test_regional_gradient_parts_are_exactly_masked(net, name):
    task, x, R, G = setup_task(name, net)
    xg = x.clone().requires_grad_(True)
    e_edit, e_con = energies_at(task, net, xg, R, G)
    g_e, g_c, g_t = regional_gradient(xg, e_edit, e_con, task.edit_mask, kappa=0.08, energy_scale=500.0,
                                      edit_first=task.edit_first)
    m = task.edit_mask.expand_as(x) > 0
    assert (g_e[~m] == 0).all() and (g_c[m] == 0).all()
    assert g_e[m].abs().sum() > 0 and g_c[~m].abs().sum() > 0
    assert torch.equal(g_t, g_e + g_c)
    # against plain autograd, and the global ablation
    xg = x.clone().requires_grad_(True)
    e_edit, e_con = energies_at(task, net, xg, R, G)
    full_e = torch.autograd.grad(e_edit, xg, retain_graph=True)[0]
    full_c = torch.autograd.grad(e_con, xg, retain_graph=True)[0]
    assert torch.allclose(g_e, 40.0 * full_e * m, atol=1e-7) and torch.allclose(g_c, 40.0 * full_c * ~m, atol=1e-7)
    a_e, a_c, a_t = regional_gradient(xg, e_edit, e_con, task.edit_mask, regional=False, kappa=0.08,
                                      energy_scale=500.0)
    assert torch.allclose(a_e, 40.0 * full_e, atol=1e-7) and torch.allclose(a_c, 40.0 * full_c, atol=1e-7)
    assert a_e[~m].abs().sum() > 0  # the edit gradient does reach outside the region without masking


def test_regional_gradient_mask_resize_and_constant_energy(net):
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    e = (net(x)[2] ** 2).mean()
    m_feat = torch.zeros(16, 16)
    m_feat[4:8, 0:6] = 1  # feature-grid mask -> latent rows 2..3, cols 0..2 (nearest)
    expected = torch.zeros(8, 8)
    expected[2:4, 0:3] = 1
    assert torch.equal(latent_mask(m_feat, x)[0, 0], expected)
    g_e, g_c, g_t = regional_gradient(x, e, torch.zeros(()), m_feat)
    assert (g_c == 0).all() and torch.equal(g_t, g_e)
    assert (g_e[..., :2, :] == 0).all() and g_e[..., 2:4, :3].abs().sum() > 0
    with pytest.raises(ValueError, match="require grad"):
        regional_gradient(x.detach(), e, e, m_feat)


# ----------------------------------------------------------------------------------- sigma-space update
def test_guided_denoised_matches_official_ddim_update(net):
    """ComfyUI sigma space (x, D, sigma) reproduces the official diffusers-coordinate guided DDIM step."""
    torch.manual_seed(0)
    ac = scaled_linear_alphas_cumprod()
    t, t_prev = 501, 481
    a, a_prev = ac[t], ac[t_prev]
    sigma, sigma_next = float(sigma_from_alpha_bar(a)), float(sigma_from_alpha_bar(a_prev))
    kappa, eta = 0.08, 500.0
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    eps = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    net64 = TinyFeatures().double()
    target = net64(torch.randn(1, 4, 8, 8, dtype=torch.float64))

    def energy(zz):
        f = net64(zz)
        return sum(1.0 / (1 + 4 * torch.cosine_similarity(f[k], target[k], dim=1).mean()) for k in f)

    # official (diffusers / VP coordinates): g = kappa*eta*grad_z E added to eps for x0 only
    zg = z.clone().requires_grad_(True)
    g = kappa * eta * torch.autograd.grad(energy(zg), zg)[0]
    x0_hat = (z - (1 - a).sqrt() * (eps + g)) / a.sqrt()
    z_prev = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps

    # ComfyUI (VE coordinates): x = z*sqrt(1+sigma^2), D = x - sigma*eps, energy of z(x)
    x = x_from_z(z, sigma)
    assert torch.allclose(x, z / a.sqrt())
    D = x - sigma * eps
    xg = x.clone().requires_grad_(True)
    grad_x = torch.autograd.grad(energy(z_from_x(xg, sigma)), xg)[0]
    assert torch.allclose(grad_z_from_grad_x(grad_x, sigma) * kappa * eta, g, atol=1e-10)
    D_guided = guided_denoised(D, sigma, grad_x, kappa, eta)
    x_next = D_guided + (x - D) / sigma * sigma_next
    z_next = z_from_x(x_next, sigma_next)
    assert (z_next - z_prev).abs().max() < 1e-5
    assert torch.allclose(D_guided, x0_hat, atol=1e-10)
    unguided = z_from_x(D + (x - D) / sigma * sigma_next, sigma_next)
    assert (unguided - z_prev).abs().max() > 1e-2  # the guidance actually moved the step
    # per-batch sigma broadcasts
    D2 = guided_denoised(D.expand(2, -1, -1, -1), torch.tensor([sigma, sigma], dtype=torch.float64), grad_x.expand(2, -1, -1, -1),
                         kappa, eta)
    assert torch.allclose(D2[1], D_guided[0])
