"""The engine on rectified-flow models (samplers/param.py FLOW): steps, inversion, anchor, regional noise,
guidance and the family checks, on a small smooth velocity model with seeded weights (no host)."""
import pytest
import torch
import torch.nn.functional as F

from diffeditor.guidance.regional import guided_denoised
from diffeditor.samplers.blend import TrajectoryAnchor
from diffeditor.samplers.ddim import ddim_step
from diffeditor.samplers.edit import EditSchedule, EditStats, sample_edit, time_travel_rollback
from diffeditor.samplers.hooks import EditHooks, EditHost
from diffeditor.samplers.inpaint import inpaint_start
from diffeditor.samplers.inversion import invert
from diffeditor.samplers.param import EPS, FLOW, param_for
from diffeditor.samplers.sampling import sample_diffeditor
from diffeditor.samplers.schedule import StepWindow

from tiny_models import ToyTask


def flow_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """diffusers' FlowMatchEuler schedule (shifted), ending at 0."""
    t = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    s = shift * t / (1 + (shift - 1) * t)
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).float()


class ToyVelocity(torch.nn.Module):
    """A smooth velocity field v(x, sigma); denoised = x - sigma * v (ComfyUI CONST)."""

    def __init__(self, seed=0, ch=4, width=16, scale=0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(width, ch + 1, 3, 3, generator=g) / (9 * (ch + 1)) ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(ch, width, 1, 1, generator=g) * scale / width ** 0.5)
        self.calls = 0

    def feats(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1)[:1].expand(x.shape[0]).view(-1, 1, 1, 1)
        return torch.tanh(F.conv2d(torch.cat([x, s.expand(-1, 1, *x.shape[-2:])], 1), self.w1, padding=1))

    def forward(self, x, sigma, **_):
        self.calls += 1
        v = F.conv2d(self.feats(x, sigma), self.w2) - x * 0.5
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1)[:1].view(1, 1, 1, 1)
        return x - s * v


class ToyFlowHost(EditHost):
    param = "flow"
    num_up_blocks = 1

    def __init__(self, model):
        self.model, self.hooks = model, EditHooks()

    def default_levels(self):
        return (0,)

    def denoise_cond(self, x, sigma):
        return self.model(x, sigma)

    def features(self, x, sigma, levels):
        return {0: self.model.feats(x, sigma)}


@pytest.fixture
def x0():
    return torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------------------------ steps
def test_flow_ode_step_is_the_euler_step():
    g = torch.Generator().manual_seed(0)
    x, d = torch.randn(2, 1, 4, 8, 8, generator=g)
    for s, sn in ((1.0, 0.9), (0.6, 0.35)):
        assert torch.allclose(FLOW.step(x, d, s, sn), x + (sn - s) * (x - d) / s, atol=1e-6)
        # with the unguided x0, the composed form a' D + sigma' eps is the same point
        assert torch.allclose(FLOW.step(x, d, s, sn, denoised_guided=d), FLOW.step(x, d, s, sn), atol=1e-6)
    assert torch.equal(FLOW.step(x, d, 0.3, 0.0), d)


def test_flow_stochastic_step_is_ddim_in_the_equivalent_ve_coordinates():
    """A flow latent divided by a(sigma) = 1 - sigma is a VE latent at sigma / (1 - sigma): the flow step with
    eta must be exactly the VE DDIM step there, rescaled by a(sigma')."""
    g = torch.Generator().manual_seed(1)
    x, d, n = torch.randn(3, 1, 4, 8, 8, generator=g)
    s, sn = 0.7, 0.45
    ve = lambda q: q / (1 - q)  # noqa: E731
    for eta in (0.0, 0.3, 1.0):
        want = (1 - sn) * ddim_step(x / (1 - s), d, ve(s), ve(sn), eta, n)
        assert torch.allclose(FLOW.step(x, d, s, sn, eta, n), want, atol=1e-5), eta


