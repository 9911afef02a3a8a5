"""DiffEditor's image prompt: a perceiver resampler over CLIP image tokens and decoupled cross-attention.

Reference doc §1.12 (encoder, weights), §1.9 (window), §1.13 (token misrouting). Pure torch.

* :class:`Resampler` — learned queries ``latents [1, Q, D]`` attend to ``[image tokens ; queries]`` (both
  layer-normed, bias-free projections), then a feed-forward block ``LayerNorm, Linear(D, mD), GELU,
  Linear(mD, D)``, both residual; ``proj_in`` before the layers, ``proj_out`` and ``norm_out`` after. The
  state-dict key names are those of the released ``ip_sd15_64.bin`` (its ``image_proj`` part), so those
  weights load unchanged; :meth:`Resampler.from_state_dict` reads the number of queries, width, depth,
  input/output dims and feed-forward multiplier from the shapes.
* :func:`ip_attention` — ``attn(q, K_text, V_text) + scale * attn(q, K_ip, V_ip)`` while ``active``
  (official: steps 10-19 of 50 -> :data:`DEFAULT_WINDOW`, scale 0.1), exactly the text attention otherwise.
* :func:`split_context` / :func:`ip_kv` — image tokens are split off the context by count and go *only*
  through ``to_k_ip`` / ``to_v_ip``; with several images every image's tokens are split off (the official
  appearance/paste code split off only the last 64 tokens, sending the base image's tokens through the text
  projections, §1.13).
* :class:`ImagePromptAdapter` — the per-layer ``to_k_ip`` / ``to_v_ip`` weights keyed by the official
  processor index, mapped onto the host's ordered attn2 layer names.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .windows import StepWindow

DEFAULT_WINDOW = StepWindow(0.2, 0.4)  # official steps 10..19 of 50
DEFAULT_SCALE = 0.1  # official; 0.05 for the face task
DEFAULT_HEADS = 12  # official (12 heads of 64 over a width of 768); not recoverable from the weights

_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")


# ------------------------------------------------------------------------------------------ attention
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention on projected ``[B, N, C]`` tensors (``C = heads * dim_head``).

    ``k`` / ``v`` may have batch 1 (broadcast to ``q``'s batch).
    """
    b, n, c = q.shape
    if c % heads:
        raise ValueError(f"attention: width {c} is not divisible by {heads} heads")
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:]))
    return out.transpose(1, 2).reshape(b, n, c)


def ip_attention(q: torch.Tensor, k_text: torch.Tensor, v_text: torch.Tensor, k_ip: torch.Tensor | None,
                 v_ip: torch.Tensor | None, heads: int, scale: float, active: bool) -> torch.Tensor:
    """Decoupled cross-attention (before ``to_out``).

    ``attn(q, k_text, v_text) + scale * attn(q, k_ip, v_ip)`` when ``active`` and ``scale != 0``; otherwise
    the text attention itself, with no extra arithmetic (bit-identical to the model without image prompt).
    """
    out = attention(q, k_text, v_text, heads)
    if not active or scale == 0 or k_ip is None:
        return out
    return out + scale * attention(q, k_ip, v_ip, heads)


def split_context(context: torch.Tensor, n_text: int, n_image: int | None = None):
    """Split ``[text tokens ; image 1 tokens ; image 2 tokens ; ...]`` into ``(text, [image_1, image_2, ...])``.

    ``n_image`` is the number of tokens per image (the resampler's query count); ``None`` means all tokens
    after the text are one image. Every image's tokens are returned separately so that none of them is routed
    through the text projections.
    """
    if context.ndim != 3:
        raise ValueError(f"context: expected [batch, tokens, dim], got shape {tuple(context.shape)}")
    n = context.shape[1]
    if not 0 < n_text <= n:
        raise ValueError(f"context: {n} tokens cannot hold {n_text} text tokens")
    text, rest = context[:, :n_text], context[:, n_text:]
    if rest.shape[1] == 0:
        return text, []
    if n_image is None:
        return text, [rest]
    if n_image <= 0 or rest.shape[1] % n_image:
        raise ValueError(f"context: {rest.shape[1]} tokens after the {n_text} text tokens are not a whole number "
                         f"of images of {n_image} tokens")
    return text, list(rest.split(n_image, dim=1))


