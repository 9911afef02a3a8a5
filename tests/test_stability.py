"""Stability tracking: a clean edit is left alone after one call; injected drift makes it back off, level by
level, with exactly one edit call per attempt; the last level cannot drift."""
import math

import pytest
import torch

from diffeditor.samplers.edit import preset_schedule
from diffeditor.samplers.stability import LEVELS, backoff, drift_psnr, stable_edit

SRC = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
MASK = torch.zeros(1, 1, 16, 16)
MASK[..., 4:8, 4:8] = 1


class FakeEdit:
    """Changes the edit region; adds ``drift`` outside it unless the background is locked."""

    def __init__(self, drift: float = 0.0, locked_drift: float = 0.0):
        self.drift, self.locked_drift, self.calls = drift, locked_drift, []

    def __call__(self, schedule, lock):
        self.calls.append((schedule.energy_scale, lock))
        out = SRC + 2.0 * MASK
        noise = torch.randn(SRC.shape, generator=torch.Generator().manual_seed(len(self.calls)))
        return out + (self.locked_drift if lock else self.drift) * noise


def test_a_clean_edit_is_left_alone():
    run = FakeEdit()
    out, rep = stable_edit(run, preset_schedule("DiffEditor", "move"), SRC, MASK, threshold_db=30.0)
    assert len(run.calls) == 1 and rep.accepted["level"] == 0 and rep.accepted["drift_db"] == math.inf
    assert torch.equal(out, SRC + 2.0 * MASK)


def test_injected_drift_backs_off_until_the_background_lock_holds():
    sched = preset_schedule("DiffEditor", "move")
    run = FakeEdit(drift=0.3, locked_drift=0.0)
    out, rep = stable_edit(run, sched, SRC, MASK, threshold_db=30.0)
    assert [a["level"] for a in rep.attempts] == [0, 1, 2]
    assert run.calls == [(sched.energy_scale, False), (sched.energy_scale / 2, False), (sched.energy_scale / 2, True)]
    assert rep.attempts[0]["drift_db"] < 30 <= rep.attempts[-1]["drift_db"]
    assert "level 2" in rep.text() and "kept" in rep.text()


def test_the_last_level_keeps_the_input_outside_and_the_limit_is_honoured():
    run = FakeEdit(drift=0.3, locked_drift=0.3)
    out, rep = stable_edit(run, preset_schedule("DiffEditor", "move"), SRC, MASK, threshold_db=30.0)
    assert len(run.calls) == 4 and rep.accepted["level"] == 3 and rep.accepted["drift_db"] == math.inf
    far = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    far[..., 3:9, 3:9] = False  # outside the one-cell margin
    assert torch.equal(out[far.expand_as(out)], SRC[far.expand_as(SRC)])
    run = FakeEdit(drift=0.3, locked_drift=0.3)
    _, rep = stable_edit(run, preset_schedule("DiffEditor", "move"), SRC, MASK, threshold_db=30.0, max_level=1)
    assert len(run.calls) == 2 and "limit reached" in rep.text()


def test_ladder_and_metric_validation():
    s = preset_schedule("DiffEditor", "drag")
    s1, lock, comp = backoff(s, 1)
    assert s1.energy_scale == s.energy_scale / 2 and s1.eta_in == s.eta_in / 2 and not lock and not comp
    assert backoff(s, 3)[1:] == (True, True) and len(LEVELS) == 4
    assert drift_psnr(SRC, SRC, torch.ones(1, 1, 16, 16, dtype=torch.bool)) == math.inf
    with pytest.raises(ValueError, match="level"):
        backoff(s, 4)
    with pytest.raises(ValueError, match="threshold_db"):
        stable_edit(FakeEdit(), s, SRC, MASK, threshold_db=float("nan"))
