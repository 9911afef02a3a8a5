"""Drag loss: point tracking exactness, motion supervision, the masked regulariser, the optimiser, validation."""
import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffeditor.guidance.drag_loss import (all_reached, bilinear_patch, mask_regulariser, motion_supervision_loss,
                                           track_points)
from diffeditor.samplers.drag import optimize_drag, strength_step
from diffeditor.samplers.hooks import EditHooks, EditHost

SIGMA, SIGMA_NEXT = 2.0, 1.5
C, C_NEXT = math.sqrt(1 + SIGMA ** 2), math.sqrt(1 + SIGMA_NEXT ** 2)  # sigma space -> diffusers latent scale


def smooth_field(c=6, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(1, c, n // 4, n // 4, generator=g), size=(n, n), mode="bicubic",
                         align_corners=False)


class ConvHost(EditHost):
    """A fake host: features = a small random conv net of the latent (translation equivariant, so moving the
    latent's content moves the features with it); denoiser = ``a * x`` (pointwise)."""

    num_up_blocks = 4  # SD1.5-like: the default drag level is 2

    def __init__(self, seed=0, a=0.5):
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1))
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.4
            p.requires_grad_(False)
        self.a = a
        self.hooks = EditHooks()
        self.levels, self.interrupts, self.in_grad = [], 0, False

    def features(self, x, sigma, levels):
        assert self.in_grad  # called under grad_context (the initial features under no_grad)
        self.levels.append(tuple(levels))
        return {lv: self.net(x) for lv in levels}

    def denoise_cond(self, x, sigma):
        return self.a * x

    @contextmanager
    def grad_context(self):
        self.in_grad = True
        try:
            with torch.enable_grad():
                yield
        finally:
            self.in_grad = False

    def check_interrupt(self):
        self.interrupts += 1


def blob_latent(n=16, at=(5, 5)):
    x = torch.zeros(1, 4, n, n)
    x[0, :, at[0], at[1]] = torch.tensor([3.0, -2.0, 1.5, 2.5])
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) + 0.1 * smooth_field(4, n, 1)


# ------------------------------------------------------------------------------------------ (a) tracking
def test_tracker_finds_a_known_shift_exactly():
    f0 = smooth_field()
    f = torch.roll(f0, shifts=(2, 1), dims=(2, 3))  # content moved down 2 rows, right 1 column
    handles0 = [(10.0, 10.0), (20.0, 7.0)]
    assert track_points(f, f0, handles0, handles0, r_p=3) == [(12.0, 11.0), (22.0, 8.0)]
    # the search is around the *current* handle but compares with the *initial* feature at the *initial* handle
    assert track_points(f, f0, [(11.0, 12.0), (23.0, 6.0)], handles0, r_p=3) == [(12.0, 11.0), (22.0, 8.0)]
    # a larger move is out of reach of a radius-1 window: the handle stays within the window
    far = torch.roll(f0, shifts=(3, 0), dims=(2, 3))
    (r, c), = track_points(far, f0, handles0[:1], handles0[:1], r_p=1)
    assert abs(r - 10) <= 1 and abs(c - 10) <= 1


def test_tracker_window_is_clipped_at_the_border():
    f0 = smooth_field()
    f = torch.zeros_like(f0)
    f[..., 2:, 1:] = f0[..., :-2, :-1]  # shift without wrap-around
    assert track_points(f, f0, [(0.0, 0.0)], [(0.0, 0.0)], r_p=3) == [(2.0, 1.0)]


