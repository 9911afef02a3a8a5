"""Cost estimates made before any model call: the K,V bank's bytes and the inversion's model calls.

A host adapter supplies the decoder self-attention layers the bank records as ``(layer, tokens, width)`` for
the latent being inverted (tokens = the layer's ``h * w`` at that resolution, width = ``heads * dim_head``);
everything here is plain arithmetic, so an input that would need gigabytes is refused in milliseconds instead
of after minutes of UNet calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: bytes per stored value of a K,V bank with the default (two-byte) storage, see ``hooks.KVBank``
BANK_ELEMENT_SIZE = 2


@dataclass(frozen=True)
class BankEstimate:
    """What recording a K,V bank costs: ``bytes`` in total, ``per_step`` bytes, on ``steps`` steps."""

    bytes: int
    per_step: int
    steps: int

    def steps_within(self, budget_bytes: float) -> int:
        """How many recorded steps fit into ``budget_bytes``."""
        return int(budget_bytes // self.per_step) if self.per_step else self.steps


def kv_bank_estimate(layers: Sequence[tuple[str, int, int]], steps: int, batch: int = 1,
                     element_size: int = BANK_ELEMENT_SIZE) -> BankEstimate:
    """Bytes of a bank holding K and V (``[batch, tokens, width]`` each) of every layer on ``steps`` steps."""
    per_step = 2 * int(batch) * sum(int(t) * int(w) for _, t, w in layers) * int(element_size)
    return BankEstimate(per_step * int(steps), per_step, int(steps))


def inversion_model_calls(steps: int, exact_iters: int = 0) -> int:
    """UNet calls of a DDIM inversion at most: one per step, plus ``exact_iters`` fixed-point calls per step."""
    return int(steps) * (1 + max(int(exact_iters), 0))


def mib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 20:,.1f} MiB"
