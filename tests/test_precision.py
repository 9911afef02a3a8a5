"""fp16/bf16 safety of the guidance: loss-scaled energy gradients and a K,V bank that cannot overflow.

Tolerances (relative L2 error of the guidance gradient against fp32 on the same weights), measured on the
committed demo model at steps 5/25/40 of 50: fp16 2.1e-3-6.4e-3, bf16 0.99e-2-2.2e-2. The tests allow 1e-2
(fp16) and 5e-2 (bf16). On a GPU at SD1.5 512² (random weights, bench/results/perf_gpu.json) the loss scale
takes fp16 from 2.0e-2-2.2e-2 to 4.2e-3-5.1e-3.
"""
import copy

import pytest
import torch

from diffeditor.adapters.diffusers_adapter import DiffusersDenoiser, DiffusersHost
from diffeditor.guidance.regional import loss_scale_for, regional_gradient
from diffeditor.guidance.tasks import MoveSpec, make_task
from diffeditor.samplers.edit import energy_gradient, preset_schedule
from diffeditor.samplers.hooks import EditHooks, KVBank, default_feature_levels
from diffeditor.samplers.schedule import ddim_sigmas

from tiny_models import make_tiny_unet

WEIGHTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "models" / "demo" / "weights"


def test_loss_scale_is_a_power_of_two_near_the_official_factor():
    assert loss_scale_for(40.0) == 32.0 and loss_scale_for(48.0) == 64.0
    assert loss_scale_for(0.5) == 1.0 and loss_scale_for(float("nan")) == 1.0
    assert loss_scale_for(1e9) == 2.0 ** 14  # capped: fp16's range is 65504


@pytest.fixture(scope="module")
def demo():
    from diffeditor.models.demo.load import load_demo

    vae, unet, te, tok, ac = load_demo(WEIGHTS)
    with torch.no_grad():
        cond = te(tok(["a red circle on a sand background"]))
    return unet, cond, ac


def _guidance_grad(unet, cond, ac, dtype, loss_scale, step=25):
    u = copy.deepcopy(unet).to(dtype)
    den = DiffusersDenoiser(u, cond.to(dtype), alphas_cumprod=ac, hooks=EditHooks())
    host = DiffusersHost(den)
    levels = default_feature_levels(host.num_up_blocks)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 16, 16, generator=g)
    s = ddim_sigmas(50, ac)[step:step + 1]
    with torch.no_grad():
        ref = {k: v.detach().float() for k, v in host.features(x0 * float(s), s, levels).items()}
    x = x0 * float(s) + 0.3 * torch.randn(x0.shape, generator=g)
    mask = torch.zeros(64, 64)
    mask[16:40, 12:36] = 1
    task = make_task(MoveSpec(mask, dx=12, dy=4), x0, pixels_per_latent=4)
    grad, _ = energy_gradient(host, task, x, s, levels, ref, None, True, None, loss_scale)
    return grad


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_guidance_gradient_matches_fp32(demo, dtype, tol):
    unet, cond, ac = demo
    sched = preset_schedule("DiffEditor", "move")
    ls = loss_scale_for(sched.kappa * sched.energy_scale)
    g32 = _guidance_grad(unet, cond, ac, torch.float32, ls)
    gh = _guidance_grad(unet, cond, ac, dtype, ls)
    assert gh.dtype == torch.float32 and float(g32.abs().max()) > 0
    rel = float((gh - g32).norm() / g32.norm())
    assert rel < tol, f"{dtype}: relative error {rel:.3e} of the guidance gradient against fp32"


def test_fp32_gradient_is_bit_identical_with_and_without_loss_scale(demo):
    unet, cond, ac = demo
    a = _guidance_grad(unet, cond, ac, torch.float32, 1.0)
    b = _guidance_grad(unet, cond, ac, torch.float32, 2.0 ** 10)
    assert torch.equal(a, b)


def _tiny_energy(unet, x, dtype, weight):
    """A small feature energy of a tiny UNet, times ``weight`` (a large-image mean makes such weights tiny)."""
    u = copy.deepcopy(unet).to(dtype)
    den = DiffusersDenoiser(u, torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(7)).to(dtype))
    host = DiffusersHost(den)
    xg = x.clone().requires_grad_(True)
    f = host.features(xg, torch.tensor([2.0]), (1,))[1].float()
    return xg, f.square().mean() * weight


def test_loss_scaling_rescues_an_fp16_gradient_that_underflows():
    """Without a loss scale, an fp16 backward pass of a small energy flushes to zero; with it, it matches fp32."""
    unet = make_tiny_unet()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    m = torch.ones(16, 16)
    w = 1e-4  # the fp32 gradient is ~2e-8 a value: below fp16's smallest normal (6e-5), mostly below its subnormals
    xg, e = _tiny_energy(unet, x, torch.float32, w)
    g32 = regional_gradient(xg, e, torch.zeros(()), m, loss_scale=1.0)[2]
    xg, e = _tiny_energy(unet, x, torch.float16, w)
    plain = regional_gradient(xg, e, torch.zeros(()), m, loss_scale=1.0)[2]
    xg, e = _tiny_energy(unet, x, torch.float16, w)
    scaled = regional_gradient(xg, e, torch.zeros(()), m, loss_scale=2.0 ** 14)[2]
    rel = lambda g: float((g.float() - g32).norm() / g32.norm())  # noqa: E731
    assert float((plain == 0).float().mean()) > 0.9 and rel(plain) > 0.9  # underflow: the gradient is lost
    assert rel(scaled) < 2e-2


def test_loss_scale_backs_off_on_overflow():
    """An energy whose scaled backward pass overflows fp16 still gives a finite gradient (dynamic back-off)."""
    x = torch.full((1, 4, 2, 2), 2.0, dtype=torch.float16, requires_grad=True)
    e = (x.float() * 30000.0).sum() + (x * 1.0).square().sum().float()
    g = regional_gradient(x, e, torch.zeros(()), torch.ones(2, 2), loss_scale=2.0 ** 14)[2]
    assert torch.isfinite(g).all()
    assert torch.allclose(g.float(), torch.full_like(g.float(), 30004.0), rtol=1e-3)


def test_kv_bank_never_overflows_half_storage():
    big = torch.full((1, 4, 8), 1e5)  # beyond fp16's 65504
    small = torch.full((1, 4, 8), 3.0)
    bank = KVBank()
    bank.put("a", 0, small, small)
    bank.put("b", 0, big, big)
    bank.put("c", 0, big.bfloat16(), big.bfloat16())
    bank.put("d", 0, small.half(), small.half())
    dt = {k[0]: v[0].dtype for k, v in bank._data.items()}
    assert dt == {"a": torch.float16, "b": torch.bfloat16, "c": torch.bfloat16, "d": torch.float16}
    assert all(torch.isfinite(k.float()).all() and torch.isfinite(v.float()).all() for k, v in bank._data.values())
    k, _ = bank.get("b", 0, like=big)
    assert k.dtype == torch.float32 and torch.allclose(k, big, rtol=1e-2)
    assert bank.nbytes == 4 * 2 * 32 * 2  # two bytes a value whatever the dtype
    assert KVBank(dtype=torch.float32).dtype == torch.float32  # an explicit dtype is kept
