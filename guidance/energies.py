"""DiffEditor / DragonDiffusion energy functions (pure torch).

Every energy takes *feature dicts* ``{level: [B, C, h, w]}`` -- the decoder features of the current latent
``F`` (carrying gradient), of the inverted source at the same step ``R`` (no gradient) and, for appearance and
paste, of the inverted reference image ``G`` (no gradient) -- plus the task's masks on the **feature grid**
(2x the latent resolution = H/4 x W/4 pixels, one cell = 4x4 pixels; reference §1.5). All levels are first
resized with nearest interpolation to that grid (:func:`to_feature_grid`) and computed in float32.

Every energy returns ``(E_edit, E_content)``, two scalar tensors. A term whose mask is empty is left out
(the official code would produce NaN); an energy with no live term is a plain zero tensor without gradient.

Notation (reference §1.7): ``cos`` is the per-cell cosine similarity over channels, ``s = (1 + cos) / 2`` maps
it to ``[0, 1]``; ``phi_w(x) = w / (1 + 4x)`` is the "attraction" shape (decreasing in the similarity);
"repulsion" terms are linear, ``w * x``. ``<.>_M`` is a mean over the cells of ``M`` (and the batch);
``mean(A[M])`` is the mean feature vector over ``M``.

Masks are bool (or 0/1) tensors ``[gh, gw]`` on the feature grid; cell correspondences between two regions
(move, drag) are given as flat cell indices into that grid (``row * gw + col``).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from .official import TASK_DEFAULTS  # the official weights are the energies' defaults

_MOVE, _DRAG, _APP, _PASTE = (TASK_DEFAULTS[k] for k in ("move", "drag", "appearance", "paste"))

FeatureDict = Mapping[int, torch.Tensor]


# --------------------------------------------------------------------------------------------- primitives
def phi(x: torch.Tensor, w: float) -> torch.Tensor:
    """The attraction shape ``phi_w(x) = w / (1 + 4x)``: ``w`` at similarity 0, ``w/5`` at similarity 1."""
    return w / (1.0 + 4.0 * x)


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "s", dim: int = 1) -> torch.Tensor:
    """Cosine similarity over ``dim``: raw (``kind="cos"``, in [-1, 1]) or mapped ``s = (1+cos)/2`` (``"s"``)."""
    c = F.cosine_similarity(a, b, dim=dim, eps=1e-8)
    if kind == "cos":
        return c
    if kind == "s":
        return (1.0 + c) * 0.5
    raise ValueError(f"similarity kind must be 's' or 'cos', got {kind!r}")


def to_feature_grid(feats: FeatureDict, size) -> dict[int, torch.Tensor]:
    """Resize every level to the feature grid ``size = (gh, gw)`` with nearest interpolation, as float32.

    ``feats`` maps a level id to ``[B, C, h, w]`` (a list/tuple is taken as levels ``0, 1, ...``).
    Gradient flows through the resize and the cast.
    """
    if isinstance(feats, (list, tuple)):
        feats = dict(enumerate(feats))
    if not feats:
        raise ValueError("feature dict is empty: expected {level: [B, C, h, w]}")
    size = (int(size[0]), int(size[1]))
    out = {}
    for k in sorted(feats):
        f = feats[k]
        if not torch.is_tensor(f) or f.ndim != 4:
            raise ValueError(f"feature level {k!r} must be a [B, C, h, w] tensor, got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
        f = f.float()
        if tuple(f.shape[-2:]) != size:
            f = F.interpolate(f, size=size, mode="nearest")
        out[k] = f
    return out


def _pair(F_: FeatureDict, R_: FeatureDict, size, names=("F", "R")):
    Fg, Rg = to_feature_grid(F_, size), to_feature_grid(R_, size)
    if set(Fg) != set(Rg):
        raise ValueError(f"feature levels differ: {names[0]} has {sorted(Fg)}, {names[1]} has {sorted(Rg)}")
    for k in Fg:
        if Fg[k].shape[1] != Rg[k].shape[1]:
            raise ValueError(f"level {k}: {names[0]} has {Fg[k].shape[1]} channels, {names[1]} {Rg[k].shape[1]}")
        Rg[k] = _match_batch(Rg[k], Fg[k].shape[0], names[1])
    return Fg, Rg


def _match_batch(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(f"{name} features have batch {t.shape[0]}, expected 1 or {batch}")


def _mask(m, size, name: str) -> torch.Tensor:
    m = torch.as_tensor(m)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != tuple(size):
        raise ValueError(f"{name} must be a [{size[0]}, {size[1]}] feature-grid mask, got {tuple(m.shape)}")
    return m > 0.5 if m.dtype != torch.bool else m


def _flat_index(m: torch.Tensor, device) -> torch.Tensor:
    return torch.nonzero(m.flatten(), as_tuple=False).flatten().to(device)


def _cells(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Feature vectors of ``t [B, C, gh, gw]`` at flat cell indices ``idx`` (any shape) -> ``[B, C, *idx.shape]``."""
    flat = t.flatten(2).index_select(2, idx.reshape(-1).to(t.device))
    return flat.reshape(*t.shape[:2], *idx.shape)


