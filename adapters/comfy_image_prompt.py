"""DiffEditor's image prompt on a ComfyUI MODEL through ``attn2`` replace patches (one per cross-attention).

Each patch computes the usual text cross-attention and, on the steps of the window (read from
``transformer_options["sigmas"]`` against ``sample_sigmas``), adds ``scale`` times the attention over the
image tokens projected by that layer's ``to_k_ip`` / ``to_v_ip``. The conditional chunk uses the image's
tokens, the unconditional chunk those of an all-zero image (official); image tokens never pass through
the text projections.
"""
from __future__ import annotations

import comfy.model_management
import torch
from comfy.ldm.modules.attention import optimized_attention

from ..guidance.image_prompt import ImagePromptAdapter
from ..samplers.hooks import COND
from ..samplers.schedule import StepWindow, match_step
from .comfy_adapter import _base_model, check_supported

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def cross_attention_blocks(model) -> list[tuple[str, int, int]]:
    """``(block, number, transformer_index)`` of every attn2, in diffusers' processor order (down, up, mid)."""
    dm = _base_model(model).diffusion_model
    out = {"input": [], "output": [], "middle": []}
    for name, blocks in (("input", dm.input_blocks), ("output", dm.output_blocks), ("middle", [dm.middle_block])):
        for n, block in enumerate(blocks):
            for layer in block:
                tbs = getattr(layer, "transformer_blocks", None)
                if tbs is not None:
                    out[name] += [(name, n, t) for t in range(len(tbs))]
    return out["input"] + out["output"] + out["middle"]


def encode_image_tokens(clip_vision, image: torch.Tensor):
    """Penultimate CLIP tokens of ``image`` and of an all-zero image in normalised pixel space."""
    cond = clip_vision.encode_image(image).penultimate_hidden_states
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype).reshape(1, 1, 1, 3)
    zero = clip_vision.encode_image(mean.expand(1, *image.shape[1:3], 3).clone()).penultimate_hidden_states
    return cond, zero


class _IPPatch:
    def __init__(self, wk, wv, cond_tokens, uncond_tokens, scale, window: StepWindow):
        self.wk, self.wv = wk, wv
        self.tokens = {COND: cond_tokens, 1: uncond_tokens}
        self.scale, self.window = float(scale), window

    def _active(self, extra) -> bool:
        sched = extra.get("sample_sigmas")
        sig = extra.get("sigmas")
        if sched is None or sig is None:
            return False
        i = match_step(float(sig.flatten()[0]), sched)
        return i is not None and i in self.window.indices(len(sched) - 1)

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        out = optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"))
        if self.scale == 0 or not self._active(extra):
            return out
        branches = extra.get("cond_or_uncond") or [COND]
        size = q.shape[0] // len(branches)
        toks = torch.cat([self.tokens[b].to(q).expand(size, -1, -1) for b in branches])
        k_ip = toks @ self.wk.to(q).t()
        v_ip = toks @ self.wv.to(q).t()
        return out + self.scale * optimized_attention(q, k_ip, v_ip, heads, attn_precision=extra.get("attn_precision"))

    def __deepcopy__(self, memo):
        return self


def image_prompt_model(model, adapter: ImagePromptAdapter, cond_tokens, uncond_tokens, scale: float,
                       window: StepWindow):
    check_supported(model, "model")
    blocks = cross_attention_blocks(model)
    names = [f"{b}.{n}.{t}" for b, n, t in blocks]
    per_layer = adapter.for_layers(names)
    m = model.clone()
    dev = comfy.model_management.intermediate_device()
    for (b, n, t), name in zip(blocks, names):
        wk, wv = per_layer[name]
        m.set_model_attn2_replace(_IPPatch(wk.to(dev), wv.to(dev), cond_tokens, uncond_tokens, scale, window),
                                  b, n, t)
    return m
