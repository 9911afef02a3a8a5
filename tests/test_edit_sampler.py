"""The editing loop (Algorithm 1): schedules, time travel, regional SDE, NFE accounting."""
import pytest
import torch

from diffeditor.adapters.diffusers_adapter import DiffusersDenoiser, DiffusersHost
from diffeditor.samplers.blend import TrajectoryAnchor
from diffeditor.samplers.ddim import ddim_step
from diffeditor.samplers.edit import PRESETS, EditStats, preset_schedule, sample_edit, time_travel_rollback
from diffeditor.samplers.hooks import EditHooks, KVBank
from diffeditor.samplers.inversion import invert
from diffeditor.samplers.schedule import ddim_sigmas, window_steps

from tiny_models import ToyTask


@pytest.fixture(scope="module")
def setup(tiny_unet, text_pair):
    cond, uncond = text_pair
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(1, 4, 16, 16, generator=g)
    hooks = EditHooks()
    sig = ddim_sigmas(50)
    bank = KVBank(steps=range(50))
    tr = invert(DiffusersDenoiser(tiny_unet, cond, hooks=hooks), x0, sig, hooks=hooks, bank=bank, disable=True)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:11, 5:12] = 1
    return tiny_unet, cond, uncond, hooks, sig, tr, m


def test_official_schedule_indices_at_50_steps():
    s = PRESETS["DiffEditor"]
    assert sorted(window_steps(s.guidance, 50)) == list(range(10)) + list(range(10, 30, 2))
    assert sorted(window_steps(s.sde, 50)) == list(range(11, 20))
    assert sorted(window_steps(s.time_travel, 50)) == [22, 24, 26, 28]
    assert sorted(window_steps(s.kv, 50)) == list(range(5, 50))
    assert sorted(window_steps(preset_schedule(task="appearance").kv, 50)) == list(range(36))
    d = PRESETS["DragonDiffusion"]
    assert sorted(window_steps(d.guidance, 50)) == list(range(30)) and d.sde is None and d.time_travel is None
    # scales with the step count
    assert sorted(window_steps(s.time_travel, 100)) == list(range(44, 60, 2))


def test_time_travel_rollback_returns_to_z_t(setup):
    """Rollback after a deterministic step: x' - x = (sigma - sigma') (eps(x', sigma') - eps(x, sigma)).

    That is an identity of the two DDIM formulas; the tolerance is then set by how much the eps prediction
    changes over one step (a 50-step schedule moves sigma by ~4% around step 22), so the relative error
    must be small: we assert < 2% of |x|.
    """
    unet, cond, _, hooks, sig, tr, m = setup
    host = DiffusersHost(DiffusersDenoiser(unet, cond, hooks=hooks))
    i = 22
    x = tr.latents[i]
    with torch.no_grad():
        d = host.denoise_cond(x, sig[i:i + 1])
        x_next = ddim_step(x, d, sig[i], sig[i + 1])
        back = time_travel_rollback(host, hooks, x_next, sig[i + 1], sig[i])
        eps_next = (x_next - host.denoise_cond(x_next, sig[i + 1:i + 2])) / sig[i + 1]
    eps = (x - d) / sig[i]
    assert torch.allclose(back - x, (sig[i] - sig[i + 1]) * (eps_next - eps), atol=1e-5)
    assert float((back - x).norm() / x.norm()) < 0.02


class UNetCounter:
    def __init__(self, unet):
        self.calls = []
        self.h = unet.register_forward_pre_hook(lambda mod, args, kw: self.calls.append(args[0].shape[0]),
                                                with_kwargs=True)

    def close(self):
        self.h.remove()