def ip_kv(images: torch.Tensor | Sequence[torch.Tensor], to_k_ip: torch.Tensor, to_v_ip: torch.Tensor):
    """K, V of the image tokens through the image projections only (``[B, N, D] @ W.T``, no bias).

    ``images`` is one ``[B, Q, D]`` tensor or a list of them (several image prompts: their tokens are
    concatenated along the token axis *after* being split off the text, so each goes through ``to_*_ip``).
    """
    toks = images if isinstance(images, torch.Tensor) else torch.cat(list(images), dim=1)
    return toks @ to_k_ip.to(toks).t(), toks @ to_v_ip.to(toks).t()


def window_active(step: int | None, n_steps: int, window: StepWindow = DEFAULT_WINDOW) -> bool:
    """Whether editing step ``step`` (0 = noisiest) of ``n_steps`` lies in the image-prompt window."""
    return step is not None and step in window.indices(n_steps)


# ---------------------------------------------------------------------------------------- resampler
class _PerceiverAttention(nn.Module):
    """Queries attend to ``[image tokens ; queries]``; keys ``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        return self.to_out(attention(q, k, v, self.heads))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # indices 0 (LayerNorm), 1 (Linear), 2 (GELU), 3 (Linear): keys layers.{i}.1.{0,1,3}
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def resampler_dims(sd: dict, heads: int | None = DEFAULT_HEADS) -> dict:
    """The constructor arguments of :class:`Resampler` implied by a state dict, after checking its layout.

    Raises ``ValueError`` naming the key and the expected shape. ``heads`` cannot be read from the shapes
    (only ``heads * dim_head``): it is a parameter, default 12 (official), and ``dim_head = inner / heads``;
    ``heads=None`` checks the layout only and returns ``heads = dim_head = None``.
    """
    def shape(key, ndim):
        if key not in sd:
            raise ValueError(f"resampler: missing '{key}'")
        t = sd[key]
        if not isinstance(t, torch.Tensor) or t.ndim != ndim:
            raise ValueError(f"resampler: '{key}' must be a {ndim}-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        return tuple(t.shape)

    lat = shape("latents", 3)
    if lat[0] != 1:
        raise ValueError(f"resampler: 'latents' must be [1, queries, width], got {lat}")
    _, queries, dim = lat
    width_in, emb = shape("proj_in.weight", 2)
    output_dim, width_out = shape("proj_out.weight", 2)
    if width_in != dim or width_out != dim:
        raise ValueError(f"resampler: proj_in.weight must be [{dim}, input_dim] and proj_out.weight "
                         f"[output_dim, {dim}] for width {dim}, got {(width_in, emb)} and {(output_dim, width_out)}")
    idx = sorted({int(k.split(".")[1]) for k in sd if re.match(r"^layers\.\d+\.", k)})
    if not idx or idx != list(range(len(idx))):
        raise ValueError(f"resampler: expected layers 0..N-1 ('layers.{{i}}.0.to_q.weight', ...), got {idx}")
    depth = len(idx)
    inner = shape("layers.0.0.to_q.weight", 2)[0]
    hidden = shape("layers.0.1.1.weight", 2)[0]
    if hidden % dim:
        raise ValueError(f"resampler: feed-forward width {hidden} is not a multiple of the width {dim}")
    ff_mult = hidden // dim
    if heads is not None and (heads < 1 or inner % heads):
        raise ValueError(f"resampler: attention width {inner} is not divisible by heads={heads}; pass heads= "
                         f"(the head count is not stored in the weights)")
    expected = {"latents": lat, "proj_in.weight": (dim, emb), "proj_in.bias": (dim,),
                "proj_out.weight": (output_dim, dim), "proj_out.bias": (output_dim,),
                "norm_out.weight": (output_dim,), "norm_out.bias": (output_dim,)}
    for i in range(depth):
        p = f"layers.{i}."
        expected.update({p + "0.norm1.weight": (dim,), p + "0.norm1.bias": (dim,), p + "0.norm2.weight": (dim,),
                         p + "0.norm2.bias": (dim,), p + "0.to_q.weight": (inner, dim),
                         p + "0.to_kv.weight": (2 * inner, dim), p + "0.to_out.weight": (dim, inner),
                         p + "1.0.weight": (dim,), p + "1.0.bias": (dim,), p + "1.1.weight": (hidden, dim),
                         p + "1.3.weight": (dim, hidden)})
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise ValueError(f"resampler: keys do not match the official layout (missing {missing[:6]}, "
                         f"unexpected {extra[:6]})")
    for k, s in expected.items():
        got = tuple(sd[k].shape) if isinstance(sd[k], torch.Tensor) else None
        if got != s:
            raise ValueError(f"resampler: '{k}' must have shape {s}, got {got}")
    return dict(queries=queries, dim=dim, depth=depth, heads=heads, dim_head=None if heads is None else inner // heads,
                embedding_dim=emb, output_dim=output_dim, ff_mult=ff_mult)


def default_heads(inner: int) -> int:
    """Head count used when none is given: 12 (official, 12 x 64 = 768) when the attention width divides by 12,
    else ``width / 64`` when that divides it, else 1. The weights do not record it."""
    if inner % DEFAULT_HEADS == 0:
        return DEFAULT_HEADS
    if inner >= 64 and inner % 64 == 0:
        return inner // 64
    return 1


class Resampler(nn.Module):
    """Perceiver resampler: ``[B, N, embedding_dim]`` image tokens -> ``[B, queries, output_dim]``.

    Official DiffEditor sizes are the defaults (64 queries, width 768, depth 4, 12 heads of 64, input 1280,
    output 768, feed-forward x4).
    """

    def __init__(self, queries: int = 64, dim: int = 768, depth: int = 4, heads: int = DEFAULT_HEADS,
                 dim_head: int = 64, embedding_dim: int = 1280, output_dim: int = 768, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, queries, dim) / math.sqrt(dim))
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, heads, dim_head), _feed_forward(dim, ff_mult)])
            for _ in range(depth))

    @property
    def queries(self) -> int:
        return self.latents.shape[1]

    @property
    def output_dim(self) -> int:
        return self.proj_out.out_features

    @classmethod
    def from_state_dict(cls, sd: dict, heads: int | None = None) -> "Resampler":
        """Build with the dimensions the weights imply (:func:`resampler_dims`) and load them strictly.

        Heads are not recoverable from shapes (only ``heads * dim_head``): ``heads=None`` uses
        :func:`default_heads` (12 for the official width 768, ``dim_head = width / 12``); pass ``heads`` for
        other weights.
        """
        dims = resampler_dims(sd, None if heads is None else int(heads))
        if heads is None:
            inner = sd["layers.0.0.to_q.weight"].shape[0]
            dims.update(heads=default_heads(inner), dim_head=inner // default_heads(inner))
        model = cls(**dims)
        model.load_state_dict(sd, strict=True)
        return model

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        if image_tokens.ndim != 3 or image_tokens.shape[-1] != self.proj_in.in_features:
            raise ValueError(f"resampler: expected image tokens [batch, tokens, {self.proj_in.in_features}], got "
                             f"{tuple(image_tokens.shape)}")
        latents = self.latents.expand(image_tokens.shape[0], -1, -1)
        x = self.proj_in(image_tokens)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))


def image_tokens(resampler: Resampler, penultimate_hidden_states: torch.Tensor) -> torch.Tensor:
    """Image-prompt tokens ``[B, queries, output_dim]`` from the image encoder's penultimate hidden states.

    The host runs the image encoder (CLIP ViT-H/14, 257 x 1280 penultimate tokens for the official weights).
    The *unconditional* tokens are this function applied to the encoding of an all-zero image in normalised
    pixel space (official): the host supplies that encoding too (in pixel space the zero image is the CLIP
    mean colour), e.g. ``image_tokens(r, enc(mean_image))``.
    """
    p = next(resampler.parameters())
    with torch.no_grad():
        return resampler(penultimate_hidden_states.to(device=p.device, dtype=p.dtype))


# ------------------------------------------------------------------------------------------ adapter
class ImagePromptAdapter:
    """Per-layer ``to_k_ip`` / ``to_v_ip`` weights, keyed by the official processor index.

    ``ip_sd`` uses the official keys ``{index}.to_k_ip.weight`` / ``{index}.to_v_ip.weight`` with the index of
    the processor in diffusers' ``attn_processors`` order (self-attention processors hold no weights, so for
    SD1.5 the indices are the odd numbers 1..31). ``layers`` maps index -> ``[W_k, W_v]`` (``[width, ctx]``).
    """

    def __init__(self, ip_sd: dict):
        self.layers: dict[int, list[torch.Tensor]] = {}
        for k, w in ip_sd.items():
            m = _IP_KEY.match(k)
            if m is None:
                raise ValueError(f"image-prompt weights: unexpected key ip_adapter.{k} "
                                 f"(expected '<index>.to_k_ip.weight' / '<index>.to_v_ip.weight')")
            if not isinstance(w, torch.Tensor) or w.ndim != 2:
                raise ValueError(f"image-prompt weights: ip_adapter.{k} must be a 2-D [width, context] tensor")
            kv = self.layers.setdefault(int(m.group(1)), [None, None])
            kv[0 if m.group(2) == "to_k_ip" else 1] = w
        if not self.layers:
            raise ValueError("image-prompt weights: no ip_adapter '<index>.to_k_ip.weight' keys")
        bad = sorted(i for i, kv in self.layers.items() if kv[0] is None or kv[1] is None)
        if bad:
            raise ValueError(f"image-prompt weights: layers {bad} lack to_k_ip or to_v_ip")
        odd = sorted(i for i, (wk, wv) in self.layers.items() if wk.shape != wv.shape)
        if odd:
            raise ValueError(f"image-prompt weights: layers {odd} have to_k_ip and to_v_ip of different shapes")
        ctx = {wk.shape[1] for wk, _ in self.layers.values()}
        if len(ctx) != 1:
            raise ValueError(f"image-prompt weights: layers disagree on the image-token width: {sorted(ctx)}")

    @property
    def indices(self) -> list[int]:
        return sorted(self.layers)

    @property
    def context_dim(self) -> int:
        return next(iter(self.layers.values()))[0].shape[1]

    def layer_index_map(self, layer_names: Sequence[str]) -> dict[str, int]:
        """Host-neutral attn2 layer name -> official processor index.

        ``layer_names``: every cross-attention (attn2) of the host model, in diffusers' processor order (down
        blocks, up blocks, mid block); the host adapter supplies it. The i-th name gets the i-th smallest index.
        """
        idx = self.indices
        names = list(layer_names)
        if len(idx) != len(names):
            raise ValueError(f"image-prompt weights have {len(idx)} cross-attention layers but the model has "
                             f"{len(names)}; they were trained for another base model")
        if len(set(names)) != len(names):
            raise ValueError("image prompt: duplicate attn2 layer names")
        return dict(zip(names, idx))

    def for_layers(self, layer_names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Host-neutral attn2 layer name -> ``(W_k_ip, W_v_ip)`` (see :meth:`layer_index_map`)."""
        return {name: tuple(self.layers[i]) for name, i in self.layer_index_map(layer_names).items()}
