"""DiffEditor's image prompt on a ComfyUI MODEL through ``attn2`` replace patches (one per cross-attention).

Each patch computes the cross-attention as it was before (the ``attn2`` replace another node or pack already
put on that block, else ComfyUI's ``optimized_attention``) and, on the steps of the window (read from
``transformer_options["sigmas"]`` against ``sample_sigmas``), adds ``scale`` times the attention over the
image tokens projected by that layer's ``to_k_ip`` / ``to_v_ip``. The conditional chunk uses the image's
tokens, the unconditional chunk those of an all-zero image (official); image tokens never pass through
the text projections.

Composing with other packs:

* an ``attn2`` replace already on the block is *chained*, not overwritten: it computes the text attention
  (and whatever it adds), the image term is added to its result;
* packs that append to an existing ``attn2`` replace with ``.add(callback, **kwargs)`` (the convention of
  IPAdapter_plus-style packs: ``callback(out, q, k, v, extra_options, **kwargs)`` is added to the output while
  ``kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]``) can append to this patch too; the patch is copied
  with the MODEL (``ModelPatcher.clone``), so what one branch adds never reaches another;
* patches are keyed like ComfyUI and those packs key them: ``(block, number)`` for single-transformer blocks
  (SD1.x, SD2.x), ``(block, number, transformer_index)`` for deeper ones (SDXL), or the more specific key a
  patch already there uses;
* ``transformer_options`` are passed to every attention call (attention overrides see them);
* the image weights and tokens follow the MODEL's device and dtype through ``.to()``, which ComfyUI calls when
  it loads and offloads the model, so they are moved once per load, not on every call.
"""
from __future__ import annotations

import torch
from comfy.ldm.modules.attention import optimized_attention

from ..guidance.image_prompt import ImagePromptAdapter
from ..samplers.hooks import COND
from ..samplers.schedule import StepWindow, match_step
from .comfy_adapter import _base_model, check_supported

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def _cross_attention_modules(model):
    """``[((block, number, transformer_index), depth, attn2 module)]`` in diffusers' processor order (down, up,
    mid)."""
    dm = _base_model(model).diffusion_model
    out = {"input": [], "output": [], "middle": []}
    for name, blocks in (("input", dm.input_blocks), ("output", dm.output_blocks), ("middle", [dm.middle_block])):
        for n, block in enumerate(blocks):
            for layer in block:
                tbs = getattr(layer, "transformer_blocks", None)
                if tbs is not None:
                    out[name] += [((name, n, t), len(tbs), tb.attn2) for t, tb in enumerate(tbs)]
    return out["input"] + out["output"] + out["middle"]


def cross_attention_blocks(model) -> list[tuple[str, int, int]]:
    """``(block, number, transformer_index)`` of every attn2, in diffusers' processor order (down, up, mid)."""
    return [key for key, _, _ in _cross_attention_modules(model)]


def cross_attention_widths(model) -> list[int]:
    """The query width (``heads * dim_head``) of every attn2, in :func:`cross_attention_blocks` order."""
    return [int(attn.to_q.weight.shape[0]) for _, _, attn in _cross_attention_modules(model)]


def encode_image_tokens(clip_vision, image: torch.Tensor):
    """Penultimate CLIP tokens of ``image`` and of an all-zero image in normalised pixel space."""
    cond = clip_vision.encode_image(image).penultimate_hidden_states
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype).reshape(1, 1, 1, 3)
    zero = clip_vision.encode_image(mean.expand(1, *image.shape[1:3], 3).clone()).penultimate_hidden_states
    return cond, zero


