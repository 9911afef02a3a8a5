"""ComfyUI host adapter for flow transformers (DiTs): Flux.1 (dev, schnell, Kontext) and SD3 / SD3.5 (MMDiT).

The engine's :class:`~..samplers.hooks.EditHooks` on a DiT ``MODEL``, through official ComfyUI mechanisms only,
always installed into a *copy* of ``model_options`` (the user's MODEL is never patched or mutated):

* **token grid** (an ``APPLY_MODEL`` wrapper, ``comfy.patcher_extension.WrappersMP``): per model call it reads
  the latent's spatial size (and Flux Kontext's reference latents) and passes a copy of ``transformer_options``
  on with the token grid ``(h/p, w/p)`` and the number of image / reference tokens under :data:`GRID_KEY`;
* **block hooks** (``patches_replace["dit"][("double_block", i)]`` / ``[("single_block", i)]``, the block
  replacement ComfyUI's Flux and MMDiT call, as core ``nodes_slg.py`` uses it): each wraps the block (or a
  replacement another pack already installed for it, which is still called) and hands the block a copy of
  ``transformer_options`` naming the layer and the text token count (:data:`BLOCK_KEY`) with an attention
  override; after the block, the image tokens of its output on the token grid are the feature of its level
  (global block index: double/joint blocks, then single blocks), and the pass stops (``StopForward``) once every
  requested level is captured;
* **K,V** (``transformer_options["optimized_attention_override"]``, called by every ``optimized_attention`` that
  forwards ``transformer_options``): Flux's ``math.attention`` applies RoPE and passes q, k, v as
  ``[B, H, N, D]`` (``skip_reshape``); SD3's ``_block_mixing`` passes the joint q, k as ``[B, N, H*D]`` after
  the q/k norms and v as ``[B, N, H, D]`` (v0.3.64 forwards ``transformer_options`` there). The override cuts
  the image tokens' K, V out of the joint sequence (Flux and SD3: text first, then image, then Kontext
  reference tokens), sends them through ``hooks.self_attention_kv(layer, k, v, token_hw, cond_or_uncond)``
  heads merged (``[B, N_img, H*D]``) and re-joins the result in the model's order before calling the attention
  core (or the override that was there before, which is still called); an attention mask gets neutral columns
  for a changed key count. Queries are untouched. Only the call whose token count is the block's joint
  sequence is hooked (SD3.5's extra image-only ``attn2`` passes through). The override is stateless: the layer
  and the hooks' step / record / inject state at the time the block ran come with the ``transformer_options``
  copy the block received, so ``torch.utils.checkpoint`` recomputation during backward (MMDiT blocks under a
  replacement run checkpointed) sees what the forward pass saw;
* **gradients**: the energy-guidance passes run on ``comfy_adapter.autograd_copy`` as for UNets. ComfyUI's Flux
  blocks add into their inputs in place after a LayerNorm saved them, which autograd refuses; inside Flux
  blocks, while gradients are recorded, ``torch.autograd.graph.saved_tensors_hooks`` saves copies of the
  activations (weights are saved as they are). Checked against a finite difference in the host tests.

Why not the alternatives: ``patches_replace["dit"]`` alone gives a block's inputs and outputs but not its K,V,
and computing attention ourselves from the block's modules would duplicate ComfyUI's block code; the override
reaches the post-norm (post-RoPE for Flux) K,V of both families in ComfyUI 0.3.64 without copying any of it.

No class is swapped and no module is monkeypatched: the hooks live only in the options of the engine's calls.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension

from ..samplers.dit import block_name, default_dit_levels, double_name, single_name
from ..samplers.hooks import EditHooks, StopForward
from .comfy_adapter import ComfyHost, _cond_chunk

#: transformer_options key of the per-call token grid (set by the APPLY_MODEL wrapper)
GRID_KEY = "diffeditor_dit_grid"
#: transformer_options key of the per-block state (set by the block hook in the copy the block receives)
BLOCK_KEY = "diffeditor_dit_block"
WRAPPER_KEY = "diffeditor"

FAMILY_LABELS = {"flux": "Flux.1 (dev, schnell, Kontext)", "sd3": "SD3 / SD3.5 (MMDiT)"}
SUPPORTED_DIT = "the Flux.1 (dev, schnell, Kontext) and SD3 / SD3.5 flow transformers"

# Recognised but refused, with the reason (diffusion-model class name -> why)
_REFUSED = {
    "QwenImageTransformer2DModel": "Qwen-Image is not supported yet (its latents are 5-D video-format latents "
                                   "[B, C, 1, H, W], which the editing engine does not take; its 'dit' block hook "
                                   "and attention would allow the same hooks as Flux)",
    "HiDreamImageTransformer2DModel": "HiDream has no 'dit' block hook in this ComfyUI version",
    "Chroma": "Chroma is not supported yet (its modulation differs from Flux's; not validated)",
    "ChromaRadiance": "Chroma Radiance is not supported (a pixel-space model)",
}


# --------------------------------------------------------------------------------------------- family
def _flux_cls():
    import comfy.ldm.flux.model
    return comfy.ldm.flux.model.Flux


def _mmdit_cls():
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    return MMDiT


def _base(model):
    return getattr(model, "model", model) if not hasattr(model, "diffusion_model") else model


def dit_family(model) -> str | None:
    """``"flux"``, ``"sd3"`` or ``None`` (not a supported DiT) from a ModelPatcher or BaseModel."""
    dm = getattr(_base(model), "diffusion_model", None)
    if dm is None:
        return None
    if type(dm) is _flux_cls():  # exactly Flux: Chroma & co. have their own classes
        return "flux"
    if isinstance(dm, _mmdit_cls()):
        return "sd3"
    return None


def refusal_reason(model) -> str | None:
    """Why a known non-UNet, non-supported backbone is refused (``None`` when there is no specific reason)."""
    dm = getattr(_base(model), "diffusion_model", None)
    name = type(dm).__name__
    if name in _REFUSED:
        return _REFUSED[name]
    mod = type(dm).__module__
    if any(v in mod for v in ("wan", "hunyuan_video", "lightricks", "mochi", "cosmos", "genmo")):
        return f"{name} is a video model; video models are not supported"
    return None


def check_dit_sampling(model, input_name: str = "model") -> None:
    """A DiT must sample as rectified flow (ComfyUI ``CONST``)."""
    base = _base(model)
    ms = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else \
        getattr(base, "model_sampling", None)
    if not isinstance(ms, comfy.model_sampling.CONST):
        kinds = "/".join(c.__name__ for c in type(ms).__mro__[1:]
                         if c.__module__ == comfy.model_sampling.__name__) or type(ms).__name__
        raise ValueError(f"{input_name}: the MODEL is a {FAMILY_LABELS[dit_family(base)]} transformer but samples "
                         f"as {kinds}, not rectified flow (CONST); remove the sampling override (e.g. a "
                         "ModelSamplingDiscrete node) or use ModelSamplingFlux / ModelSamplingSD3")


def is_guidance_distilled(model) -> bool:
    """True for guidance-distilled models that sample at cfg 1: every Flux.1 transformer (dev and Kontext carry
    a guidance embedding set by FluxGuidance; schnell is step-distilled)."""
    return dit_family(model) == "flux"


def check_distilled_cfg(model, cfg, input_name: str = "cfg") -> None:
    """Refuse classifier-free guidance above 1 on a guidance-distilled MODEL (a ValueError naming ``input_name``)."""
    try:
        c = float(cfg)
    except (TypeError, ValueError):
        return
    if c > 1.0 + 1e-6 and is_guidance_distilled(model):
        emb = bool(getattr(getattr(_base(model).diffusion_model, "params", None), "guidance_embed", False))
        how = ("set the guidance value with a FluxGuidance node on the conditioning instead" if emb else
               "this model (schnell) has no guidance input at all")
        raise ValueError(f"{input_name}: {c:g} on a guidance-distilled Flux model; set cfg 1 ({how}). "
                         "Classifier-free guidance above 1 doubles every model call and breaks a distilled "
                         "model's output")


# --------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class DiTLayout:
    """Block structure of a DiT: ``n_double`` double/joint blocks, then ``n_single`` single blocks."""

    family: str
    n_double: int
    n_single: int
    patch_size: int
    hidden: int
    heads: int

    @property
    def num_levels(self) -> int:
        return self.n_double + self.n_single

    @property
    def capturable_levels(self) -> tuple[int, ...]:
        return tuple(range(self.num_levels))

    def layer_names(self) -> list[str]:
        return [block_name(l, self.n_double) for l in range(self.num_levels)]

    def default_levels(self) -> tuple[int, ...]:
        return default_dit_levels(self.n_double, self.n_single)

    def grid(self, hw: Sequence[int]) -> tuple[int, int]:
        """The token grid of a latent of spatial size ``hw`` (padded up to the patch size, as both models do)."""
        p = self.patch_size
        return (int(hw[0]) + p - 1) // p, (int(hw[-1]) + p - 1) // p


def dit_layout(model) -> DiTLayout:
    dm = _base(model).diffusion_model
    fam = dit_family(model)
    if fam == "flux":
        return DiTLayout("flux", len(dm.double_blocks), len(dm.single_blocks), int(dm.patch_size),
                         int(dm.hidden_size), int(dm.num_heads))
    if fam == "sd3":
        return DiTLayout("sd3", len(dm.joint_blocks), 0, int(dm.patch_size), int(dm.hidden_size),
                         int(dm.num_heads))
    raise ValueError(f"not a supported DiT: {type(dm).__name__}")


def dit_attention_shapes(model, latent_hw: Sequence[int]) -> list[tuple[str, int, int]]:
    """``(layer, image tokens, width)`` of every block attention a K,V bank records for a latent of
    ``latent_hw`` (the image tokens only, heads merged: ``width`` = the hidden size)."""
    lay = dit_layout(model)
    h, w = lay.grid(latent_hw)
    return [(name, h * w, lay.hidden) for name in lay.layer_names()]


# --------------------------------------------------------------------------------------------- hooks
class _GridWrapper:
    """APPLY_MODEL wrapper: the token grid of this call into a copy of ``transformer_options``."""

    def __init__(self, patch_size: int):
        self.p = int(patch_size)

    def _tokens(self, t) -> tuple[int, int]:
        p = self.p
        return (int(t.shape[-2]) + p - 1) // p, (int(t.shape[-1]) + p - 1) // p

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        to = dict(transformer_options or {})
        grid = self._tokens(x)
        refs = kwargs.get("ref_latents") or []
        n_ref = sum(a * b for a, b in (self._tokens(r) for r in refs))
        to[GRID_KEY] = {"grid": grid, "n_img": grid[0] * grid[1], "n_ref": n_ref}
        return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)

    def __deepcopy__(self, memo):
        return self


def _img_part(k: torch.Tensor, n_txt: int, n_img: int, heads_first: bool) -> torch.Tensor:
    """The image tokens of a joint K or V, heads merged: ``[B, n_img, H*D]``."""
    if heads_first:  # [B, H, N, D]
        b, h, _, d = k.shape
        return k[:, :, n_txt:n_txt + n_img].permute(0, 2, 1, 3).reshape(b, n_img, h * d)
    t = k[:, n_txt:n_txt + n_img]  # [B, N, H*D] (SD3's q, k) or [B, N, H, D] (SD3's v)
    return t if t.ndim == 3 else t.reshape(t.shape[0], t.shape[1], -1)


def _rejoin(full: torch.Tensor, img: torch.Tensor, n_txt: int, n_img: int, heads_first: bool) -> torch.Tensor:
    if heads_first:
        b, h, _, d = full.shape
        img = img.reshape(b, img.shape[1], h, d).permute(0, 2, 1, 3)
        return torch.cat([full[:, :, :n_txt], img.to(full.dtype), full[:, :, n_txt + n_img:]], dim=2)
    img = img.reshape(img.shape[0], img.shape[1], *full.shape[2:])
    return torch.cat([full[:, :n_txt], img.to(full.dtype), full[:, n_txt + n_img:]], dim=1)


def _rejoin_mask(mask, n_txt: int, n_img: int, m: int):
    """An attention mask's key columns for ``m`` new image keys (the text/reference columns kept; the new image
    columns neutral: attended)."""
    if mask is None or m == n_img:
        return mask
    fill = torch.ones if mask.dtype == torch.bool else torch.zeros
    new = fill((*mask.shape[:-1], m), dtype=mask.dtype, device=mask.device)
    return torch.cat([mask[..., :n_txt], new, mask[..., n_txt + n_img:]], dim=-1)


class _KVOverride:
    """``optimized_attention_override`` of one block: the image K,V through the hooks, then the previous override
    (another pack's) or the attention core."""

    def __init__(self, hooks: EditHooks, previous=None):
        self.hooks, self.previous = hooks, previous

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        blk = to.get(BLOCK_KEY)
        args = list(args)
        if blk is not None and blk[3]["enabled"] and len(args) >= 3:
            layer, n_txt, info, state = blk
            k, v = args[1], args[2]
            heads_first = bool(kwargs.get("skip_reshape", False))
            n = k.shape[2] if heads_first else k.shape[1]
            n_img = info["n_img"]
            if n == n_txt + n_img + info["n_ref"]:  # the block's joint attention (not SD3.5's image-only attn2)
                k_img, v_img = _img_part(k, n_txt, n_img, heads_first), _img_part(v, n_txt, n_img, heads_first)
                with self.hooks.using(**state):  # the hooks' state when the block ran (see _BlockHook)
                    k2, v2 = self.hooks.self_attention_kv(layer, k_img, v_img, info["grid"],
                                                          to.get("cond_or_uncond"))
                if k2 is not k_img or v2 is not v_img:
                    args[1] = _rejoin(k, k2, n_txt, n_img, heads_first)
                    args[2] = _rejoin(v, v2, n_txt, n_img, heads_first)
                    if kwargs.get("mask") is not None:
                        kwargs["mask"] = _rejoin_mask(kwargs["mask"], n_txt, n_img, k2.shape[1])
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self


def _pack_copy(t: torch.Tensor):
    return t.clone() if t.requires_grad else t


def _unpack(t):
    return t


@contextmanager
def _saved_copies(on: bool):
    """Gradients through Flux blocks: ComfyUI's Flux blocks add into their inputs in place (``txt += ...``,
    ``x += ...``) after a LayerNorm saved them for backward, which autograd refuses. Under
    ``torch.autograd.graph.saved_tensors_hooks`` the activations autograd saves inside the block are copies
    (weights and other tensors without gradient are saved as they are), so the in-place update no longer
    invalidates them. Only while gradients are recorded; a no-op otherwise."""
    if not (on and torch.is_grad_enabled()):
        yield
        return
    with torch.autograd.graph.saved_tensors_hooks(_pack_copy, _unpack):
        yield


class _BlockHook:
    """``patches_replace["dit"][(kind, i)]``: per-block K,V state for the attention override, then the block's
    image-token output as the feature of its level."""

    def __init__(self, hooks: EditHooks, layout: DiTLayout, kind: str, index: int, previous=None):
        self.hooks, self.layout, self.kind, self.index, self.previous = hooks, layout, kind, int(index), previous
        self.double = kind == "double_block"
        self.layer = double_name(index) if self.double else single_name(index)
        self.level = int(index) if self.double else layout.n_double + int(index)

    def _n_txt(self, args: dict, info: dict) -> int:
        if self.double:
            txt = args.get("txt")
            return 0 if txt is None else int(txt.shape[1])
        return int(args["img"].shape[1]) - info["n_img"] - info["n_ref"]

    def __call__(self, args: dict, extra: dict):
        comfy.model_management.throw_exception_if_processing_interrupted()
        original = extra["original_block"]
        info = (args.get("transformer_options") or {}).get(GRID_KEY)
        if info is None:  # called outside a model call the wrapper saw (should not happen): pass through
            return self.previous(args, extra) if self.previous is not None else original(args)
        hooks, layer = self.hooks, self.layer

        # the K,V state of this block call travels with its options: MMDiT blocks under a replacement run under
        # torch.utils.checkpoint and are recomputed during backward, when the engine's state may have moved on
        state = {"step": hooks.step, "record": hooks.record, "inject": hooks.inject, "enabled": hooks.enabled}

        def inner(a):
            to = dict(a.get("transformer_options") or {})
            to[BLOCK_KEY] = (layer, self._n_txt(a, info), info, state)
            prev = to.get("optimized_attention_override")
            to["optimized_attention_override"] = _KVOverride(hooks, prev)
            a = dict(a)
            a["transformer_options"] = to
            return original(a)

        with _saved_copies(self.layout.family == "flux"):
            out = self.previous(args, {"original_block": inner}) if self.previous is not None else inner(args)
        if self.level in hooks.capture_levels:
            img = out["img"]
            n_img = info["n_img"]
            start = 0 if self.double else self._n_txt(args, info)
            tok = img[:, start:start + n_img]
            h, w = info["grid"]
            # clone: Flux's single blocks add into their input in place, which would change a stored view
            feat = tok.reshape(tok.shape[0], h, w, tok.shape[-1]).permute(0, 3, 1, 2).clone()
            hooks.feature(self.level, _cond_chunk(feat, (args.get("transformer_options") or {}).get("cond_or_uncond")))
            if hooks.wants_stop():
                raise StopForward()
        return out

    def __deepcopy__(self, memo):
        return self


def install_dit_hooks(model_options: dict, hooks: EditHooks, layout: DiTLayout) -> dict:
    """A *new* ``model_options`` with the DiT hooks (the given dict and its nested dicts are not modified).

    A ``dit`` replacement already there for a block (another pack's) is kept: the hook calls it with a wrapped
    ``original_block``; an ``optimized_attention_override`` already there is called by the hook's override."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    mo["transformer_options"] = to
    existing = dict((to.get("patches_replace") or {}).get("dit", {}))
    blocks = [("double_block", i) for i in range(layout.n_double)] + \
        [("single_block", i) for i in range(layout.n_single)]
    for kind, i in blocks:
        comfy.model_patcher.set_model_options_patch_replace(
            mo, _BlockHook(hooks, layout, kind, i, existing.get((kind, i))), "dit", kind, i)
    to = dict(mo["transformer_options"])
    wrappers = {k: dict(v) for k, v in (to.get("wrappers") or {}).items()}
    am = wrappers.setdefault(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
    am[WRAPPER_KEY] = list(am.get(WRAPPER_KEY, [])) + [_GridWrapper(layout.patch_size)]
    to["wrappers"] = wrappers
    mo["transformer_options"] = to
    return mo


# ---------------------------------------------------------------------------------------------- host
class ComfyDiTHost(ComfyHost):
    """:class:`~.comfy_adapter.ComfyHost` on a DiT: flow parameterisation, block layout, DiT hooks, block levels
    (``make_sampler`` picks it by the MODEL's family)."""

    param = "flow"

    def _install(self, model_options: dict) -> None:
        self.layout = dit_layout(self.base)
        self.num_up_blocks = 0
        self.model_options = install_dit_hooks(model_options, self.hooks, self.layout)
        cfg = getattr(self.guider, "cfg", None)
        if cfg is not None:
            check_distilled_cfg(self.patcher if self.patcher is not None else self.base, cfg)

    def default_levels(self) -> tuple[int, ...]:
        return self.layout.default_levels()

    def _level_error(self, bad: list) -> str:
        return (f"feature levels {bad} do not exist on this {FAMILY_LABELS[self.layout.family]} MODEL: its block "
                f"levels are 0..{self.layout.num_levels - 1} ({self.layout.n_double} double/joint blocks, then "
                f"{self.layout.n_single} single blocks)")