def _region_mean_sim(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, kind: str) -> torch.Tensor:
    """``<sim(a, b)>_m``: per-cell similarity at the cells of ``m``, averaged over cells and batch."""
    idx = _flat_index(m, a.device)
    return similarity(_cells(a, idx), _cells(b, idx), kind).mean()


def _mean_feature_sim(a: torch.Tensor, ma: torch.Tensor, b: torch.Tensor, mb: torch.Tensor, kind: str = "s"):
    """``sim(mean(a[ma]), mean(b[mb]))`` per batch item, averaged over the batch."""
    va = _cells(a, _flat_index(ma, a.device)).mean(2)
    vb = _cells(b, _flat_index(mb, b.device)).mean(2)
    return similarity(va, vb, kind).mean()


def _zero(like: dict) -> torch.Tensor:
    t = next(iter(like.values()))
    return torch.zeros((), device=t.device, dtype=t.dtype)


def _acc(total, term):
    return term if total is None else total + term


def _grid_of(*masks) -> tuple[int, int]:
    for m in masks:
        if m is not None:
            m = torch.as_tensor(m)
            return int(m.shape[-2]), int(m.shape[-1])
    raise ValueError("no mask given to infer the feature grid from")


# ------------------------------------------------------------------------------------------------ content
def content_consistency_energy(F_: FeatureDict, R_: FeatureDict, region, w: float, *, similarity_kind: str = "s",
                               level_weight: float = 1.0) -> torch.Tensor:
    """Keep the features of ``region`` unchanged: ``sum_l level_weight * phi_w(<sim(R^l, F^l)>_region)``.

    ``region`` is a feature-grid mask ``[gh, gw]``. The move task uses ``similarity_kind="cos"`` and
    ``level_weight=0.5``, drag ``"s"`` and ``0.5``, appearance/paste ``"s"`` and ``1``. An empty region gives 0.
    """
    size = _grid_of(region)
    Fg, Rg = _pair(F_, R_, size)
    m = _mask(region, size, "region")
    if not bool(m.any()):
        return _zero(Fg)
    total = None
    for k in Fg:
        total = _acc(total, level_weight * phi(_region_mean_sim(Rg[k], Fg[k], m, similarity_kind), w))
    return total