def test_tracker_follows_a_latent_shift_through_the_conv_features():
    """Features that are a known shift of the latent: rolling the latent one cell moves the tracked handle by
    one latent cell = 4 supervision cells (features upsampled x4, as a 128 px image's grid is 64 cells)."""
    host = ConvHost()
    x = blob_latent()
    up = lambda t: F.interpolate(host.net(t), size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
    h0 = [(22.0, 22.0)]  # the blob's centre (latent cell 5 = cells 20..23 of the grid)
    moved = torch.roll(x, shifts=(0, 1), dims=(2, 3))
    assert track_points(up(moved), up(x), h0, h0, r_p=5) == [(22.0, 26.0)]


# ------------------------------------------------------------------------------- patches and the loss
def test_bilinear_patch_is_sub_cell_and_border_clipped():
    f = smooth_field()
    p = bilinear_patch(f, (5.0, 6.0), 1)
    assert torch.allclose(p.reshape(-1, 3, 3), f[0, :, 4:7, 5:8], atol=1e-5)
    q = bilinear_patch(f, (5.5, 6.25), 0)[:, 0]
    top = 0.75 * f[0, :, 5, 6] + 0.25 * f[0, :, 5, 7]
    bot = 0.75 * f[0, :, 6, 6] + 0.25 * f[0, :, 6, 7]
    assert torch.allclose(q, 0.5 * top + 0.5 * bot, atol=1e-5)
    corner = bilinear_patch(f, (0.0, 0.0), 1)  # the 3x3 patch at a corner keeps its 4 in-map cells
    assert corner.shape == (6, 4) and torch.allclose(corner.reshape(-1, 2, 2), f[0, :, 0:2, 0:2], atol=1e-5)
    shifted = bilinear_patch(f, (0.0, 0.0), 1, shift=(0.0, 1.0))
    assert torch.allclose(shifted.reshape(-1, 2, 2), f[0, :, 0:2, 1:3], atol=1e-5)


def test_motion_loss_value_skip_rule_and_stop_gradient():
    s = 0.3
    ramp = (s * torch.arange(16.0)).expand(1, 2, 16, 16).clone()  # F[c, row, col] = s * col
    # unit step along the columns: |F(p) - F(p + (0, 1))| = s everywhere -> (2r+1)^2 * s
    assert math.isclose(float(motion_supervision_loss(ramp, [(8.0, 5.0)], [(8.0, 12.0)])), 9 * s, rel_tol=1e-5)
    # direction (0.6, 0.8): the column part of the step is 0.8
    loss = motion_supervision_loss(ramp, [(5.0, 5.0)], [(11.0, 13.0)])
    assert math.isclose(float(loss), 9 * 0.8 * s, rel_tol=1e-5)
    # several pairs add up; a pair within 2 cells of its target is skipped (strictly less than 2)
    two = motion_supervision_loss(ramp, [(8.0, 5.0), (3.0, 3.0), (9.0, 9.0)], [(8.0, 12.0), (3.0, 4.9), (9.0, 11.0)])
    assert math.isclose(float(two), 2 * 9 * s, rel_tol=1e-5)
    # stop-gradient: only the shifted patch carries gradient (cols 5..7 for handle col 5, d = (0, 1))
    feat = smooth_field(2, 16).requires_grad_(True)
    motion_supervision_loss(feat, [(8.0, 5.0)], [(8.0, 12.0)]).backward()
    cols = feat.grad[0].abs().sum((0, 1))
    assert float(cols[4]) == 0 and all(float(cols[c]) > 0 for c in (5, 6, 7)) and float(cols[8:].sum()) == 0


def test_mask_regulariser_is_a_masked_sum():
    z0 = torch.zeros(1, 4, 8, 8)
    z = z0 + 0.5
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :3] = 1  # editable: 3 of 8 columns
    assert math.isclose(float(mask_regulariser(z, z0, mask, lam=0.1)), 0.1 * 0.5 * 4 * 8 * 5, rel_tol=1e-6)
    assert float(mask_regulariser(z, z0, None)) == 0.0
    assert all_reached([(0.0, 0.0)], [(1.0, 1.0)]) and not all_reached([(0.0, 0.0)], [(0.0, 2.0)])


def _adam_on_motion_loss(up, lr, steps=8):
    """Adam on the latent with a fixed handle; features = the conv net upsampled to an ``up``-cell grid.
    Returns the loss per step and, per step, the loss it was taken on re-evaluated after the step (its
    stop-gradient source patch frozen at the value the step saw)."""
    host = ConvHost()
    x = blob_latent()
    feats = lambda t: F.interpolate(host.net(t), size=(up, up), mode="bilinear", align_corners=False)  # noqa
    s = up / 64
    h, g = (22.0 * s, 22.0 * s), (22.0 * s, 38.0 * s)
    z = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    losses, after = [], []
    for _ in range(steps):
        f = feats(z)
        src = bilinear_patch(f.detach(), h, 1)
        loss = motion_supervision_loss(f, [h], [g])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():  # the step's own objective: 9 * mean|src - F(patch + d)|, d = (0, 1)
            after.append(9 * float((bilinear_patch(feats(z), h, 1, shift=(0.0, 1.0)) - src).abs().mean()))
    return losses, after


