"""UCE on a diffusers ``UNet2DConditionModel``, applied reversibly.

:func:`uce_patch` computes ``ΔW`` for every cross-attention ``attn2.to_k`` / ``attn2.to_v`` weight (without touching the
model); :func:`patched` is a context manager that applies the deltas for the duration of a ``with`` block and then
restores the original weights **by copy** from clones taken on entry, so the weights are bit-identical afterwards
(also when the block raises). The concept embeddings must come from the text encoder output the UNet is conditioned
on (``encoder_hidden_states``; for SDXL the concatenation of both encoders, 2048-dim); see ``guidance/uce.py``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

from ..guidance.uce import uce_deltas

__all__ = ["cross_attention_kv_weights", "uce_patch", "patched"]

_KV_RE = re.compile(r"(^|\.)attn2\.to_[kv]\.weight$")


def cross_attention_kv_weights(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``{param_name: parameter}`` for every ``attn2.to_k.weight`` / ``attn2.to_v.weight`` of ``unet``."""
    found = {n: p for n, p in unet.named_parameters() if _KV_RE.search(n)}
    if not found:
        raise ValueError("no cross-attention projections (attn2.to_k / attn2.to_v weights) found in the model")
    return found


def uce_patch(unet: torch.nn.Module, erase_embs, guide_embs, preserve_embs=None, lam: float = 0.5,
              erase_scale=1.0, preserve_scale=1.0) -> dict[str, torch.Tensor]:
    """UCE deltas ``{param_name: ΔW}`` (float32, on each weight's device) for all attn2 K/V weights of ``unet``.

    Arguments as :func:`diffeditor.guidance.uce.uce_deltas`. The model is not modified; apply with :func:`patched`.
    """
    weights = {n: p.detach() for n, p in cross_attention_kv_weights(unet).items()}
    with torch.no_grad():
        return uce_deltas(weights, erase_embs, guide_embs, preserve_embs, lam=lam, erase_scale=erase_scale,
                          preserve_scale=preserve_scale)


def _set_(param: torch.Tensor, value: torch.Tensor) -> None:
    # Inference tensors (weights loaded under torch.inference_mode) may only be written inside inference mode.
    if param.is_inference():
        with torch.inference_mode():
            param.copy_(value)
    else:
        with torch.no_grad():
            param.copy_(value)


@contextmanager
def patched(unet: torch.nn.Module, deltas: Mapping[str, torch.Tensor], strength: float = 1.0) -> Iterator[torch.nn.Module]:
    """Apply ``W ← W + strength·ΔW`` inside the ``with`` block; restore the exact original weights on exit.

    The sum is formed in float32 and rounded once to the weight's dtype. Every name and shape is checked before any
    weight is changed.
    """
    params = dict(unet.named_parameters())
    for name, d in deltas.items():
        if name not in params:
            raise KeyError(f"patched: the model has no parameter {name!r}")
        if tuple(d.shape) != tuple(params[name].shape):
            raise ValueError(f"patched: delta for {name} has shape {tuple(d.shape)}, "
                             f"weight has {tuple(params[name].shape)}")
    originals: dict[str, torch.Tensor] = {}
    try:
        for name, d in deltas.items():
            p = params[name]
            orig = p.detach().clone()
            originals[name] = orig
            new = orig.to(torch.float32) + strength * d.to(device=p.device, dtype=torch.float32)
            _set_(p, new.to(p.dtype))
        yield unet
    finally:
        for name, orig in originals.items():
            _set_(params[name], orig)