def test_flow_step_from_pure_noise_with_eta_one_draws_fresh_noise():
    """At sigma = 1 the latent holds no signal: eta = 1 (the posterior) keeps none of the old noise."""
    g = torch.Generator().manual_seed(2)
    x, d, n = torch.randn(3, 1, 4, 8, 8, generator=g)
    down, up = FLOW.ancestral(1.0, 0.8, 1.0)
    assert float(down) == 0.0 and abs(float(up) - 0.8) < 1e-7
    assert torch.allclose(FLOW.step(x, d, 1.0, 0.8, 1.0, n), 0.2 * d + 0.8 * n, atol=1e-6)


def test_regional_flow_noise_leaves_the_outside_on_the_ode():
    g = torch.Generator().manual_seed(4)
    x, d, n = torch.randn(3, 1, 4, 8, 8, generator=g)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:5, 3:7] = 1
    ode = FLOW.step(x, d, 0.8, 0.6)
    sde = FLOW.step(x, d, 0.8, 0.6, 0.5 * m, n)
    assert torch.allclose(sde * (1 - m), ode * (1 - m), atol=1e-6)
    assert (sde - ode)[m.expand_as(x) > 0].abs().min() > 0


def test_guided_x0_factor_per_family():
    g = torch.Generator().manual_seed(5)
    d, grad = torch.randn(2, 1, 4, 8, 8, generator=g)
    s = torch.tensor(0.5)
    assert torch.allclose(guided_denoised(d, s, grad, 2.0, 3.0, FLOW), d - 0.5 * 6.0 * grad, atol=1e-6)
    assert torch.equal(guided_denoised(d, s, grad, 2.0, 3.0, EPS), guided_denoised(d, s, grad, 2.0, 3.0))
    # the eps family keeps the official sqrt(1 + sigma^2) (network input is x / sqrt(1 + sigma^2))
    assert torch.allclose(guided_denoised(d, s, grad, 2.0, 3.0), d - 0.5 * 6.0 * (1.25 ** 0.5) * grad, atol=1e-6)


def test_noised_latents_per_family(x0):
    n = torch.randn_like(x0)
    assert torch.allclose(FLOW.noised(x0, n, 0.25), 0.75 * x0 + 0.25 * n)
    assert torch.equal(EPS.noised(x0, n, 2.0), x0 + n * 2.0)
    assert param_for("flow") is FLOW and param_for(None) is EPS
    with pytest.raises(ValueError, match="parameterisation"):
        param_for("edm")


# ------------------------------------------------------------------------------------ inversion, anchor
def test_flow_exact_inversion_reconstructs_within_1e3(x0):
    model = ToyVelocity()
    sig = flow_sigmas(16)
    plain = invert(model, x0, sig, param=FLOW)
    exact = invert(model, x0, sig, param=FLOW, exact_iters=30, exact_tol=1e-9)
    assert exact.param == "flow" and exact.model_calls > plain.model_calls == 16
    errs = {}
    for name, tr in (("plain", plain), ("exact", exact)):
        rec = sample_diffeditor(model, tr.z_T, sig, trajectory=tr, disable=True)
        errs[name] = float((rec - x0).norm() / x0.norm())
    print("flow reconstruction rel L2:", errs)
    assert errs["exact"] < 1e-3 and errs["exact"] < errs["plain"] / 10


def test_flow_anchor_keeps_the_outside_exactly(x0):
    model = ToyVelocity()
    sig = flow_sigmas(10)
    tr = invert(model, x0, sig, param=FLOW)
    m = torch.zeros(1, 1, 12, 12)
    m[..., 3:8, 4:9] = 1
    out = sample_diffeditor(model, tr.z_T, sig, trajectory=tr, blend=TrajectoryAnchor(tr, m), eta=1.0, eta_mask=m,
                            seed=7, disable=True)
    assert torch.equal(out * (1 - m), tr.x0 * (1 - m))
    assert float(((out - tr.x0) * m).abs().max()) > 1e-3  # the inside was re-noised and changed
    # wrap_model (any sampler) also follows the flow trajectory outside the mask
    wrapped = TrajectoryAnchor(tr, m).wrap_model(model)
    x = tr.z_T.clone()
    for i in range(10):
        d = wrapped(x, sig[i:i + 1])
        x = FLOW.step(x, d, sig[i], sig[i + 1])
        assert torch.allclose(x * (1 - m), tr.at(i + 1) * (1 - m), atol=1e-5)