def test_nfe_of_a_50_step_diffeditor_edit_is_within_the_official_budget(setup):
    unet, cond, uncond, hooks, sig, tr, m = setup
    den = DiffusersDenoiser(unet, cond, uncond, cfg=4.0, hooks=hooks)
    host = DiffusersHost(den)
    stats = EditStats()
    counter = UNetCounter(unet)
    try:
        out = sample_edit(den, torch.zeros(1, 4, 16, 16), sig, host=host, hooks=hooks, trajectory=tr,
                          task=ToyTask(m), schedule=preset_schedule("DiffEditor", "move"), seed=42,
                          stats=stats, disable=True)
    finally:
        counter.close()
    assert torch.isfinite(out).all()
    # official: 58 CFG forwards (50 + 4x2 extra passes), 28 guidance evaluations, 8 useful re-noise forwards
    assert stats.cfg_forwards == 58
    assert stats.guidance_evals == 28 and stats.backward_passes == 56
    assert stats.renoise_forwards == 8
    assert stats.reference_forwards == 20  # cached per step: the official recomputes them on every pass (28)
    cfg_calls = sum(1 for b in counter.calls if b == 2)
    single = sum(1 for b in counter.calls if b == 1)
    assert cfg_calls == 58 and single == 28 + 20 + 8  # every UNet forward accounted for
    # energies were evaluated on every guided pass
    assert len(stats.energies) == 28


def test_dragondiffusion_preset_counts(setup):
    unet, cond, uncond, hooks, sig, tr, m = setup
    den = DiffusersDenoiser(unet, cond, uncond, cfg=4.0, hooks=hooks)
    stats = EditStats()
    sched = preset_schedule("DragonDiffusion", "move")
    sig10 = sig  # 50 steps
    sample_edit(den, torch.zeros(1, 4, 16, 16), sig10, host=DiffusersHost(den), hooks=hooks, trajectory=tr,
                task=ToyTask(m), schedule=sched, seed=0, stats=stats, disable=True)
    assert stats.cfg_forwards == 50 and stats.guidance_evals == 30 and stats.renoise_forwards == 0


def test_regional_sde_outside_equals_ode_with_the_same_seed(setup):
    unet, cond, uncond, hooks, sig, tr, m = setup
    sig12 = ddim_sigmas(12)
    tr12 = invert(DiffusersDenoiser(unet, cond, hooks=hooks), tr.x0, sig12, hooks=hooks,
                  bank=KVBank(steps=range(12)), disable=True)
    den = DiffusersDenoiser(unet, cond, uncond, cfg=3.0, hooks=hooks)
    host = DiffusersHost(den)
    anchor = TrajectoryAnchor(tr12, m)
    common = dict(host=host, hooks=hooks, trajectory=tr12, task=ToyTask(m), seed=3, blend=anchor, disable=True)
    sde = sample_edit(den, tr12.x0, sig12, schedule=preset_schedule(energy_scale=0.0), **common)
    ode = sample_edit(den, tr12.x0, sig12, schedule=preset_schedule(energy_scale=0.0, sde=None), **common)
    assert torch.equal(sde * (1 - m), ode * (1 - m))
    assert not torch.allclose(sde * m, ode * m)


def test_guidance_off_and_no_kv_reconstructs_the_source(setup):
    """With every mechanism off the edit sampler is plain DDIM from z_T."""
    unet, cond, _, hooks, sig, tr, m = setup
    sig20 = ddim_sigmas(20)
    den = DiffusersDenoiser(unet, cond, hooks=hooks)
    tr20 = invert(den, tr.x0, sig20, exact_iters=4, disable=True)
    off = preset_schedule(energy_scale=0.0, sde=None, time_travel=None, kv_mode=None)
    out = sample_edit(den, tr.x0, sig20, host=DiffusersHost(den), hooks=hooks, trajectory=tr20, task=ToyTask(m),
                      schedule=off, disable=True)
    assert float((out - tr.x0).norm() / tr.x0.norm()) < 1e-2


def test_missing_bank_is_a_clear_error(setup):
    unet, cond, _, hooks, sig, tr, m = setup
    sig5 = ddim_sigmas(5)
    den = DiffusersDenoiser(unet, cond, hooks=hooks)
    tr5 = invert(den, tr.x0, sig5, disable=True)
    with pytest.raises(ValueError, match="no K,V bank"):
        sample_edit(den, tr.x0, sig5, host=DiffusersHost(den), hooks=hooks, trajectory=tr5, task=ToyTask(m),
                    disable=True)
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_schedule("Nope")