class _IPPatch:
    """attn2 replace: the previous cross-attention (chained) plus the image prompt's decoupled attention."""

    def __init__(self, wk, wv, cond_tokens, uncond_tokens, scale, window: StepWindow, previous=None,
                 appended=None):
        self.wk, self.wv = wk, wv
        self.tokens = {COND: cond_tokens, 1: uncond_tokens}
        self.scale, self.window = float(scale), window
        self.previous = previous
        self.appended = list(appended or [])  # [(callback, kwargs)] added by other packs through .add()

    # -- ComfyUI's model patch protocol ----------------------------------------------------------------------
    def to(self, device_or_dtype):
        """Move / cast the image weights and tokens (and a chained patch) in place; ComfyUI calls this with the
        load device and the model dtype when it loads the MODEL, and the offload device when it unloads it."""
        if isinstance(device_or_dtype, torch.dtype) and not device_or_dtype.is_floating_point:
            return self
        self.wk, self.wv = self.wk.to(device_or_dtype), self.wv.to(device_or_dtype)
        self.tokens = {b: t.to(device_or_dtype) for b, t in self.tokens.items()}
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self

    def __deepcopy__(self, memo):
        """A per-clone patch (what other packs ``.add()`` stays on their clone) sharing the image tensors."""
        import copy

        prev = copy.deepcopy(self.previous, memo) if self.previous is not None else None
        return _IPPatch(self.wk, self.wv, self.tokens[COND], self.tokens[1], self.scale, self.window, prev,
                        self.appended)

    def add(self, callback, **kwargs):
        """Append another pack's cross-attention term (IPAdapter_plus-style ``.add`` convention)."""
        self.appended.append((callback, kwargs))

    # -- the patch ---------------------------------------------------------------------------------------------
    def _active(self, extra) -> bool:
        sched = extra.get("sample_sigmas")
        sig = extra.get("sigmas")
        if sched is None or sig is None:
            return False
        i = match_step(float(sig.flatten()[0]), sched)
        return i is not None and i in self.window.indices(len(sched) - 1)

    def _on(self, q):
        """The image weights and tokens on ``q``'s device and dtype (moved once and kept: a no-op after ``.to``)."""
        if self.wk.device != q.device or self.wk.dtype != q.dtype:
            self.to(q.device).to(q.dtype)
        return self.wk, self.wv, self.tokens

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        if self.previous is not None:
            out = self.previous(q, k, v, extra)
        else:
            out = optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                      transformer_options=extra)
        if self.scale != 0 and self._active(extra):
            wk, wv, tokens = self._on(q)
            branches = extra.get("cond_or_uncond") or [COND]
            size = q.shape[0] // len(branches)
            toks = torch.cat([tokens[b].expand(size, -1, -1) for b in branches])
            out = out + self.scale * optimized_attention(q, toks @ wk.t(), toks @ wv.t(), heads,
                                                         attn_precision=extra.get("attn_precision"),
                                                         transformer_options=extra)
        if self.appended:
            sig = extra.get("sigmas")
            sigma = float(sig.detach().flatten()[0]) if sig is not None else float("inf")
            for callback, kw in self.appended:
                if kw.get("sigma_end", float("-inf")) <= sigma <= kw.get("sigma_start", float("inf")):
                    out = out + callback(out, q, k, v, extra, **kw)
        return out


def _patch_key(existing: dict, block: tuple[str, int, int], depth: int):
    """The ``patches_replace["attn2"]`` key for one transformer and the patch to chain there (or None)."""
    b, n, t = block
    if block in existing:
        return block, existing[block]
    if depth == 1:
        return (b, n), existing.get((b, n))
    return block, existing.get((b, n))


def check_widths(model, adapter: ImagePromptAdapter, weights_name: str) -> None:
    """Raise a ValueError naming the weights file and the first mismatch unless every layer's image K/V
    projection has the width of the MODEL's cross-attention query at that layer."""
    blocks = cross_attention_blocks(model)
    names = [f"{b}.{n}.{t}" for b, n, t in blocks]
    index = adapter.layer_index_map(names)
    for (b, n, t), name, width in zip(blocks, names, cross_attention_widths(model)):
        i = index[name]
        wk, wv = adapter.layers[i]
        if wk.shape[0] != width or wv.shape[0] != width:
            raise ValueError(
                f"image_prompt ({weights_name}): ip_adapter.{i}.to_k_ip/to_v_ip project image tokens to "
                f"{wk.shape[0]} channels, but the MODEL's cross-attention there ({b} block {n}, transformer {t}) "
                f"is {width} wide; these weights were made for another base model (the released ip_sd15_64 "
                "weights are for SD1.x)")


def image_prompt_model(model, adapter: ImagePromptAdapter, cond_tokens, uncond_tokens, scale: float,
                       window: StepWindow, weights_name: str = "weights"):
    """A clone of ``model`` with the image prompt on every cross-attention (chaining any attn2 replace there)."""
    check_supported(model, "model", dit=False)
    try:
        check_widths(model, adapter, weights_name)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("image_prompt") else f"image_prompt ({weights_name}): {msg}") from None
    modules = _cross_attention_modules(model)
    per_layer = adapter.for_layers([f"{b}.{n}.{t}" for (b, n, t), _, _ in modules])
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for (b, n, t), depth, _ in modules:
        wk, wv = per_layer[f"{b}.{n}.{t}"]
        key, previous = _patch_key(existing, (b, n, t), depth)
        patch = _IPPatch(wk, wv, cond_tokens, uncond_tokens, scale, window, previous)
        m.set_model_attn2_replace(patch, *key)
    return m
