"""The K,V bank estimate (samplers/budget.py) is what a bank actually stores, for any storage dtype."""
import pytest
import torch

from diffeditor.samplers.budget import inversion_model_calls, kv_bank_estimate, mib
from diffeditor.samplers.hooks import KVBank, KVBudgetError

LAYERS = [("up_blocks.1.attentions.0.transformer_blocks.0", 64, 40),
          ("up_blocks.2.attentions.1.transformer_blocks.0", 256, 24)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_estimate_equals_the_bytes_a_bank_stores(dtype):
    steps, batch = [2, 3, 5], 2
    bank = KVBank(steps=steps)
    for s in steps:
        for name, tokens, width in LAYERS:
            k = torch.randn(batch, tokens, width, dtype=dtype)
            bank.put(name, s, k, k * 2)
    est = kv_bank_estimate(LAYERS, len(steps), batch=batch)
    assert bank.nbytes == est.bytes == 3 * est.per_step
    assert est.steps_within(est.bytes) == 3 and est.steps_within(est.per_step * 2 - 1) == 1
    assert est.steps_within(est.per_step - 1) == 0


def test_budget_error_is_a_value_error_and_calls_count():
    bank = KVBank(steps=[0], byte_budget=10)
    with pytest.raises(ValueError, match="budget"):
        bank.put("x", 0, torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    assert issubclass(KVBudgetError, ValueError)
    assert inversion_model_calls(50) == 50 and inversion_model_calls(50, 3) == 200
    assert mib(3 * 2 ** 20) == "3.0 MiB"
