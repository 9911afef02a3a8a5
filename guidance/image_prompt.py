"""DiffEditor's image prompt: a perceiver resampler over CLIP image tokens and decoupled cross-attention.

* :class:`Resampler` — learned queries attend to ``[image tokens ; queries]`` (layer-normed, bias-free
  projections), then a feed-forward block, both residual; projections in/out and a final LayerNorm. State
  dict keys follow the released ``ip_sd15_64.bin`` (``image_proj`` part) so its weights load unchanged; the
  number of queries, width, depth and dims are read from the weights (:meth:`Resampler.from_state_dict`).
* :func:`ip_attention` — text cross-attention plus ``scale`` times attention over the image tokens'
  own K,V (``to_k_ip`` / ``to_v_ip``), only while ``active`` (official: steps 10-19 of 50, scale 0.1).
  Image tokens never go through the text projections (the official appearance/paste misrouting bug).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..samplers.schedule import StepWindow

DEFAULT_WINDOW = StepWindow(0.2, 0.4)
DEFAULT_SCALE = 0.1


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on projected ``[B, N, C]`` tensors (``C = heads * dim_head``)."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:]))
    return out.transpose(1, 2).reshape(b, n, c)


def ip_attention(q, k_text, v_text, k_ip, v_ip, heads: int, scale: float, active: bool) -> torch.Tensor:
    """Decoupled cross-attention: ``attn(q, K_text, V_text) + scale * attn(q, K_ip, V_ip)`` when active."""
    out = attention(q, k_text, v_text, heads)
    if not active or scale == 0 or k_ip is None:
        return out
    return out + scale * attention(q, k_ip, v_ip, heads)


class _PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        return self.to_out(attention(q, k, v, self.heads))


class Resampler(nn.Module):
    def __init__(self, queries: int = 64, dim: int = 768, depth: int = 4, heads: int = 12, dim_head: int = 64,
                 embedding_dim: int = 1280, output_dim: int = 768, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, queries, dim) / math.sqrt(dim))
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, heads, dim_head),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                                         nn.Linear(dim * ff_mult, dim, bias=False))])
            for _ in range(depth))

    @classmethod
    def from_state_dict(cls, sd: dict, heads: int | None = None) -> "Resampler":
        """Build with the dimensions the weights imply and load them strictly.

        The head count is not recoverable from shapes: default 12 when the width is 768 (official), else
        width / 64.
        """
        if "latents" not in sd:
            raise ValueError("image-prompt weights: the resampler has no 'latents' (expected keys 'latents', "
                             "'proj_in.weight', 'layers.N...')")
        _, queries, dim = sd["latents"].shape
        depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        embedding_dim = sd["proj_in.weight"].shape[1]
        output_dim = sd["proj_out.weight"].shape[0]
        inner = sd["layers.0.0.to_q.weight"].shape[0]
        ff_mult = sd["layers.0.1.1.weight"].shape[0] // dim
        heads = heads or (12 if dim == 768 else max(1, inner // 64))
        model = cls(queries, dim, depth, heads, inner // heads, embedding_dim, output_dim, ff_mult)
        model.load_state_dict(sd, strict=True)
        return model

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(image_tokens.shape[0], -1, -1)
        x = self.proj_in(image_tokens)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))


def image_tokens(resampler: Resampler, penultimate: torch.Tensor, zero_image_penultimate: torch.Tensor):
    """``(cond_tokens, uncond_tokens)``: the image's tokens and those of an all-zero image (official uncond)."""
    with torch.no_grad():
        return resampler(penultimate), resampler(zero_image_penultimate)


class ImagePromptAdapter:
    """Per-layer ``to_k_ip`` / ``to_v_ip`` weights, keyed by the official processor index."""

    def __init__(self, ip_sd: dict):
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for k, w in ip_sd.items():
            idx, name = k.split(".", 1)
            if name not in ("to_k_ip.weight", "to_v_ip.weight"):
                raise ValueError(f"image-prompt weights: unexpected key ip_adapter.{k}")
            kv = self.layers.setdefault(int(idx), [None, None])
            kv[0 if name.startswith("to_k") else 1] = w
        bad = [i for i, kv in self.layers.items() if kv[0] is None or kv[1] is None]
        if bad:
            raise ValueError(f"image-prompt weights: layers {bad} lack to_k_ip or to_v_ip")

    @property
    def context_dim(self) -> int:
        return next(iter(self.layers.values()))[0].shape[1]

    def for_layers(self, layer_names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Map the processors' indices (sorted; cross-attention only) onto the host's attn2 layers, in
        diffusers' processor order (down blocks, up blocks, mid block)."""
        idx = sorted(self.layers)
        if len(idx) != len(layer_names):
            raise ValueError(f"image-prompt weights have {len(idx)} cross-attention layers but the model has "
                             f"{len(layer_names)}; they were trained for another base model")
        return {name: tuple(self.layers[i]) for name, i in zip(layer_names, idx)}
