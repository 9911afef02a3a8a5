"""Concept erasure on a ComfyUI MODEL: UCE as reversible weight patches, SLD as a cfg function.

* :func:`uce_patched_model` computes the closed-form UCE edit of every cross-attention K/V projection from
  the model's *current* weights (LoRAs and other patches included) and returns a clone carrying the
  differences as ``add_patches`` diffs: the user's MODEL and other branches are untouched, and removing the
  node restores the model exactly.
* :func:`sld_model` returns a clone whose ``sampler_cfg_function`` applies Safe Latent Diffusion with one
  extra conditional prediction for the safety concept per step.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import comfy.lora
import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..guidance.sld import SLDConfig, SLDState, sld_guidance_sigma
from ..guidance.uce import concept_embedding, uce_deltas
from ..samplers.schedule import match_step
from .comfy_adapter import check_supported

KV_KEY = re.compile(r"^diffusion_model\..*\.attn2\.to_[kv]\.weight$")


def parse_concepts(text: str) -> list[str]:
    """Concepts from a multiline / comma-separated text (blank entries dropped)."""
    return [c.strip() for c in re.split(r"[\n,;]", text or "") if c.strip()]


def _n_tokens(tokens: dict, concept: str, name: str) -> int:
    """Real tokens of a tokenized concept (start + words + end), from the first tokenizer's output."""
    key = "l" if "l" in tokens else next(iter(tokens))
    chunks = tokens[key]
    if len(chunks) > 1:
        raise ValueError(f"{name}: the concept {concept!r} is longer than the text encoder's 75-token limit")
    ids = [t[0] if isinstance(t, (tuple, list)) else t for t in chunks[0]]
    end = ids[-1]  # CLIP-L pads with its end token: the first one after the start token closes the prompt
    return next((i + 1 for i in range(1, len(ids)) if ids[i] == end), len(ids))


def concept_embeddings(clip, concepts: Sequence[str], name: str) -> torch.Tensor:
    """``[N, D]`` text-encoder outputs at each concept's last content token (the guide "" gives the start)."""
    if clip is None:
        raise ValueError("clip: no text encoder is connected (the checkpoint has no CLIP); connect a CLIP")
    out = []
    for c in concepts:
        tokens = clip.tokenize(c)
        cond = clip.encode_from_tokens(tokens)
        out.append(concept_embedding(cond.float(), _n_tokens(tokens, c, name)).reshape(-1))
    return torch.stack(out)


def current_kv_weights(model) -> dict[str, torch.Tensor]:
    """Every attn2 to_k / to_v weight as the model currently computes it (patches applied), fp32."""
    patches = model.get_key_patches("diffusion_model.")
    out = {}
    for k, entry in patches.items():
        if not KV_KEY.match(k):
            continue
        (weight, convert), *rest = entry
        w = convert(weight).detach().clone().float()
        if rest:
            w = comfy.lora.calculate_weight(rest, w, k)
        out[k] = w
    if not out:
        raise ValueError("model: no cross-attention K/V projections found (only UNets with attn2 are supported)")
    return out


def uce_patched_model(model, clip, erase: Sequence[str], guide: str, preserve: Sequence[str], lam: float,
                      erase_scale: float, preserve_scale: float, progress: Callable[[int, int], None] | None = None):
    check_supported(model, "model")
    if not erase:
        raise ValueError("concepts: give at least one concept to erase")
    e = concept_embeddings(clip, erase, "concepts")
    g = concept_embeddings(clip, [guide] * len(erase), "guide")
    p = concept_embeddings(clip, preserve, "preserve") if preserve else None
    weights = current_kv_weights(model)
    deltas = {}
    keys = sorted(weights)
    for i in range(0, len(keys), 8):  # chunks: progress + interruption between them
        comfy.model_management.throw_exception_if_processing_interrupted()
        chunk = {k: weights[k] for k in keys[i:i + 8]}
        try:
            deltas.update(uce_deltas(chunk, e, g, p, lam=lam, erase_scale=erase_scale, preserve_scale=preserve_scale))
        except ValueError as err:
            raise ValueError(f"clip/model: {err}") from None
        if progress is not None:
            progress(min(i + 8, len(keys)), len(keys))
    m = model.clone()
    added = m.add_patches({k: ("diff", (d,)) for k, d in deltas.items()}, 1.0, 1.0)
    if len(added) != len(deltas):
        raise RuntimeError(f"only {len(added)} of {len(deltas)} UCE patches matched the model's weights")
    return m


def sld_model(model, safety, config: SLDConfig):
    """A clone of ``model`` with Safe Latent Diffusion guidance away from the ``safety`` CONDITIONING."""
    check_supported(model, "model")
    if config.guidance_scale == 0 and config.momentum_scale == 0:
        return model.clone()  # SLD has no effect: plain CFG, bit for bit, and no extra model call
    safety_cond = comfy.sampler_helpers.convert_cond(safety)
    state = SLDState()
    last = {"schedule": None, "sigma": None}

    def cfg_function(args):
        x, sigma, base = args["input"], args["sigma"], args["model"]
        opts = args["model_options"]
        sched = opts.get("transformer_options", {}).get("sample_sigmas")
        s = float(sigma.flatten()[0])
        key = None if sched is None else tuple(round(float(v), 6) for v in sched)
        if key != last["schedule"] or last["sigma"] is None or s > last["sigma"]:
            state.reset()  # a new sampling run
        last["schedule"], last["sigma"] = key, s
        if sched is not None:
            i = match_step(s, sched)
            if i is not None:
                state.step = i
        processed = comfy.samplers.encode_model_conds(base.extra_conds, safety_cond, x, x.device, "negative")
        (safety_denoised,) = comfy.samplers.calc_cond_batch(base, [processed], x, sigma, opts)
        noise = sld_guidance_sigma(x, sigma, args["cond_denoised"], args["uncond_denoised"], safety_denoised,
                                   args["cond_scale"], config, state)
        return noise

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg_function, disable_cfg1_optimization=True)
    return m