def test_motion_loss_decreases_under_adam_on_a_conv_net():
    """Native resolution (grid = latent): the motion loss, re-evaluated, falls over a few Adam steps."""
    losses, _ = _adam_on_motion_loss(16, 0.003)
    assert all(b <= a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses


def test_each_adam_step_lowers_the_loss_it_was_taken_on():
    """On the 4x supervision grid (as DragDiffusion: 64 latent -> 256 grid) the source patch and the shifted
    patch share most of their latent support, so with the handle *fixed* the re-evaluated loss need not fall
    (the stop-gradient target moves with the latent; tracking is what advances the handle). What each step
    must do is lower its own objective, the loss with the source patch frozen at the value it saw."""
    losses, after = _adam_on_motion_loss(64, 0.01)
    assert all(a < 0.9 * l for l, a in zip(losses, after)), (losses, after)


# ------------------------------------------------------------------------------------------ the optimiser
def test_handles_move_toward_their_targets():
    host = ConvHost()
    x = blob_latent()
    # blob at latent cell (5, 5) = image px (44, 44) of a 128 px image; target 32 px to the right
    out, handles, info = optimize_drag(host, x, SIGMA, SIGMA_NEXT, [(44, 44)], [(76, 44)], steps=40, lr=0.03)
    (hx, hy), = handles
    assert abs(hx - 76) < 0.5 * (76 - 44) and abs(hy - 44) <= 8  # more than halfway there
    assert info["reached"] == all_reached(info["handles_grid"], [(22.0, 38.0)])
    assert 0 < info["iterations"] <= 40 and len(info["losses"]) == info["iterations"]
    assert host.levels and set(host.levels) == {(2,)}  # default level: the third decoder level of 4
    assert host.interrupts >= info["iterations"] and not host.in_grad
    # the latent's content moved right: its correlation with the blob shifted one cell right increased
    right = blob_latent(at=(5, 6))
    assert float((out * right).sum()) > float((x * right).sum())
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad


def test_adam_steps_in_diffusers_latent_units():
    """One iteration: Adam's first step is ``lr * sign(grad)`` on z = x / sqrt(1 + sigma^2) (DragDiffusion's
    variable), so x moves by ``lr * sqrt(1 + sigma^2)`` wherever the gradient is nonzero."""
    host = ConvHost()
    x = blob_latent()
    calls = []
    out, _, info = optimize_drag(host, x, SIGMA, SIGMA_NEXT, [(44, 44)], [(76, 44)], steps=1, lr=0.01,
                                 progress=lambda i, n: calls.append((i, n)))
    d = (out - x).abs()
    assert info["iterations"] == 1 and calls == [(1, 1)]
    assert math.isclose(float(d.max()), 0.01 * C, rel_tol=1e-3)


def test_early_stop_when_already_reached():
    host = ConvHost()
    x = blob_latent()
    calls = []
    out, handles, info = optimize_drag(host, x, SIGMA, SIGMA_NEXT, [(44, 44)], [(46, 44)], steps=5,
                                       progress=lambda i, n: calls.append((i, n)))  # 1 grid cell away
    assert info["iterations"] == 0 and info["reached"] and torch.equal(out, x) and calls == [(5, 5)]
    assert handles == [(44.0, 44.0)]


def adam_step_bound(t, b1=0.9, b2=0.999):
    """Largest |update| / lr of torch's Adam at step t, for any gradient sequence (eps only shrinks it).

    update = lr * m_t / (1 - b1^t) / sqrt(v_t / (1 - b2^t)), m_t = (1-b1) sum_i b1^(t-i) g_i,
    v_t = (1-b2) sum_i b2^(t-i) g_i^2. Writing b1^(t-i) |g_i| = (b1/sqrt(b2))^(t-i) * sqrt(b2)^(t-i) |g_i|,
    Cauchy-Schwarz gives |m_t| <= (1-b1) sqrt(sum_{j<t} (b1^2/b2)^j) sqrt(v_t / (1-b2)).
    (t = 1 gives exactly 1: the first step is lr * sign(g).)
    """
    r = b1 * b1 / b2
    return (1 - b1) / math.sqrt(1 - b2) * math.sqrt(sum(r ** j for j in range(t))) * \
        math.sqrt(1 - b2 ** t) / (1 - b1 ** t)


def test_regulariser_keeps_the_one_step_output_outside_the_mask():
    """Bound and effect of the masked regulariser on Phi = the diffusers one-step DDIM output.

    Hard bound (any lam): every coordinate of z moves at most lr * S_T after T Adam steps, S_T the sum of
    :func:`adam_step_bound`. With the pointwise denoiser D = a x, Phi(z) = (c / c_next) ((1 - k) a + k) z with
    k = sigma_next / sigma, so the L1 of Phi's change outside the mask is at most
    N_out * (c / c_next) ((1 - k) a + k) * lr * S_T.

    Effect: without the regulariser (lam = 0) the motion gradient reaches latent cells outside the (tight)
    editable mask through the conv net's receptive field and they drift; with a large lam the restoring
    lam * sign(...) gradient dominates there and the outside change must be much smaller (measured ~5x
    here; we require 3x). The drag itself must still make progress.
    """
    host = ConvHost()
    x = blob_latent()
    mask = torch.zeros(16, 16)
    mask[3:8, 3:13] = 1  # editable band around the drag path (latent cells)
    outside = (1 - mask).bool().expand_as(x)
    k = SIGMA_NEXT / SIGMA
    gain = C / C_NEXT * ((1 - k) * host.a + k)
    phi = lambda t: (host.a * t + (t - host.a * t) * k) / C_NEXT  # noqa: E731  (same as the optimiser's)
    kw = dict(steps=30, lr=0.03, mask=mask)
    results = {}
    for lam in (0.0, 10.0):
        out, handles, info = optimize_drag(host, x, SIGMA, SIGMA_NEXT, [(44, 44)], [(76, 44)], lam=lam, **kw)
        s_t = sum(adam_step_bound(t) for t in range(1, info["iterations"] + 1))
        dz = ((out - x) / C).abs()[outside]
        l1 = float((phi(out) - phi(x)).abs()[outside].sum())
        assert float(dz.max()) <= kw["lr"] * s_t * 1.0001
        assert l1 <= int(outside.sum()) * gain * kw["lr"] * s_t
        assert handles[0][0] > 44 + 8  # the drag progressed in both cases
        results[lam] = l1
        if lam > 0:  # the reported loss is motion + lam * (that L1 at the iterate), so it is never negative
            assert all(t >= m - 1e-6 for t, m in zip(info["losses"], info["motion_losses"]))
    assert results[0.0] > 1.0  # without the regulariser the outside does change
    assert results[10.0] < results[0.0] / 3


# --------------------------------------------------------------------------------------------- validation
def test_validation_names_the_input():
    host = ConvHost()
    x = blob_latent()
    run = lambda h, t, **kw: optimize_drag(host, x, SIGMA, SIGMA_NEXT, h, t, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"handles: point \(500, 5\) is outside the 128x128 image"):
        run([(500, 5)], [(10, 5)])
    with pytest.raises(ValueError, match="handles.*outside"):
        run([(-1, 5)], [(10, 5)])
    with pytest.raises(ValueError, match="targets.*outside"):
        run([(10, 5)], [(10, 200)])
    # non-square image: x is checked against the width and y against the height (official clipping bug)
    with pytest.raises(ValueError, match="targets.*outside the 128x64 image"):
        run([(10, 5)], [(10, 100)], image_size=(64, 128))
    run([(100, 5)], [(120, 5)], image_size=(64, 128), steps=1)  # x = 120 < W is fine
    with pytest.raises(ValueError, match="equals its target"):
        run([(10, 5)], [(10, 5)])
    for bad in (0, -3):
        with pytest.raises(ValueError, match="steps"):
            run([(10, 5)], [(20, 5)], steps=bad)
    with pytest.raises(ValueError, match="handles/targets"):
        run([(10, 5), (20, 5)], [(30, 5)])
    with pytest.raises(ValueError, match="handles/targets"):
        run([], [])
    with pytest.raises(ValueError, match="sigma_next"):
        optimize_drag(host, x, 1.0, 1.5, [(10, 5)], [(20, 5)])
    with pytest.raises(ValueError, match="x: expected one latent"):
        optimize_drag(host, x.expand(2, -1, -1, -1), SIGMA, SIGMA_NEXT, [(10, 5)], [(20, 5)])
    with pytest.raises(ValueError, match="mask"):
        run([(10, 5)], [(20, 5)], mask=torch.zeros(2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="lr"):
        run([(10, 5)], [(20, 5)], lr=0.0)


def test_interrupt_propagates_and_strength_step():
    class Stop(Exception):
        pass

    host = ConvHost()

    def interrupt():
        raise Stop()

    host.check_interrupt = interrupt
    with pytest.raises(Stop):
        optimize_drag(host, blob_latent(), SIGMA, SIGMA_NEXT, [(44, 44)], [(76, 44)])
    assert not host.in_grad
    assert strength_step(50, 0.7) == 15  # DragDiffusion: optimise at timesteps[15] of 50 (t = 681)
    with pytest.raises(ValueError, match="strength"):
        strength_step(50, 0.0)
