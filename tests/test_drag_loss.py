"""Drag loss: point tracking exactness, motion supervision, the masked regulariser, validation."""
import pytest
import torch
import torch.nn.functional as F

from diffeditor.guidance.drag_loss import bilinear_patch, motion_supervision_loss, track_points
from diffeditor.samplers.drag import optimize_drag, strength_step
from diffeditor.samplers.hooks import EditHooks, EditHost


def smooth_field(c=6, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(1, c, n // 4, n // 4, generator=g), size=(n, n), mode="bicubic",
                         align_corners=False)


def test_tracker_finds_a_known_shift_exactly():
    f0 = smooth_field()
    f = torch.roll(f0, shifts=(2, 1), dims=(2, 3))  # content moved down 2 rows, right 1 column
    handles0 = [(10.0, 10.0), (20.0, 7.0)]
    assert track_points(f, f0, handles0, handles0, r_p=3) == [(12.0, 11.0), (22.0, 8.0)]


def test_bilinear_patch_matches_integer_cells():
    f = smooth_field()
    p = bilinear_patch(f, (5.0, 6.0), 1)
    assert torch.allclose(p.reshape(-1, 3, 3), f[0, :, 4:7, 5:8], atol=1e-5)


class ShiftHost(EditHost):
    """Features = the latent itself (upsampled by the optimiser); denoiser = a fixed linear map."""

    num_up_blocks = 3

    def __init__(self):
        self.hooks = EditHooks()

    def features(self, x, sigma, levels):
        return {lv: F.avg_pool2d(x, 5, 1, 2, count_include_pad=False) for lv in levels}

    def denoise_cond(self, x, sigma):
        return 0.5 * x


def blob_latent(n=16, at=(5, 5)):
    x = torch.zeros(1, 4, n, n)
    x[0, :, at[0], at[1]] = torch.tensor([3.0, -2.0, 1.5, 2.5])
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) + 0.01 * smooth_field(4, n)


def test_motion_loss_gradient_moves_the_next_patch_toward_the_handle_content():
    """The loss's gradient (source patch stop-gradient) pulls the patch one step toward the target onto the
    handle's content: with the handle content frozen at the start, that distance falls under Adam steps."""
    x = blob_latent()
    feats = lambda t: F.interpolate(F.avg_pool2d(t, 5, 1, 2, count_include_pad=False), size=(32, 32),  # noqa
                                    mode="bilinear")
    h, g = (11.0, 11.0), (11.0, 19.0)
    src0 = bilinear_patch(feats(x), h, 1)
    dist = lambda t: float((bilinear_patch(feats(t), (11.0, 12.0), 1) - src0).abs().mean())  # noqa: E731
    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(motion_supervision_loss(feats(z), [h], [g]), z)
    assert grad.abs().sum() > 0
    stepped = x - 0.01 * grad  # a small step along the loss's own gradient
    assert dist(stepped) < dist(x)


def test_handles_move_toward_targets():
    host = ShiftHost()
    x = blob_latent()
    # blob at latent (5, 5) = image px (44, 44); supervision grid = image / 2
    out, handles, info = optimize_drag(host, x, 2.0, 1.5, [(44, 44)], [(76, 44)], steps=40, lr=0.1)
    start, target = 44.0, 76.0
    assert abs(handles[0][0] - target) < abs(start - target)  # the tracked handle moved toward the target
    assert not torch.equal(out, x)


def test_regulariser_bounds_the_change_outside_the_editable_mask():
    """Adam moves each element by at most ~lr per step, so T steps change any element by <= T * lr; with the
    regulariser the change outside the editable mask must be smaller still than without it."""
    host = ShiftHost()
    x = blob_latent()
    mask = torch.zeros(16, 16)
    mask[2:9, 2:14] = 1  # editable region around the drag path
    kw = dict(steps=15, lr=0.05)
    free, _, _ = optimize_drag(host, x, 2.0, 1.5, [(44, 44)], [(76, 44)], mask=None, **kw)
    reg, _, info = optimize_drag(host, x, 2.0, 1.5, [(44, 44)], [(76, 44)], mask=mask, lam=10.0, **kw)
    outside = (1 - mask).bool().expand_as(x)
    change_free = (free - x).abs()[outside]
    change_reg = (reg - x).abs()[outside]
    assert float(change_reg.max()) <= info["iterations"] * kw["lr"] * 1.01
    assert float(change_reg.sum()) < float(change_free.sum())


def test_validation_and_strength():
    host = ShiftHost()
    x = blob_latent()
    with pytest.raises(ValueError, match="handles"):
        optimize_drag(host, x, 2.0, 1.5, [(500, 5)], [(10, 5)])
    with pytest.raises(ValueError, match="equals its target"):
        optimize_drag(host, x, 2.0, 1.5, [(10, 5)], [(10, 5)])
    with pytest.raises(ValueError, match="steps"):
        optimize_drag(host, x, 2.0, 1.5, [(10, 5)], [(20, 5)], steps=0)
    assert strength_step(50, 0.7) == 15
    loss = motion_supervision_loss(smooth_field(), [(10.0, 10.0)], [(11.0, 10.0)])
    assert float(loss) == 0.0  # already within 2 cells: skipped