def test_time_travel_rollback_inverts_a_flow_step(x0):
    model, host = ToyVelocity(), None
    host = ToyFlowHost(model)
    sig = flow_sigmas(40)
    x = FLOW.noised(x0, torch.randn_like(x0), float(sig[20]))
    with torch.no_grad():
        x_next = FLOW.step(x, model(x, sig[20:21]), sig[20], sig[21])
        back = time_travel_rollback(host, host.hooks, x_next, sig[21], sig[20])
    assert float((back - x).norm() / x.norm()) < 5e-3  # first order in the step size


def test_family_and_range_checks(x0):
    model = ToyVelocity()
    sig = flow_sigmas(6)
    tr = invert(model, x0, sig, param=FLOW)
    with pytest.raises(ValueError, match="rectified flow"):
        sample_diffeditor(model, tr.z_T, sig, trajectory=tr, param=EPS, disable=True)
    with pytest.raises(ValueError, match="flow model's sigmas lie in"):
        invert(model, x0, torch.tensor([14.6, 3.0, 0.0]), param=FLOW)
    with pytest.raises(ValueError, match="channels"):
        tr.check_compatible(shape=(1, 16, 12, 12))


# ------------------------------------------------------------------------------------------ guided edit
def test_flow_guided_edit_lowers_the_energy_and_counts_calls(x0):
    model = ToyVelocity()
    host = ToyFlowHost(model)
    sig = flow_sigmas(8)
    tr = invert(model, x0, sig, param=FLOW)
    m = torch.zeros(1, 1, 12, 12)
    m[..., 2:6, 2:6] = 1
    task = ToyTask(m)
    # one guidance step: moving the latent along -grad lowers the edit energy (first order)
    x = tr.at(2).clone().requires_grad_(True)
    e_edit, _ = task.energy(host.features(x, sig[2], (0,)), host.features(tr.at(2) + 0.3, sig[2], (0,)), None)
    g, = torch.autograd.grad(e_edit, x)
    with torch.no_grad():
        e_after, _ = task.energy(host.features(x - 0.05 * g / g.norm(), sig[2], (0,)),
                                 host.features(tr.at(2) + 0.3, sig[2], (0,)), None)
    assert float(e_after) < float(e_edit.detach())
    sched = EditSchedule(guidance=(StepWindow(0.0, 0.5),), sde=StepWindow(0.25, 0.5), time_travel=None,
                         kv_mode=None, kv=None, energy_scale=1.0, kappa=1.0)
    stats = EditStats()
    model.calls = 0
    out = sample_edit(model, tr.z_T, sig, host=host, hooks=host.hooks, trajectory=tr, task=task,
                      schedule=sched, seed=0, stats=stats, disable=True)
    assert torch.isfinite(out).all()
    assert stats.cfg_forwards == 8 and stats.guidance_evals == 4 and stats.reference_forwards == 4
    assert model.calls == 8
    # the same trajectory on an eps host is refused, naming both families
    host_eps = ToyFlowHost(model)
    host_eps.param = "eps"
    with pytest.raises(ValueError, match="rectified flow.*eps prediction"):
        sample_edit(model, tr.z_T, sig, host=host_eps, hooks=host_eps.hooks, trajectory=tr, task=task,
                    schedule=sched, disable=True)


def test_inpaint_start_noises_with_the_flow_family(x0):
    from diffeditor.samplers.inpaint import fill_hole
    from diffeditor.samplers.sampling import NoiseSource

    model = ToyVelocity()
    sig = flow_sigmas(8)
    tr = invert(model, x0, sig, param=FLOW)
    hole = torch.zeros(12, 12, dtype=torch.bool)
    hole[4:7, 4:7] = True
    x = inpaint_start(tr, hole, 3, seed=0)
    assert torch.equal(x[..., ~hole], tr.at(3)[..., ~hole])
    filled = fill_hole(tr.x0, hole)
    s = float(sig[3])
    want = (1 - s) * filled + s * NoiseSource(0)(filled)  # x = (1 - sigma) x0 + sigma n, not x0 + sigma n
    assert torch.allclose(x[..., hole], want[..., hole], atol=1e-6)
