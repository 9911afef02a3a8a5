"""The lead's editing loop (samplers/edit.py) through the ComfyUI adapter: guidance gradients, K,V
injection, regional SDE and time travel inside SamplerCustomAdvanced, with inference-mode weights."""
from dataclasses import replace

import pytest
import torch

from diffeditor.adapters.comfy_adapter import make_sampler
from tiny_models import ToyTask

edit = pytest.importorskip("diffeditor.samplers.edit")

STEPS = 10


@pytest.fixture(scope="module")
def inverted(sd15_model, conds, latent):
    from diffeditor.nodes.inversion import DiffEditorInvert

    with torch.inference_mode():
        return DiffEditorInvert.execute(
            model=sd15_model, positive=conds[0], negative=conds[1], latent=latent, steps=STEPS,
            scheduler="ddim_uniform", cfg=1.0, exact=True, exact_iters=10, record_kv_bank=True, bank_start=0.0,
            bank_end=1.0, kv_budget_mb=4096.0).result


def _advanced(model, conds, sampler, sigmas, latent_shape, cfg=3.0):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(cfg)
        return SamplerCustomAdvanced().sample(Noise_RandomNoise(3), guider, sampler, sigmas,
                                              {"samples": torch.zeros(latent_shape)})[0]["samples"]


def test_full_diffeditor_schedule_runs_in_comfy(sd15_model, conds, latent, inverted):
    traj, _, sigmas = inverted
    with torch.inference_mode():  # a task built by a node: its masks are inference tensors
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., 4:11, 5:12] = 1
    stats = edit.EditStats()
    sched = edit.preset_schedule("DiffEditor", "move")
    sampler = make_sampler(edit.sample_edit, trajectory=traj, task=ToyTask(mask), schedule=sched, stats=stats,
                           with_model_id=True)
    out = _advanced(sd15_model, conds, sampler, sigmas, latent["samples"].shape)
    assert torch.isfinite(out).all()
    assert stats.guidance_evals > 0 and stats.backward_passes > 0 and stats.renoise_forwards > 0
    assert all(torch.isfinite(torch.tensor(e[2:])).all() for e in stats.energies)


def test_edit_without_guidance_or_bank_reconstructs(sd15_model, conds, latent, inverted):
    traj, _, sigmas = inverted
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:11, 5:12] = 1
    sched = replace(edit.preset_schedule("DiffEditor", "move"), energy_scale=0.0, kv_mode=None, sde=None)
    sampler = make_sampler(edit.sample_edit, trajectory=traj, task=ToyTask(mask), schedule=sched, with_model_id=True)
    out = _advanced(sd15_model, conds, sampler, sigmas, latent["samples"].shape, cfg=1.0)
    assert (out - latent["samples"]).abs().max().item() < 5e-3
