"""The published presets stay bit-for-bit identical: every task x preset against outputs recorded before the
engine refactor (tests/golden_presets.py; tiny seeded UNet and the committed demo model)."""
import pytest
import torch

import golden_presets as gp


@pytest.fixture(scope="module")
def golden():
    if not gp.DATA.exists():
        pytest.skip("no golden file; record it with `python tests/golden_presets.py --record`")
    data = torch.load(gp.DATA)
    with gp.one_thread():
        if not torch.equal(gp.canary(), data["canary"]):
            pytest.skip(f"this machine's arithmetic differs from the recording's (torch {data['torch']}); "
                        "bitwise comparison is meaningless here")
    return data


def _compare(now: dict, recorded: dict):
    assert set(now) == set(recorded)
    diff = {k: float((now[k] - recorded[k]).abs().max()) for k in recorded if not torch.equal(now[k], recorded[k])}
    assert not diff, f"outputs changed (max abs difference per case): {diff}"


def test_tiny_unet_every_task_and_preset_is_bit_identical(golden):
    with gp.one_thread():
        now = {f"{t}/{p}": v for (t, p), v in gp.tiny_cases().items()}
    assert len(now) == len(gp.TASKS) * len(gp.PRESETS)
    _compare(now, golden["tiny"])


def test_demo_model_every_task_and_preset_is_bit_identical(golden):
    if gp.demo_weights_hash() != golden["demo_weights"]:
        pytest.skip("the demo weights changed since the recording; re-record on the pre-refactor code")
    with gp.one_thread():
        now = {f"{t}/{p}": v for (t, p), v in gp.demo_cases().items()}
    _compare(now, golden["demo"])
