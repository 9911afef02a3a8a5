"""UCE — Unified Concept Editing: closed-form edit of the cross-attention key/value projections.

Pure torch (no comfy, no diffusers). See ``docs/diffeditor-reference.md`` §4.1.

For a projection ``W`` (``[out, in]``, e.g. an ``attn2.to_k`` / ``attn2.to_v`` weight) and concept embeddings
``c`` (vectors of the *context* dimension ``in``), UCE solves the regularised least-squares problem

    min_W'  λ‖W' − W‖²_F + Σ_e s_e ‖W' c_e − v*_e‖² + Σ_p s_p ‖W' c_p − W c_p‖²,   v*_e = W c_guide(e),

whose normal equations give the closed form

    W' = (λW + Σ_e s_e v*_e c_eᵀ + Σ_p s_p (W c_p) c_pᵀ) · (λI + Σ_e s_e c_e c_eᵀ + Σ_p s_p c_p c_pᵀ)⁻¹.

Writing ``A = λI + C_eᵀ S_e C_e + C_pᵀ S_p C_p`` (symmetric positive definite for λ > 0) the numerator is
``W (λI + C_gᵀ S_e C_e + C_pᵀ S_p C_p) = W (A + (C_g − C_e)ᵀ S_e C_e)``, hence

    ΔW = W' − W = W (C_g − C_e)ᵀ S_e C_e A⁻¹,

a rank ≤ #erase update whose right factor ``C_e A⁻¹`` depends only on the concepts, not on ``W``.
:func:`uce_solve` evaluates the textbook formula (one symmetric solve); :func:`uce_deltas` uses the factorised
form, so it needs one solve per distinct context dimension for *all* layers and avoids the cancellation of
``W' − W`` in fp32. Both compute in float64 and return float32.

Concept embeddings: ``c`` is the text-encoder output at the **last content token** of the concept prompt
(:func:`last_content_token_index`, :func:`concept_embedding`), taken from the same text-encoder layer the UNet is
conditioned on. For **SDXL** the UNet context is the feature-wise concatenation of both text encoders' hidden
states (CLIP-L 768 ‖ OpenCLIP-bigG 1280 = 2048), so ``c`` is the concatenation of the two per-token outputs at the
same token position (both tokenizers share the CLIP BPE vocabulary, so the position agrees). Everything here is
dimension-agnostic.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence, Union

import torch

__all__ = [
    "uce_solve",
    "uce_deltas",
    "last_content_token_index",
    "concept_embedding",
]

Embs = Union[torch.Tensor, Sequence[torch.Tensor], None]
Scale = Union[float, Sequence[float], torch.Tensor]


# --------------------------------------------------------------------------------------------------- helpers
def last_content_token_index(token_count: int) -> int:
    """Position of the last content token of a prompt tokenised to ``token_count`` tokens.

    ``token_count`` counts the start and end tokens but not the padding. The last content token sits just before
    the end token, i.e. at ``token_count − 2``. For the empty prompt ``""`` (start + end = 2 tokens) this is 0, the
    start token, whose output is identical for every prompt in a causal text encoder.
    """
    n = int(token_count)
    if n != token_count or n < 2:
        raise ValueError(
            f"token_count must be an integer >= 2 (start and end tokens included), got {token_count!r}")
    return n - 2


def concept_embedding(hidden_states: torch.Tensor, n_tokens) -> torch.Tensor:
    """Pick the concept vector ``c`` from text-encoder hidden states.

    ``hidden_states``: ``[T, D]``, ``[1, T, D]`` or ``[B, T, D]``. ``n_tokens``: the number of tokens of the prompt
    including start/end tokens (an int, or one int per batch row). Returns ``[D]`` for a single prompt, ``[B, D]``
    when ``n_tokens`` is a sequence. For SDXL pass the concatenated ``[.., T, 768 + 1280]`` hidden states.
    """
    if not isinstance(hidden_states, torch.Tensor):
        raise TypeError("hidden_states must be a torch.Tensor")
    hs = hidden_states
    if hs.dim() == 2:
        hs = hs.unsqueeze(0)
    if hs.dim() != 3:
        raise ValueError(f"hidden_states must be [T, D] or [B, T, D], got shape {tuple(hidden_states.shape)}")
    if isinstance(n_tokens, torch.Tensor) and n_tokens.dim() == 0:
        n_tokens = int(n_tokens)
    single = not isinstance(n_tokens, (list, tuple, torch.Tensor))
    counts = [n_tokens] if single else [int(n) for n in n_tokens]
    if single and hs.shape[0] != 1:
        raise ValueError(
            f"hidden_states has batch {hs.shape[0]}; pass one token count per row (n_tokens as a sequence)")
    if not single and len(counts) != hs.shape[0]:
        raise ValueError(f"got {len(counts)} token counts for a batch of {hs.shape[0]} hidden states")
    out = []
    for b, n in enumerate(counts):
        i = last_content_token_index(n)
        if i >= hs.shape[1]:
            raise ValueError(
                f"token position {i} (token_count {n}) is beyond the sequence length {hs.shape[1]}")
        out.append(hs[b, i])
    return out[0] if single else torch.stack(out, 0)


def _as_matrix(embs: Embs, what: str, allow_empty: bool) -> torch.Tensor | None:
    """Stack embeddings into ``[N, D]`` float64 (or ``None`` when empty and allowed)."""
    if embs is None:
        mat = None
    elif isinstance(embs, torch.Tensor):
        if embs.dim() == 1:
            mat = embs.unsqueeze(0)
        elif embs.dim() == 2:
            mat = embs
        else:
            raise ValueError(f"`{what}` embeddings must be [D] or [N, D], got shape {tuple(embs.shape)}")
        if mat.shape[0] == 0:
            mat = None
    else:
        items = list(embs)
        if not items:
            mat = None
        else:
            rows = []
            for t in items:
                t = torch.as_tensor(t)
                if t.dim() == 2 and t.shape[0] == 1:
                    t = t[0]
                if t.dim() != 1:
                    raise ValueError(f"each `{what}` embedding must be a vector [D], got shape {tuple(t.shape)}")
                rows.append(t)
            dims = {r.shape[0] for r in rows}
            if len(dims) != 1:
                raise ValueError(f"`{what}` embeddings have different dimensions: {sorted(dims)}")
            mat = torch.stack([r.detach().to("cpu", torch.float64) for r in rows], 0)
    if mat is None:
        if allow_empty:
            return None
        raise ValueError(f"UCE needs at least one erase concept: `{what}` is empty")
    mat = mat.detach().to(torch.float64)
    if not torch.isfinite(mat).all():
        raise ValueError(f"`{what}` embeddings contain NaN or Inf")
    return mat


def _as_scales(scale: Scale, n: int, what: str) -> torch.Tensor:
    s = torch.as_tensor(scale, dtype=torch.float64).flatten()
    if s.numel() == 1:
        s = s.expand(n).clone()
    elif s.numel() != n:
        raise ValueError(f"{what} has {s.numel()} entries for {n} concepts (give one float or one per concept)")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"{what} must be finite and >= 0, got {s.tolist()}")
    return s


class _Concepts:
    """Validated concept set in float64 on one device."""

    def __init__(self, erase_embs, guide_embs, preserve_embs, lam, erase_scale, preserve_scale):
        lam = float(lam)
        if not (lam >= 0.0) or lam == float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        ce = _as_matrix(erase_embs, "concepts", allow_empty=False)
        cg = _as_matrix(guide_embs, "guide concepts", allow_empty=True)
        cp = _as_matrix(preserve_embs, "preserve concepts", allow_empty=True)
        d = ce.shape[1]
        if cg is None:
            raise ValueError("`guide concepts` is empty: give one guide embedding per erase concept "
                             "(or a single one, e.g. the empty prompt \"\", shared by all)")
        if cg.shape[0] == 1 and ce.shape[0] > 1:
            cg = cg.expand(ce.shape[0], -1)
        if cg.shape[0] != ce.shape[0]:
            raise ValueError(f"{ce.shape[0]} erase concepts but {cg.shape[0]} guide concepts "
                             "(need one per erase concept, or a single shared one)")
        for name, m in (("guide concepts", cg), ("preserve concepts", cp)):
            if m is not None and m.shape[1] != d:
                raise ValueError(f"`{name}` embeddings have dim {m.shape[1]} but the erase `concepts` have dim {d}")
        n_all = ce.shape[0] + (0 if cp is None else cp.shape[0])
        if lam == 0.0 and n_all < d:
            raise ValueError(f"lam=0 needs the concepts to span the {d}-dim context space, but there are only "
                             f"{n_all} concepts; use lam > 0 (default 0.5)")
        self.lam = lam
        self.dim = d
        self.ce, self.cg, self.cp = ce, cg, cp
        self.se = _as_scales(erase_scale, ce.shape[0], "erase_scale")
        self.sp = None if cp is None else _as_scales(preserve_scale, cp.shape[0], "preserve_scale")

    def check_weight(self, W: torch.Tensor, name: str = "W") -> None:
        if not isinstance(W, torch.Tensor) or W.dim() != 2:
            raise ValueError(f"{name} must be a 2-D weight [out, in], got "
                             f"{getattr(W, 'shape', type(W).__name__)}")
        if W.shape[1] != self.dim:
            raise ValueError(
                f"context-dim mismatch for {name}: the concept embeddings have dim {self.dim} but the projection "
                f"expects in_features={W.shape[1]} (embeddings must come from the text-encoder layer the model "
                f"is conditioned on; for SDXL concatenate both encoders' hidden states)")

    def to(self, device) -> "_Concepts":
        """A copy with every tensor on ``device``."""
        new = copy.copy(self)
        for k in ("ce", "cg", "cp", "se", "sp"):
            v = getattr(self, k)
            if v is not None:
                setattr(new, k, v.to(device))
        return new

    def gram_system(self) -> torch.Tensor:
        """``A = λI + C_eᵀ S_e C_e + C_pᵀ S_p C_p`` ([D, D], float64, symmetric)."""
        ce, se = self.ce, self.se
        A = (ce.T * se) @ ce
        if self.cp is not None:
            A = A + (self.cp.T * self.sp) @ self.cp
        A = A + self.lam * torch.eye(self.dim, dtype=A.dtype, device=A.device)
        return 0.5 * (A + A.T)  # exact symmetry for the solver

    def solve(self, A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        try:
            return torch.linalg.solve(A, rhs)
        except RuntimeError as e:  # singular: λ = 0 with fewer concepts than dimensions
            raise ValueError(
                f"UCE system is singular (lam={self.lam}); use lam > 0 unless the concepts span the whole "
                f"{self.dim}-dim context space") from e


# --------------------------------------------------------------------------------------------------- solves
def uce_solve(W: torch.Tensor, erase_embs: Embs, guide_embs: Embs, preserve_embs: Embs = None,
              lam: float = 0.5, erase_scale: Scale = 1.0, preserve_scale: Scale = 1.0) -> torch.Tensor:
    """Closed-form UCE edit of one projection ``W`` ``[out, in]``; returns ``W'`` in float32.

    ``erase_embs``: ``[Ne, in]`` (or a list of ``[in]`` vectors); ``guide_embs``: ``[Ne, in]`` or a single ``[in]``
    shared by all erase concepts; ``preserve_embs``: ``[Np, in]``, may be empty/None. ``erase_scale`` /
    ``preserve_scale``: one float or one per concept (>= 0). ``lam`` is the regulariser λ (> 0 normally).

    Solves ``A W'ᵀ = Bᵀ`` with ``A = λI + Σ s c cᵀ`` (symmetric) and ``B`` the numerator of the closed form, in
    float64, rather than forming ``A⁻¹``.
    """
    con = _Concepts(erase_embs, guide_embs, preserve_embs, lam, erase_scale, preserve_scale)
    con.check_weight(W)
    con = con.to(W.device)
    W64 = W.detach().to(torch.float64)
    se = con.se
    # B = λW + Σ_e s_e (W c_g) c_eᵀ + Σ_p s_p (W c_p) c_pᵀ
    B = con.lam * W64 + (W64 @ con.cg.T * se) @ con.ce
    if con.cp is not None:
        B = B + (W64 @ con.cp.T * con.sp) @ con.cp
    A = con.gram_system()
    W_new = con.solve(A, B.T).T  # W' A = B  <=>  A W'ᵀ = Bᵀ  (A symmetric)
    return W_new.to(torch.float32)


def uce_deltas(weights: Mapping[str, torch.Tensor], erase_embs: Embs, guide_embs: Embs,
               preserve_embs: Embs = None, lam: float = 0.5, erase_scale: Scale = 1.0,
               preserve_scale: Scale = 1.0) -> dict[str, torch.Tensor]:
    """UCE for many projections at once: ``{name: W}`` → ``{name: ΔW = W' − W}`` (float32, W's device).

    Intended for every cross-attention ``to_k`` / ``to_v`` weight of a model. All concepts go into one solve; the
    concept-only factor ``C_e A⁻¹`` is shared by every layer with the same context dimension (see module docstring),
    so the cost is one ``[D, D]`` solve plus two thin matmuls per layer. Equal to ``uce_solve(W, ...) − W``.
    """
    if not weights:
        raise ValueError("uce_deltas: `weights` is empty (no cross-attention to_k/to_v projections found)")
    con = _Concepts(erase_embs, guide_embs, preserve_embs, lam, erase_scale, preserve_scale)
    for name, W in weights.items():
        con.check_weight(W, name)
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, W in weights.items():
        dev = W.device
        if dev not in cache:
            c = con.to(dev)
            A = c.gram_system()
            right = c.solve(A, c.ce.T).T  # C_e A⁻¹  [Ne, D]  (A symmetric)
            left_factor = (c.cg - c.ce).T * c.se  # (C_g − C_e)ᵀ S_e  [D, Ne]
            cache[dev] = (left_factor, right)
        left_factor, right = cache[dev]
        W64 = W.detach().to(torch.float64)
        out[name] = ((W64 @ left_factor) @ right).to(torch.float32)
    return out
