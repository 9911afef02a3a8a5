"""Closed-vocabulary tokenizer and a small CLIP-like causal text encoder for the demo model.

The vocabulary is deterministic: the special tokens, then :data:`bench.scenes.CAPTION_WORDS` (the
function words "a", "and", "on", "background", then colours, shapes and palettes in generator order).
Sequences are ``<start> words... <end>`` padded to ``max_length`` (16) **with the end token** (as SD's CLIP
tokenizer), truncated to keep the end token; punctuation is ignored and unknown words map to ``<unk>``.
The empty prompt (``""``) is ``<start> <end> <end> ...`` (the unconditional embedding).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from ...bench.scenes import CAPTION_WORDS

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
MAX_LENGTH = 16


def build_vocab(words: Iterable[str] = CAPTION_WORDS) -> list[str]:
    vocab = list(SPECIALS)
    for w in words:
        if w not in vocab:
            vocab.append(w)
    return vocab


class DemoTokenizer:
    """Word-level tokenizer: ``tok(["a red circle on a sand background"])`` -> ``LongTensor [B, 16]``."""

    def __init__(self, vocab: Sequence[str] | None = None, max_length: int = MAX_LENGTH):
        self.vocab = list(vocab) if vocab is not None else build_vocab()
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = int(max_length)
        self.pad_id, self.start_id, self.end_id, self.unk_id = (self.index[t] for t in SPECIALS)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, self.unk_id) for w in self.words(text)][: self.max_length - 2]
        ids = [self.start_id] + ids + [self.end_id]
        return ids + [self.end_id] * (self.max_length - len(ids))

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.start_id:
                continue
            if i == self.end_id:
                break
            out.append(self.vocab[i])
        return " ".join(out)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * mlp_ratio), nn.GELU(), nn.Linear(width * mlp_ratio, width))

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class DemoTextEncoder(nn.Module):
    """Token + learned position embedding, pre-LN causal transformer blocks, final LayerNorm.

    ``forward(input_ids [B, T]) -> hidden states [B, T, width]`` (the UNet's ``encoder_hidden_states``).
    """

    def __init__(self, vocab_size: int, width: int = 64, layers: int = 2, heads: int = 4, mlp_ratio: int = 4,
                 max_length: int = MAX_LENGTH):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio,
                           max_length=max_length)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(max_length, width))
        self.blocks = nn.ModuleList([_Block(width, heads, mlp_ratio) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        self.register_buffer("causal", torch.full((max_length, max_length), float("-inf")).triu(1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:t]
        causal = self.causal[:t, :t].to(x.dtype)
        for blk in self.blocks:
            x = blk(x, causal)
        return self.final_layer_norm(x)