# --------------------------------------------------------------------------------------------------- move
def move_energy(F_: FeatureDict, R_: FeatureDict, *, m_cur, src_index: torch.Tensor, m_other, m_no, m_ref,
                w_edit: float = _MOVE["w_edit"], w_content: float = _MOVE["w_content"],
                w_contrast: float = _MOVE["w_contrast"], w_inpaint: float = _MOVE["w_inpaint"],
                consistent_cos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Move / resize energies (official ``guidance_move``).

    * ``E_edit = sum_l 1/2 phi_{w_edit}(<cos(F^l[M_cur], R^l_rho[M_tar])>)``: the moved (and resized) object
      should look like the source object. ``src_index[j]`` is the flat feature-grid cell of the source object
      that the ``j``-th cell of ``M_cur`` (raster order) shows, i.e. ``R_rho[M_tar]`` = ``R[src_index]``.
    * ``E_content = sum_l 1/2 phi_{w_content}(<cos(R^l, F^l)>_{M_other})`` (keep the background)
      ``+ sum_l 1/2 w_contrast <s(F^l, R^l)>_{M_no}`` (the vacated region stops looking like the object)
      ``+ sum_l phi_{w_inpaint}(s(mean F^l[M_no], mean R^l[M_ref]))`` (and looks like the reference region).

    As official, the edit and background terms use the raw cosine, contrast and inpaint the mapped ``s``;
    ``consistent_cos=True`` maps every term with ``s`` (the inconsistency is listed in reference §1.13).
    """
    size = _grid_of(m_cur)
    Fg, Rg = _pair(F_, R_, size)
    m_cur, m_other = _mask(m_cur, size, "m_cur"), _mask(m_other, size, "m_other")
    m_no, m_ref = _mask(m_no, size, "m_no"), _mask(m_ref, size, "m_ref")
    src_index = torch.as_tensor(src_index).long().flatten()
    n_cur = int(m_cur.sum())
    if n_cur == 0:
        raise ValueError("m_cur is empty: the moved object covers no feature cell")
    if src_index.numel() != n_cur:
        raise ValueError(f"src_index has {src_index.numel()} cells but m_cur has {n_cur}")
    raw = "s" if consistent_cos else "cos"
    dev = next(iter(Fg.values())).device
    cur_idx, src_idx = _flat_index(m_cur, dev), src_index.to(dev)

    e_edit = None
    for k in Fg:
        sim = similarity(_cells(Fg[k], cur_idx), _cells(Rg[k], src_idx), raw).mean()
        e_edit = _acc(e_edit, 0.5 * phi(sim, w_edit))

    e_con = None
    has_other, has_no, has_ref = bool(m_other.any()), bool(m_no.any()), bool(m_ref.any())
    for k in Fg:
        if has_other and w_content:
            e_con = _acc(e_con, 0.5 * phi(_region_mean_sim(Rg[k], Fg[k], m_other, raw), w_content))
        if has_no and w_contrast:
            e_con = _acc(e_con, 0.5 * w_contrast * _region_mean_sim(Fg[k], Rg[k], m_no, "s"))
        if has_no and has_ref and w_inpaint:
            e_con = _acc(e_con, phi(_mean_feature_sim(Fg[k], m_no, Rg[k], m_ref, "s"), w_inpaint))
    return e_edit, (_zero(Fg) if e_con is None else e_con)


# --------------------------------------------------------------------------------------------------- drag
def drag_energy(F_: FeatureDict, R_: FeatureDict, *, handle_index: torch.Tensor, target_index: torch.Tensor,
                m_other, w_edit: float = _DRAG["w_edit"], w_content: float = _DRAG["w_content"],
                w_inpaint: float = _DRAG["w_inpaint"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Content drag energies (official ``guidance_drag``), ``N`` point pairs, 3x3-cell patches.

    * ``E_edit = 1/(2N) sum_l sum_k [phi_{w_edit}(<s(F^l[P^g_k], R^l[P^h_k])>)
      + w_inpaint <s(F^l, R^l)>_{P^h_k minus P^g_k}]``: the target patch should show what the handle patch
      showed; where the handle patch does not overlap the target, the content should leave (linear repulsion).
    * ``E_content = 1/2 sum_l phi_{w_content}(<s(R^l, F^l)>_{M_other})`` (outside the editable region).

    ``handle_index`` / ``target_index`` are ``[N, P]`` flat feature-grid cell indices (``P = 9`` for the 3x3
    patches); cell ``j`` of the target patch is compared with cell ``j`` of the handle patch.
    ``m_other`` ``[gh, gw]`` defines the feature grid (all False = no content term).
    """
    size = _grid_of(m_other)
    Fg, Rg = _pair(F_, R_, size)
    m_other = _mask(m_other, size, "m_other")
    h_idx, t_idx = torch.as_tensor(handle_index).long(), torch.as_tensor(target_index).long()
    if h_idx.ndim != 2 or h_idx.shape != t_idx.shape or h_idx.shape[0] == 0:
        raise ValueError(f"handle_index and target_index must both be [N, P] with N >= 1, got "
                         f"{tuple(h_idx.shape)} and {tuple(t_idx.shape)}")
    ncell = size[0] * size[1]
    if int(h_idx.min()) < 0 or int(t_idx.min()) < 0 or int(h_idx.max()) >= ncell or int(t_idx.max()) >= ncell:
        raise ValueError(f"patch cell indices must lie in [0, {ncell}) for the {size[0]}x{size[1]} feature grid")
    n = h_idx.shape[0]
    dev = next(iter(Fg.values())).device
    h_idx, t_idx = h_idx.to(dev), t_idx.to(dev)
    # handle cells that are not part of the same pair's target patch: [N, P] weights, mean per pair
    leave = ~(h_idx[:, :, None] == t_idx[:, None, :]).any(-1)
    leave_w = leave.float() / leave.sum(1, keepdim=True).clamp_min(1)

    e_edit = None
    for k in Fg:
        f, r = Fg[k], Rg[k]
        match = similarity(_cells(f, t_idx), _cells(r, h_idx), "s").mean(0).mean(-1)  # [N]
        term = phi(match, w_edit).sum()
        if w_inpaint:
            stay = similarity(_cells(f, h_idx), _cells(r, h_idx), "s").mean(0)  # [N, P]
            term = term + w_inpaint * (stay * leave_w).sum()
        e_edit = _acc(e_edit, term)
    e_edit = e_edit / (2.0 * n)

    if bool(m_other.any()) and w_content:
        e_con = content_consistency_energy(Fg, Rg, m_other, w_content, similarity_kind="s", level_weight=0.5)
    else:
        e_con = _zero(Fg)
    return e_edit, e_con


# ---------------------------------------------------------------------------------------- appearance/paste
def appearance_energy(F_: FeatureDict, R_: FeatureDict, G_: FeatureDict, *, m_b, m_r,
                      w_edit: float = _APP["w_edit"], w_content: float = _APP["w_content"]):
    """Appearance replacement (official ``guidance_appearance``): global, mean-feature matching.

    * ``E_edit = sum_l phi_{w_edit}(s(mean F^l[M_b], mean G^l[M_r]))``: the object in the base image takes
      the *mean* appearance of the reference object (``G`` = features of the inverted reference image).
    * ``E_content = sum_l phi_{w_content}(<s(F^l, R^l)>_{not M_b})``: keep the rest of the base image.
    """
    size = _grid_of(m_b)
    Fg, Rg = _pair(F_, R_, size)
    _, Gg = _pair(F_, G_, size, names=("F", "G"))
    m_b, m_r = _mask(m_b, size, "m_b"), _mask(m_r, size, "m_r")
    if not bool(m_b.any()) or not bool(m_r.any()):
        raise ValueError("appearance masks m_b and m_r must be non-empty")
    e_edit = None
    for k in Fg:
        e_edit = _acc(e_edit, phi(_mean_feature_sim(Fg[k], m_b, Gg[k], m_r, "s"), w_edit))
    e_con = _background(Fg, Rg, m_b, w_content)
    return e_edit, e_con


def paste_energy(F_: FeatureDict, R_: FeatureDict, G_: FeatureDict, *, m_b, m_r,
                 w_edit: float = _PASTE["w_edit"], w_content: float = _PASTE["w_content"]):
    """Object paste (official ``guidance_paste``): per-cell matching (copies structure).

    * ``E_edit = sum_l phi_{w_edit}(<s(F^l[M_b], G^l[M_r])>)``, cells compared in raster order; ``M_r`` is
      ``M_b`` translated back by the paste displacement, so both have the same cell count.
    * ``E_content = sum_l phi_{w_content}(<s(F^l, R^l)>_{not M_b})``.
    """
    size = _grid_of(m_b)
    Fg, Rg = _pair(F_, R_, size)
    _, Gg = _pair(F_, G_, size, names=("F", "G"))
    m_b, m_r = _mask(m_b, size, "m_b"), _mask(m_r, size, "m_r")
    nb, nr = int(m_b.sum()), int(m_r.sum())
    if nb == 0 or nb != nr:
        raise ValueError(f"paste masks must be non-empty translates of each other: m_b has {nb} cells, m_r {nr}")
    dev = next(iter(Fg.values())).device
    ib, ir = _flat_index(m_b, dev), _flat_index(m_r, dev)
    e_edit = None
    for k in Fg:
        e_edit = _acc(e_edit, phi(similarity(_cells(Fg[k], ib), _cells(Gg[k], ir), "s").mean(), w_edit))
    return e_edit, _background(Fg, Rg, m_b, w_content)


def _background(Fg, Rg, m_b, w_content):
    outside = ~m_b
    if not bool(outside.any()) or not w_content:
        return _zero(Fg)
    e = None
    for k in Fg:
        e = _acc(e, phi(_region_mean_sim(Fg[k], Rg[k], outside, "s"), w_content))
    return e
