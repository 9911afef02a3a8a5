"""Headless diffusers pipeline: encode -> invert -> reconstruct / edit -> decode on tiny random models."""
import pytest
import torch

from diffeditor.adapters.pipeline import DiffEditorPipeline
from diffeditor.guidance.tasks import MoveSpec, make_task
from diffeditor.samplers.edit import EditStats, preset_schedule

from tiny_models import make_tiny_unet


@pytest.fixture(scope="module")
def pipe():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=8, layers_per_block=1).eval()
    table = {"a red square": 1, "": 2}

    def encode_text(prompts):
        g = [torch.Generator().manual_seed(table.get(p, 3)) for p in prompts]
        return torch.stack([torch.randn(6, 32, generator=gi) for gi in g])

    # A random VAE's latents are ~0.04 in size; scale them to unit variance as SD's scaling_factor does.
    return DiffEditorPipeline(make_tiny_unet(out_scale=0.3), vae=vae, encode_text=encode_text, latent_scale=25.0)


def test_encode_invert_reconstruct_decode(pipe):
    img = torch.zeros(1, 128, 128, 3)
    img[:, 32:64, 40:72] = torch.tensor([0.9, 0.1, 0.1])
    z = pipe.encode_image(img)
    assert z.shape == (1, 4, 16, 16)
    tr = pipe.invert(z, "a red square", steps=20, exact_iters=4)
    assert tr.bank is not None and tr.bank.recorded_steps() == list(range(20))
    rec = pipe.reconstruct(tr, "a red square")
    assert float((rec - z).norm() / z.norm()) < 1e-2
    out = pipe.decode(rec)
    assert out.shape == (1, 128, 128, 3) and float(out.min()) >= 0 and float(out.max()) <= 1


def _move_case(pipe, seed):
    """(trajectory, move task) of a random 128x128 image, 10 steps, a square moved by (16, 8) px."""
    img = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(seed))
    z = pipe.encode_image(img)
    tr = pipe.invert(z, "a red square", steps=10)
    mask = torch.zeros(128, 128)
    mask[32:64, 40:72] = 1
    return tr, make_task(MoveSpec(mask, dx=16, dy=8), z)


def test_move_edit_runs_and_counts_calls(pipe):
    tr, task = _move_case(pipe, 1)
    stats = EditStats()
    out = pipe.edit(tr, task, "a red square", cfg=4.0, schedule=preset_schedule("DiffEditor", "move"), stats=stats)
    assert out.shape == tr.x0.shape and torch.isfinite(out).all()
    # 10 steps: guidance on 0,1 then every 2nd up to 6 -> {0,1,2,4}; time travel {4} with 3 passes
    assert stats.guidance_evals == 6 and stats.cfg_forwards == 12 and stats.renoise_forwards == 2
    with pytest.raises(ValueError, match="another model"):
        other = DiffEditorPipeline(make_tiny_unet(seed=5), vae=pipe.vae, encode_text=pipe.encode_text)
        other.reconstruct(tr, "a red square")


def test_anchored_edit_keeps_outside_on_the_trajectory(pipe):
    from diffeditor.samplers.blend import TrajectoryAnchor

    tr, task = _move_case(pipe, 2)
    sched = preset_schedule("DiffEditor", "move")
    free = pipe.edit(tr, task, "a red square", cfg=4.0, schedule=sched)
    out = pipe.edit(tr, task, "a red square", cfg=4.0, schedule=sched, blend=TrajectoryAnchor(tr, task.edit_mask))
    m = task.edit_mask.expand_as(out) > 0.5
    assert torch.equal(out[~m], tr.x0[~m])  # outside the edit region: exactly the inverted source
    assert float((free - tr.x0)[~m].abs().max()) > 1e-3  # (the free edit does drift there)
    assert float((out - tr.x0)[m].abs().max()) > 1e-3  # inside, the edit still happens
