"""Concept erasure on a ComfyUI MODEL: UCE as reversible weight patches, SLD as a post-CFG correction.

* :func:`uce_patched_model` computes the closed-form UCE edit of every cross-attention K/V projection from
  the model's *current* weights (LoRAs and other patches included) and returns a clone carrying the
  differences as ``add_patches`` diffs: the user's MODEL and other branches are untouched, and removing the
  node restores the model exactly.
* :func:`sld_model` returns a clone that applies Safe Latent Diffusion with one extra conditional prediction
  for the safety concept per step, as a ``sampler_post_cfg_function``: the SLD term is added to whatever
  guidance produced the denoised estimate (plain CFG, or a cfg function another node set before or after this
  one), so SLD composes with other guidance instead of replacing the MODEL's cfg function.
"""
from __future__ import annotations

import re
import uuid
from typing import Callable, Sequence

import comfy.lora
import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..guidance.sld import SLDConfig, SLDState, sld_correction_sigma
from ..guidance.uce import concept_embedding, uce_deltas
from ..samplers.schedule import match_step
from .comfy_adapter import check_supported

KV_KEY = re.compile(r"^diffusion_model\..*\.attn2\.to_[kv]\.weight$")
_CHUNK = 8  # K/V projections per progress / interruption step


def parse_concepts(text: str) -> list[str]:
    """Concepts from a multiline / comma-separated text (blank entries dropped, order and duplicates kept once)."""
    out = []
    for c in re.split(r"[\n,;]", text or ""):
        c = c.strip()
        if c and c not in out:
            out.append(c)
    return out


# ------------------------------------------------------------------------------------------- text encoder
def _ids(chunk) -> list:
    """Token ids of one tokenizer chunk (entries are ``(id, weight)`` or ``(id, weight, word_id)``)."""
    return [t[0] if isinstance(t, (tuple, list)) else t for t in chunk]


def _token_key(tokens: dict) -> str:
    """The tokenizer whose positions index the cond tensor: CLIP-L when present (SD1, SDXL), else the only one
    (SD2 'h', SDXL refiner 'g'). All of them share the CLIP BPE vocabulary, so positions agree."""
    return "l" if "l" in tokens else next(iter(tokens))


def _short(text: str, words: int = 8) -> str:
    """``text`` quoted, cut to its first ``words`` words (a message must not repeat a 120-word prompt)."""
    parts = text.split()
    return repr(text) if len(parts) <= words else repr(" ".join(parts[:words]) + " ...") + f" ({len(parts)} words)"


def _n_tokens(tokens: dict, end_id, concept: str, name: str) -> int:
    """Real tokens of a tokenized concept (start + content + end), padding excluded.

    ``end_id`` is the end-of-text id (read from the tokenization of ""), so it works whatever the padding is:
    CLIP-L pads with the end token, OpenCLIP (SD2 'h', SDXL 'g') with 0.
    """
    chunks = tokens[_token_key(tokens)]
    if len(chunks) > 1:
        raise ValueError(f"{name}: the concept {_short(concept)} is longer than the text encoder's 75-token limit "
                         f"({len(chunks)} chunks of 75); shorten it or split it into several concepts")
    ids = _ids(chunks[0])
    for i in range(1, len(ids)):
        t = ids[i]
        if isinstance(t, int) and t == end_id:
            return i + 1
    raise ValueError(f"{name}: could not find the end token in the tokenization of {concept!r}")


def concept_embeddings(clip, concepts: Sequence[str], name: str) -> torch.Tensor:
    """``[N, D]`` text-encoder outputs at each concept's last content token (the guide "" gives the start token).

    The cond tensor is what the UNet's cross-attention sees (for SDXL CLIP-L ‖ CLIP-G = 2048 per token), taken
    from the user's CLIP with its current settings (clip skip, LoRAs on the text encoder).
    """
    if clip is None:
        raise ValueError("clip: no text encoder is connected (the checkpoint has no CLIP); connect a CLIP")
    if not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
        raise ValueError(f"clip: expected a CLIP (text encoder), got {type(clip).__name__}")
    empty = clip.tokenize("")
    end_id = _ids(empty[_token_key(empty)][0])[1]  # "" -> [start, end, padding...]
    out = []
    for c in concepts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        tokens = clip.tokenize(c)
        n = _n_tokens(tokens, end_id, c, name)
        cond = clip.encode_from_tokens(tokens)
        if isinstance(cond, (tuple, list)):  # (cond, pooled) from return_pooled=True style encoders
            cond = cond[0]
        out.append(concept_embedding(cond.detach().float().cpu(), n).reshape(-1))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------- UCE
def current_kv_weights(model) -> dict[str, torch.Tensor]:
    """Every attn2 to_k / to_v weight as the model currently computes it (its patches applied), fp32 on CPU.

    ``get_key_patches`` gives the unpatched weight (from the backup when a clone is loaded) plus this
    patcher's own patch list; ComfyUI's ``calculate_weight`` composes them as loading would.
    """
    patches = model.get_key_patches("diffusion_model.")
    out = {}
    for k in sorted(patches):
        if not KV_KEY.match(k):
            continue
        (weight, convert), *rest = patches[k]
        w = convert(weight).detach().to("cpu", torch.float32, copy=True)
        if rest:
            w = comfy.lora.calculate_weight(rest, w, k)
        out[k] = w
    if not out:
        raise ValueError("model: no cross-attention K/V projections (attn2.to_k / to_v) found; "
                         "only UNets conditioned on text by cross-attention are supported")
    return out


