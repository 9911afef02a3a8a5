"""GoodDrag's alternating drag and denoising (AlDD): the information-preserving loss, the bidirectional
tracker that cannot jump to a distractor, and the calls the loop says it makes."""
import math

import pytest
import torch

from diffeditor.guidance.drag_loss import preserving_motion_loss, track_points, track_points_checked
from diffeditor.samplers.drag import alternating_drag
from diffeditor.samplers.trajectory import EditTrajectory

from test_drag_loss import ConvHost, blob_latent, smooth_field


def test_preserving_loss_pulls_toward_the_original_handle_features():
    f0 = smooth_field()
    h0, tgt = [(10.0, 10.0)], [(10.0, 20.0)]
    # features where the handle's original content already sits at h0 + beta*d: zero loss there
    f = torch.roll(f0, shifts=(0, 2), dims=(2, 3))
    assert float(preserving_motion_loss(f, f0, h0, h0, tgt, r_m=1, beta=2.0)) < 1e-6
    # the unmoved features are penalised, and the current handle's own (drifted) features are not the target
    assert float(preserving_motion_loss(f0, f0, h0, h0, tgt, r_m=1, beta=2.0)) > 0.1
    assert float(preserving_motion_loss(f0, f0, [(10.0, 19.0)], h0, tgt, r_m=1)) == 0.0  # reached: skipped
    with pytest.raises(ValueError, match="handles"):
        preserving_motion_loss(f0, f0, h0, h0 * 2, tgt)


def test_checked_tracker_refuses_a_distractor_the_plain_tracker_jumps_to():
    f0 = smooth_field(n=32, seed=3)
    h0 = [(12.0, 12.0)]
    ref = f0[0, :, 12, 12].clone()
    f = smooth_field(n=32, seed=4)  # the handle's content is gone from the current map ...
    f[0, :, 14, 15] = ref  # ... and a look-alike sits nearby
    f0[0, :, 12, 10] = ref  # which is also a look-alike of something else near the original handle
    f0[0, :, 12, 12] = ref + 0.05
    plain = track_points(f, f0, h0, h0, r_p=4)
    assert plain == [(14.0, 15.0)]
    # backward check: the feature at (14, 15) matches (12, 10) in the original map, 2 cells from the handle
    checked, rejected = track_points_checked(f, f0, h0, h0, r_p=4, tol=1.5)
    assert checked == h0 and rejected == 1
    # an honest move is kept
    moved = torch.roll(f0, shifts=(1, 2), dims=(2, 3))
    ok, rej = track_points_checked(moved, f0, h0, h0, r_p=4)
    assert ok == [(13.0, 14.0)] and rej == 0


class CountingHost(ConvHost):
    def __init__(self):
        super().__init__()
        self.n_features = self.n_cond = 0

    def features(self, x, sigma, levels):
        self.n_features += 1
        return super().features(x, sigma, levels)

    def denoise_cond(self, x, sigma):
        self.n_cond += 1
        return super().denoise_cond(x, sigma)


def _trajectory(steps=6):
    x = blob_latent()
    sig = torch.linspace(3.0, 0.0, steps + 1)
    return EditTrajectory([x * (1 + float(s)) for s in sig], sig, "toy", "")


def test_alternating_drag_makes_exactly_the_calls_it_reports():
    host = CountingHost()
    traj = _trajectory()
    x, step, final, info = alternating_drag(host, traj, traj.sigmas, 1, [(22.0, 22.0)], [(40.0, 22.0)],
                                            mask=torch.ones(16, 16), drag_steps=3, tracks=2, iters_per_track=2,
                                            r_m=1, r_p=3, beta=2.0, lam=0.1, loss_threshold=0.0,
                                            max_no_change=10, image_size=(64, 64))
    assert host.n_features == info["feature_forwards"] and host.n_cond == info["cond_forwards"]
    k = info["drag_steps"]
    assert step == 1 + k and 1 <= k <= 3
    # per dragged step: 1 original + (re-track after the first) + one per iteration; cond: 1 source target +
    # one regulariser pass per iteration + 1 denoising step
    assert info["feature_forwards"] == k + (k - 1) + info["iterations"]
    assert info["cond_forwards"] == 2 * k + info["iterations"]
    assert info["backward_passes"] == info["iterations"] > 0
    assert x.shape == traj.z_T.shape and torch.isfinite(x).all() and len(final) == 1


def test_alternating_drag_moves_the_handle_and_validates():
    host = ConvHost()
    traj = _trajectory(8)
    _, _, final, info = alternating_drag(host, traj, traj.sigmas, 0, [(22.0, 22.0)], [(34.0, 22.0)],
                                         drag_steps=4, tracks=4, iters_per_track=5, r_m=1, r_p=3, beta=2.0,
                                         lr=0.05, loss_threshold=0.0, image_size=(64, 64))
    assert final[0][0] > 22.0  # the tracked handle moved toward the target (x grows)
    with pytest.raises(ValueError, match="start"):
        alternating_drag(host, traj, traj.sigmas, 8, [(1.0, 1.0)], [(5.0, 1.0)])
    with pytest.raises(ValueError, match="beta"):
        alternating_drag(host, traj, traj.sigmas, 0, [(1.0, 1.0)], [(5.0, 1.0)], beta=math.nan)
    with pytest.raises(ValueError, match="handles"):
        alternating_drag(host, traj, traj.sigmas, 0, [(1.0, 1.0)], [], image_size=(64, 64))