def test_default_knobs_are_exactly_the_presets():
    from diffeditor.samplers.edit import EditKnobs, build_schedule

    for preset in PRESETS:
        for task in ("move", "drag", "appearance", "paste"):
            assert build_schedule(preset, task) == preset_schedule(preset, task)
            assert build_schedule(preset, task, EditKnobs()) == preset_schedule(preset, task)
    assert EditKnobs().changed() == {}


def test_build_schedule_knobs():
    from diffeditor.samplers.edit import build_schedule

    s = build_schedule("DiffEditor", "drag", guidance_strength=0.5, regional_sde="off", time_travel="off",
                       visual_cross_attention="off", guidance_end=0.4)
    assert s.energy_scale == 1000.0 and s.sde is None and s.time_travel is None and s.kv_mode is None
    assert sorted(window_steps(s.guidance, 50)) == list(range(10)) + list(range(10, 20, 2))
    d = build_schedule("DragonDiffusion", "appearance")
    assert d.kv_mode == "composite" and d.sde is None and d.kappa == 0.04
    s = build_schedule("DiffEditor", "move", guidance_start=0.1, guidance_end=0.4, sde_strength_outside=0.1,
                       visual_cross_attention="concat", kv_start=0.2)
    assert sorted(window_steps(s.guidance, 50)) == [5, 6, 7, 8, 9, 10, 12, 14, 16, 18]
    assert s.eta_out == 0.1 and s.sde == PRESETS["DiffEditor"].sde and s.kv_mode == "concat"
    assert window_steps(s.kv, 50) == frozenset(range(10, 50))
    s = build_schedule("DiffEditor", "move", regional_sde="on", sde_strength=0.0, sde_strength_outside=0.2)
    assert s.eta_in == 0.0 and s.eta_out == 0.2 and s.sde is not None  # SDE outside only


def test_knob_errors_name_the_knob():
    from diffeditor.samplers.edit import EditKnobs, build_schedule

    for bad, name in ((dict(guidance_strength=-1.0), "guidance_strength"), (dict(guidance_end=1.5), "guidance_end"),
                      (dict(guidance_start=0.7), "guidance_start"), (dict(sde_start=0.5, sde_end=0.3), "sde_start"),
                      (dict(sde_strength=float("nan")), "sde_strength"), (dict(regional_sde="maybe"), "regional_sde"),
                      (dict(time_travel_repeats=0), "time_travel_repeats"), (dict(time_travel="yes"), "time_travel"),
                      (dict(time_travel_start=0.6), "time_travel_start"), (dict(kv_start=0.9, kv_end=0.5), "kv_start"),
                      (dict(visual_cross_attention="sideways"), "visual_cross_attention"),
                      (dict(regional="no"), "regional"), (dict(sde_strength_outside=2.0), "sde_strength_outside")):
        with pytest.raises(ValueError, match=f"^{name}"):
            EditKnobs(**bad)
    with pytest.raises(ValueError, match="^preset: "):
        build_schedule("Dragon", "move")


def test_mechanism_modes_preset_on_off():
    from diffeditor.samplers.edit import build_schedule

    d = build_schedule("DragonDiffusion", "move", sde_start=0.2, time_travel_start=0.4)  # preset: still off
    assert d.sde is None and d.time_travel is None
    on = build_schedule("DragonDiffusion", "move", regional_sde="on", sde_strength=0.3, time_travel="on",
                        time_travel_repeats=2)
    assert on.sde is not None and on.eta_in == 0.3 and on.repeats == 2 and on.time_travel is not None
    one = build_schedule("DiffEditor", "move", time_travel="on", time_travel_repeats=1)
    assert one.time_travel is None  # one pass = no time travel


def test_cfg_auto_is_minus_one_only():
    from diffeditor.samplers.edit import resolve_cfg

    assert resolve_cfg(-1.0, "appearance") == 5.0 and resolve_cfg(-1, "move") == 4.0
    assert resolve_cfg(0.0, "move") == 0.0 and resolve_cfg(7.5, "drag") == 7.5
    for bad in (-0.5, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^cfg: expected -1 \(the task's official cfg"):
            resolve_cfg(bad, "move")