def uce_patched_model(model, clip, erase: Sequence[str], guide: str, preserve: Sequence[str], lam: float,
                      erase_scale: float, preserve_scale: float, progress: Callable[[int, int], None] | None = None):
    """A clone of ``model`` with the UCE edit of every cross-attention K/V projection as ``diff`` patches."""
    check_supported(model, "model", dit=False)
    if not erase:
        raise ValueError("concepts: give at least one concept to erase")
    e = concept_embeddings(clip, erase, "concepts")
    g = concept_embeddings(clip, [guide], "guide")  # one guide, shared by every erased concept
    p = concept_embeddings(clip, preserve, "preserve") if preserve else None
    weights = current_kv_weights(model)
    dims = sorted({w.shape[1] for w in weights.values()})
    if dims != [e.shape[1]]:
        raise ValueError(f"clip/model: context-dim mismatch: the CLIP produces {e.shape[1]}-dim embeddings but the "
                         f"MODEL's cross-attention expects {'/'.join(map(str, dims))} (use the CLIP from the same "
                         "checkpoint as the MODEL, e.g. SD1.x 768, SD2 1024, SDXL 2048)")
    keys = list(weights)
    deltas = {}
    for i in range(0, len(keys), _CHUNK):  # chunks: progress and interruption between them
        comfy.model_management.throw_exception_if_processing_interrupted()
        chunk = {k: weights[k] for k in keys[i:i + _CHUNK]}
        try:
            deltas.update(uce_deltas(chunk, e, g, p, lam=lam, erase_scale=erase_scale, preserve_scale=preserve_scale))
        except ValueError as err:
            raise ValueError(f"concepts/preserve: {err}") from None
        if progress is not None:
            progress(min(i + _CHUNK, len(keys)), len(keys))
    m = model.clone()
    added = m.add_patches({k: ("diff", (d,)) for k, d in deltas.items()}, 1.0, 1.0)
    if len(added) != len(deltas):
        raise RuntimeError(f"only {len(added)} of {len(deltas)} UCE patches matched the model's weights")
    return m


# ------------------------------------------------------------------------------------------------- SLD
def _prepare_safety(base, safety_cond: list, x: torch.Tensor) -> list:
    """The safety CONDITIONING made ready for ``calc_cond_batch`` at this latent size (areas, masks, model conds)."""
    conds = [dict(c) for c in safety_cond]
    comfy.samplers.resolve_areas_and_cond_masks_multidim(conds, x.shape[2:], x.device)
    return comfy.samplers.encode_model_conds(base.extra_conds, conds, x, x.device, "negative")


def sld_model(model, safety, config: SLDConfig):
    """A clone of ``model`` with Safe Latent Diffusion guidance away from the ``safety`` CONDITIONING.

    Per step a post-CFG function gets the safety-concept prediction with one extra ``calc_cond_batch`` call and
    adds :func:`sld_correction_sigma` to the guided estimate (with plain CFG this is exactly SLD). Any cfg
    function on the MODEL, set before or after this node, keeps working: SLD only adds its term after it. The
    SLD state (momentum, step) lives in the sampling run's own ``model_options`` copy, so every run (and every
    KSampler using the MODEL) starts fresh; it is also reset if the sigma goes up inside a run. The step index
    comes from ``transformer_options["sample_sigmas"]``.
    """
    check_supported(model, "model", dit=False)
    if config.guidance_scale == 0:
        # gamma = 0, so psi = momentum_scale * nu with nu = 0 forever: exactly plain guidance; skip the extra call
        return model.clone()
    safety_cond = comfy.sampler_helpers.convert_cond(safety)
    run_key = f"diffeditor_sld_{uuid.uuid4().hex}"

    def post_cfg_function(args):
        x, sigma, base, opts = args["input"], args["sigma"], args["model"], args["model_options"]
        s = float(sigma.flatten()[0])
        run = opts.get(run_key)
        if run is None or s > run["sigma"] * (1 + 1e-6) or run["shape"] != tuple(x.shape):
            run = {"state": SLDState(), "safety": _prepare_safety(base, safety_cond, x)}
            opts[run_key] = run  # this run's model_options copy (CFGGuider clones it per run)
        run["sigma"], run["shape"] = s, tuple(x.shape)
        state = run["state"]
        sched = opts.get("transformer_options", {}).get("sample_sigmas")
        if sched is not None:
            i = match_step(s, sched)
            if i is not None:
                state.step = i
        (safety_denoised,) = comfy.samplers.calc_cond_batch(base, [run["safety"]], x, sigma, opts)
        return args["denoised"] + sld_correction_sigma(x, sigma, args["cond_denoised"], args["uncond_denoised"],
                                                       safety_denoised, args["cond_scale"], config, state)

    m = model.clone()
    m.set_model_sampler_post_cfg_function(post_cfg_function, disable_cfg1_optimization=True)
    return m
