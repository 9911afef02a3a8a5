"""ComfyUI host adapter: the engine's :class:`~..samplers.hooks.EditHooks` on a ComfyUI ``MODEL``.

Only official ComfyUI mechanisms are used, always on *copies* of ``model_options`` (the user's MODEL is never
patched or mutated):

* decoder self-attention K,V: ``attn1`` replace patches (``set_model_options_patch_replace``) on every
  transformer block of the UNet's output blocks; the patch projects nothing itself (ComfyUI passes projected
  q, k, v), sends k, v through ``hooks.self_attention_kv`` and runs ``optimized_attention`` (or a replace patch
  the user already had on that block) on the result;
* decoder features: an ``output_block_patch`` sees ``h`` entering output block ``n``, i.e. the output of the
  previous decoder block; the output of diffusers ``up_blocks[i]`` (after its upsampler) is ``h`` entering the
  first output block of up block ``i + 1``. The last up block's output is not capturable (it would need an
  object patch on the MODEL); asking for it raises a ``ValueError``;
* the sampler: :func:`make_sampler` wraps an engine sampling function into a ``comfy.samplers.KSAMPLER``;
  inside, :class:`ComfyHost` gives the engine conditional denoising and feature passes through
  ``comfy.samplers.calc_cond_batch`` on the guider's processed positive conditioning.

Block layout (which output block belongs to which diffusers up block, which carry attention and how deep)
is derived from the model's ``unet_config`` (``num_res_blocks``, ``channel_mult``,
``transformer_depth_output``), so SD1.x, SD2.x, SDXL and smaller test UNets share one code path.

Flow transformers (Flux.1, SD3 / SD3.5) are handled by ``comfy_dit.py``: :func:`check_supported` accepts them
(rectified-flow sampling), :func:`make_sampler` builds a ``comfy_dit.ComfyDiTHost`` for them (``host_class``),
:func:`decoder_attention_shapes` gives their block attentions for the bank estimate; the UNet code below is
unchanged for UNets.

Gradients (``ComfyHost.grad_context``) follow the verified recipe: ``inference_mode(False)`` +
``enable_grad``, with the gradient passes run on :func:`autograd_copy` of the model: a structural copy of the
diffusion model whose inference-tensor parameters/buffers (the executor builds weights under
``torch.inference_mode``, and those cannot be saved for backward) are normal clones with identical values. The
user's MODEL, shared with every other branch of the graph, is never modified: its modules, parameters and
buffers stay the same objects with the same values, and the copy is dropped when the gradient pass ends.
"""
from __future__ import annotations

import copy
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.samplers
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..samplers.hooks import COND, EditHooks, EditHost, StopForward, layer_name
from ..samplers.trajectory import tensor_fingerprint

UNET_SUPPORTED = "only SD1.x, SD2.x and SDXL eps-prediction UNet models are supported"
SUPPORTED = ("supported are SD1.x, SD2.x and SDXL eps-prediction UNets and the Flux.1 (dev, schnell, Kontext) and "
             "SD3 / SD3.5 flow transformers")


# --------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class DecoderLayout:
    """Where the diffusers-style decoder structure lives among ComfyUI's ``("output", n)`` blocks.

    * ``up_blocks[i] = (first_output_block, count)``;
    * ``attention[n] = (up_block, attention_index, depth)`` for output blocks with a SpatialTransformer;
    * ``feature_points[n] = level``: ``h`` entering output block ``n`` is the output of up block ``level``.
    """

    up_blocks: tuple[tuple[int, int], ...]
    attention: dict = field(default_factory=dict)
    feature_points: dict = field(default_factory=dict)

    @property
    def num_up_blocks(self) -> int:
        return len(self.up_blocks)

    @property
    def capturable_levels(self) -> tuple[int, ...]:
        return tuple(sorted(self.feature_points.values()))

    def layer_names(self) -> list[str]:
        return [layer_name(u, a, t) for n, (u, a, d) in sorted(self.attention.items()) for t in range(d)]


def decoder_layout(unet_config: dict, diffusion_model: torch.nn.Module | None = None) -> DecoderLayout:
    """The decoder layout from a ComfyUI ``unet_config`` (``model.model.model_config.unet_config``).

    ``transformer_depth_output`` lists depths in *input* order (the UNet pops it from the end); when the
    config lacks it, the depths are read from ``diffusion_model``'s output blocks.
    """
    if "channel_mult" not in unet_config or "num_res_blocks" not in unet_config:
        raise ValueError("the MODEL's unet_config has no channel_mult/num_res_blocks; " + UNET_SUPPORTED)
    mult = list(unet_config["channel_mult"])
    nrb = unet_config["num_res_blocks"]
    nrb = [int(nrb)] * len(mult) if isinstance(nrb, int) else [int(r) for r in nrb]
    if len(nrb) != len(mult):
        raise ValueError(f"unet_config num_res_blocks {nrb} does not match channel_mult {mult}")
    n_out = sum(r + 1 for r in nrb)
    tdo = unet_config.get("transformer_depth_output")
    if tdo is not None:
        tdo = list(tdo)
        if len(tdo) != n_out:
            raise ValueError(f"unet_config transformer_depth_output has {len(tdo)} entries for {n_out} output blocks")
        depth = [int(tdo[-(n + 1)]) for n in range(n_out)]
    elif diffusion_model is not None:
        depth = [_block_depth(b) for b in diffusion_model.output_blocks]
    else:
        raise ValueError("unet_config has no transformer_depth_output and no diffusion model was given")
    nab = unet_config.get("num_attention_blocks")
    ups, attention, feats = [], {}, {}
    n = 0
    for i, level in enumerate(reversed(range(len(mult)))):
        count = nrb[level] + 1
        ups.append((n, count))
        for j in range(count):
            has_attn = depth[n + j] > 0 and (nab is None or j < nab[level])
            if has_attn:
                attention[n + j] = (i, j, depth[n + j])
        n += count
        if i + 1 < len(mult):
            feats[n] = i  # h entering the first block of up block i+1 = output of up block i
    return DecoderLayout(tuple(ups), attention, feats)


def _block_depth(block) -> int:
    for layer in block:
        tb = getattr(layer, "transformer_blocks", None)
        if tb is not None:
            return len(tb)
    return 0


# ---------------------------------------------------------------------------------------- model checks
def _base_model(model):
    """BaseModel from a ModelPatcher (or a BaseModel)."""
    return getattr(model, "model", model) if not hasattr(model, "diffusion_model") else model


def check_supported(model, input_name: str = "model", dit: bool = True) -> None:
    """Raise a ValueError naming ``input_name`` unless ``model`` is an eps-prediction discrete-schedule UNet or
    (with ``dit``, for the editing engine's nodes) a supported flow transformer (``comfy_dit``: Flux.1, SD3)."""
    from . import comfy_dit

    base = _base_model(model)
    dm = getattr(base, "diffusion_model", None)
    ms = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else \
        getattr(base, "model_sampling", None)
    kind = type(base).__name__
    family = comfy_dit.dit_family(base)
    if family is not None:
        if not dit:
            raise ValueError(f"{input_name}: the MODEL is a {comfy_dit.FAMILY_LABELS[family]} transformer; this node "
                             f"works on UNets only ({UNET_SUPPORTED})")
        comfy_dit.check_dit_sampling(model, input_name)
        return
    supported = SUPPORTED if dit else UNET_SUPPORTED
    if not isinstance(dm, UNetModel):
        why = comfy_dit.refusal_reason(base)
        raise ValueError(f"{input_name}: the MODEL is a {kind} with a {type(dm).__name__} backbone"
                         f"{'; ' + why if why else ''}; {supported} (other DiTs such as Qwen-Image, HiDream, "
                         "Chroma, AuraFlow and video models are not)")
    eps = isinstance(ms, comfy.model_sampling.EPS) and not isinstance(
        ms, (comfy.model_sampling.V_PREDICTION, comfy.model_sampling.X0))
    discrete = isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete) and not isinstance(
        ms, (comfy.model_sampling.ModelSamplingDiscreteEDM, comfy.model_sampling.StableCascadeSampling))
    if not (eps and discrete):
        kinds = "/".join(c.__name__ for c in type(ms).__mro__[1:]
                         if c.__module__ == comfy.model_sampling.__name__) or type(ms).__name__
        raise ValueError(f"{input_name}: the MODEL's sampling is {kinds}, not eps prediction on a discrete "
                         f"schedule; {supported} (flow-matching UNets, v-prediction and EDM models are not)")
    if getattr(dm, "num_classes", None) not in (None, "sequential"):
        raise ValueError(f"{input_name}: class-conditional UNets are not supported; {supported}")


def layout_of(model) -> DecoderLayout:
    base = _base_model(model)
    return decoder_layout(base.model_config.unet_config, base.diffusion_model)


def decoder_attention_shapes(model, latent_hw: Sequence[int]) -> list[tuple[str, int, int]]:
    """``(layer, tokens, width)`` of every decoder self-attention (the layers a K,V bank records) for a latent
    of ``latent_hw``: up block ``i`` runs at the resolution of ``L - 1 - i`` stride-2 downsamplings (each
    rounding up, as ComfyUI's padded convolutions do); the width is that layer's ``attn1`` K projection."""
    from . import comfy_dit

    base = _base_model(model)
    if comfy_dit.dit_family(base) is not None:  # the image tokens of every block attention
        return comfy_dit.dit_attention_shapes(base, latent_hw)
    layout = layout_of(base)
    sizes = [tuple(int(s) for s in latent_hw)]
    for _ in range(1, layout.num_up_blocks):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    out = []
    for n, (up, att, depth) in sorted(layout.attention.items()):
        h, w = sizes[layout.num_up_blocks - 1 - up]
        st = next(layer for layer in base.diffusion_model.output_blocks[n] if hasattr(layer, "transformer_blocks"))
        for t in range(depth):
            out.append((layer_name(up, att, t), h * w, int(st.transformer_blocks[t].attn1.to_k.weight.shape[0])))
    return out


# ------------------------------------------------------------------------------------------- identity
def _sample_values(t: torch.Tensor, n: int = 4096) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // n)
    return flat[::step][:n]


def _first_tensors(obj, out: list, limit: int = 2, depth: int = 0):
    if len(out) >= limit or depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _first_tensors(o, out, limit, depth + 1)
    elif hasattr(obj, "weights"):  # comfy.weight_adapter adapters
        _first_tensors(obj.weights, out, limit, depth + 1)


def model_id(model_patcher) -> str:
    """A stable identity string of a MODEL: class, unet config, sampling schedule, a few original weights
    and the weight patches applied on top (keys, strengths and a sample of their values: a LoRA changes it).

    Original weights are read from the patcher's shared backup when a patched clone is currently loaded,
    so the id does not depend on which clone was loaded last.
    """
    base = _base_model(model_patcher)
    h = hashlib.sha1()
    h.update(type(base).__name__.encode())
    ucfg = getattr(base.model_config, "unet_config", {}) or {}
    h.update(repr(sorted((str(k), repr(v)) for k, v in ucfg.items() if k != "dtype")).encode())
    ms = model_patcher.get_model_object("model_sampling") if hasattr(model_patcher, "get_model_object") else \
        base.model_sampling
    h.update(type(ms).__name__.encode())
    if hasattr(ms, "sigmas"):
        h.update(tensor_fingerprint(_sample_values(ms.sigmas, 64)).encode())
    names = [k for k, _ in base.diffusion_model.named_parameters()]
    backup = getattr(model_patcher, "backup", {}) or {}
    probes = sorted({names[0], names[len(names) // 3], names[(2 * len(names)) // 3], names[-1]}) if names else []
    sd = dict(base.diffusion_model.named_parameters())
    for k in probes:
        full = "diffusion_model." + k
        w = backup[full].weight if full in backup else sd[k]
        h.update(k.encode())
        h.update(tensor_fingerprint(_sample_values(w)).encode())
    patches = getattr(model_patcher, "patches", {}) or {}
    keys = sorted(patches)
    sample_keys = set(keys[:: max(1, len(keys) // 8)][:8]) | set(keys[-1:])
    for k in keys:
        h.update(k.encode())
        for p in patches[k]:
            h.update(repr((p[0], p[2] if len(p) > 2 else None, p[3] if len(p) > 3 else None)).encode())
            if k in sample_keys:
                ts: list = []
                _first_tensors(p[1], ts)
                for t in ts:
                    h.update(tensor_fingerprint(_sample_values(t, 256)).encode())
    return f"{type(base).__name__}:{h.hexdigest()[:16]}"


def cond_fingerprint(*conditionings) -> str:
    """Hash of CONDITIONING lists (cross-attention tensors, pooled outputs and other tensor/scalar options)."""
    h = hashlib.sha1()
    for cond in conditionings:
        if cond is None:
            h.update(b"none")
            continue
        for item in cond:
            t, opts = item[0], item[1] if len(item) > 1 else {}
            h.update(tensor_fingerprint(t).encode())
            for k in sorted(opts):
                v = opts[k]
                if isinstance(v, torch.Tensor):
                    h.update(k.encode() + tensor_fingerprint(v).encode())
                elif isinstance(v, (int, float, str, bool, type(None))):
                    h.update(f"{k}={v!r}".encode())
        h.update(b"|")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------- hook patches
class _Attn1Hook:
    """attn1 replace patch of one transformer block: K,V through the hooks, then the attention core."""

    def __init__(self, hooks: EditHooks, layer: str, previous: Callable | None):
        self.hooks, self.layer, self.previous = hooks, layer, previous

    def __call__(self, q, k, v, extra_options):
        comfy.model_management.throw_exception_if_processing_interrupted()  # also inside a (huge) model call
        shape = extra_options.get("activations_shape")
        hw = (int(shape[-2]), int(shape[-1])) if shape is not None else _square_hw(q.shape[1])
        k, v = self.hooks.self_attention_kv(self.layer, k, v, hw, extra_options.get("cond_or_uncond"))
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                   attn_precision=extra_options.get("attn_precision"),
                                                   transformer_options=extra_options)

    def __deepcopy__(self, memo):  # model_options get deep-copied by clones; the hooks are shared state
        return self


class _FeatureHook:
    """output_block_patch: hands decoder-level outputs to the hooks and truncates the forward pass."""

    def __init__(self, hooks: EditHooks, feature_points: dict):
        self.hooks, self.points = hooks, dict(feature_points)

    def __call__(self, h, hsp, transformer_options):
        comfy.model_management.throw_exception_if_processing_interrupted()
        blk = transformer_options.get("block")
        if blk is not None and blk[0] == "output":
            level = self.points.get(blk[1])
            if level is not None and level in self.hooks.capture_levels:
                self.hooks.feature(level, _cond_chunk(h, transformer_options.get("cond_or_uncond")))
                if self.hooks.wants_stop():
                    raise StopForward()
        return h, hsp

    def __deepcopy__(self, memo):
        return self


def _square_hw(n: int) -> tuple[int, int]:
    s = int(round(n ** 0.5))
    return (s, n // s) if s * (n // s) == n else (1, n)


def _cond_chunk(h: torch.Tensor, branches) -> torch.Tensor:
    """The first conditional chunk of a cond/uncond batch (all of ``h`` when there is one chunk)."""
    if not branches or len(branches) == 1:
        return h
    size = h.shape[0] // len(branches)
    i = next((j for j, b in enumerate(branches) if b == COND), 0)
    return h[i * size:(i + 1) * size]


def install_hooks(model_options: dict, hooks: EditHooks, unet_config) -> dict:
    """A *new* ``model_options`` dict with the engine hooks installed (the given one is not modified).

    ``unet_config``: the model's ``unet_config`` dict, or a :class:`DecoderLayout`. A replace patch that
    ``model_options`` already has on a decoder attn1 (another node's) is kept and called with the hooked K,V.
    """
    layout = unet_config if isinstance(unet_config, DecoderLayout) else decoder_layout(unet_config)
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    mo["transformer_options"] = to
    existing = to.get("patches_replace", {}).get("attn1", {})
    for n, (up, att, depth) in sorted(layout.attention.items()):
        for t in range(depth):
            prev = existing.get(("output", n, t), existing.get(("output", n)))
            comfy.model_patcher.set_model_options_patch_replace(
                mo, _Attn1Hook(hooks, layer_name(up, att, t), prev), "attn1", "output", n, transformer_index=t)
    if layout.feature_points:
        to = dict(mo["transformer_options"])
        patches = dict(to.get("patches", {}))
        patches["output_block_patch"] = list(patches.get("output_block_patch", [])) + \
            [_FeatureHook(hooks, layout.feature_points)]
        to["patches"] = patches
        mo["transformer_options"] = to
    return mo


# ---------------------------------------------------------------------------------------------- host
def _plain(t):
    """A normal (non-inference) tensor with the same values; call outside inference mode."""
    if isinstance(t, torch.Tensor) and t.is_inference():
        return t.clone()
    return t


def _has_inference_tensors(module: torch.nn.Module) -> bool:
    return any(t.is_inference() for t in module.parameters()) or any(t.is_inference() for t in module.buffers())


def _plain_module_copy(m: torch.nn.Module, memo: dict) -> torch.nn.Module:
    """A shallow copy of ``m`` (and of every submodule) with new parameter/buffer/submodule dicts; inference
    tensors are replaced by normal clones, everything else (other tensors, patch functions, the ComfyUI cast
    and weight-function state) is shared read-only. ``m`` itself is not touched."""
    if id(m) in memo:
        return memo[id(m)]
    c = copy.copy(m)
    memo[id(m)] = c
    c.__dict__["_parameters"] = {
        n: (torch.nn.Parameter(p.detach().clone(), requires_grad=False) if p is not None and p.is_inference()
            else p) for n, p in m._parameters.items()}
    c.__dict__["_buffers"] = {n: (b.clone() if b is not None and b.is_inference() else b)
                              for n, b in m._buffers.items()}
    c.__dict__["_modules"] = {n: (None if sub is None else _plain_module_copy(sub, memo))
                              for n, sub in m._modules.items()}
    return c


def autograd_copy(base_model):
    """``base_model`` (a ComfyUI ``BaseModel``) ready for backprop, without modifying it.

    Weights loaded by the executor are inference tensors, which autograd cannot save for backward. The
    result is a copy of ``base_model`` whose ``diffusion_model`` is a structural copy with those tensors cloned
    (same values, ``requires_grad=False``: gradients are only taken w.r.t. latents); the rest (model sampling,
    patcher, options) is shared. Call outside inference mode. Costs one transient copy of the UNet weights,
    freed with the result; returns ``base_model`` itself when nothing needs cloning (e.g. a model built outside
    inference mode).
    """
    dm = base_model.diffusion_model
    if not _has_inference_tensors(dm):
        return base_model
    if torch.is_inference_mode_enabled():
        raise RuntimeError("autograd_copy must be called outside torch.inference_mode")
    b = copy.copy(base_model)
    modules = dict(base_model._modules)
    modules["diffusion_model"] = _plain_module_copy(dm, {})
    b.__dict__["_modules"] = modules
    return b


def _find_guider(model):
    """The CFGGuider behind a k-diffusion denoiser (KSamplerX0Inpaint or a wrapper exposing inner_model)."""
    g = getattr(model, "inner_model", None)
    if g is None or not hasattr(g, "inner_model"):
        raise ValueError("the DiffEditor sampler must run inside a ComfyUI sampler node (SamplerCustom, "
                         "SamplerCustomAdvanced, KSampler...); no guider found")
    return g


class ComfyHost(EditHost):
    """The editing engine's view of a ComfyUI model inside a sampler function.

    ``model``: the k-diffusion denoiser the sampler function received; ``extra_args``: its extra_args
    (``model_options`` of that call). The hooks are installed into a copy, available as
    ``self.model_options``; pass that on to ``model(x, sigma, **extra_args)`` so CFG calls are hooked too.
    """

    def __init__(self, model, extra_args: dict | None, hooks: EditHooks | None = None, input_name: str = "model"):
        self.guider = _find_guider(model)
        self.base = self.guider.inner_model
        patcher = getattr(self.guider, "model_patcher", None)
        check_supported(patcher if patcher is not None else self.base, input_name)
        self.patcher = patcher
        self.hooks = hooks if hooks is not None else EditHooks()
        extra_args = {} if extra_args is None else extra_args
        self._install(extra_args.get("model_options", {}))
        self._active = self.base  # the model the engine's own passes run on (a copy inside grad_context)
        self._model_id = None

    def _install(self, model_options: dict) -> None:
        """The layout and the hooked copy of ``model_options`` (the DiT host overrides this)."""
        self.layout = layout_of(self.base)
        self.num_up_blocks = self.layout.num_up_blocks
        self.model_options = install_hooks(model_options, self.hooks, self.layout)

    # -- identity --------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = model_id(self.patcher if self.patcher is not None else self.base)
        return self._model_id

    def positive(self):
        conds = getattr(self.guider, "conds", None) or {}
        if conds.get("positive") is None:
            raise ValueError("the guider has no positive conditioning; DiffEditor needs a guider with a "
                             "positive prompt (CFGGuider, BasicGuider, DualCFGGuider)")
        return conds["positive"]

    def _sigma(self, sigma, x):
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s.reshape(-1)
        if not torch.is_inference_mode_enabled():
            s = _plain(s)
        return s

    # -- EditHost ----------------------------------------------------------------------------------------
    def denoise_cond(self, x, sigma):
        self.check_interrupt()
        s = self._sigma(sigma, x)
        return comfy.samplers.calc_cond_batch(self._active, [self.positive()], x, s, self.model_options)[0]

    def _level_error(self, bad: list) -> str:
        """The message for feature levels this MODEL cannot give (the DiT host names its blocks)."""
        return (f"feature levels {bad} cannot be captured on this MODEL: capturable decoder levels are "
                f"{list(self.layout.capturable_levels)} (the last up block's output is not exposed)")

    def features(self, x, sigma, levels: Sequence[int]):
        levels = tuple(int(l) for l in levels)
        bad = [l for l in levels if l not in self.layout.capturable_levels]
        if bad:
            raise ValueError(self._level_error(bad))
        self.check_interrupt()
        s = self._sigma(sigma, x)
        with self.hooks.capturing(levels) as feats:
            try:
                comfy.samplers.calc_cond_batch(self._active, [self.positive()], x, s, self.model_options)
            except StopForward:
                pass
            missing = [l for l in levels if l not in feats]
            if missing:
                raise ValueError(f"feature levels {missing} were not produced by the forward pass (a block "
                                 "replacement of another node skipped those blocks?)")
            return dict(feats)

    @contextmanager
    def grad_context(self):
        """Gradients through :meth:`denoise_cond` / :meth:`features`: they run on :func:`autograd_copy` of the
        model for the duration of the block (the MODEL's own weights are never replaced)."""
        with torch.inference_mode(False), torch.enable_grad():
            outer = self._active
            if outer is self.base:
                self._active = autograd_copy(self.base)
            try:
                yield
            finally:
                self._active = outer

    def check_interrupt(self):
        comfy.model_management.throw_exception_if_processing_interrupted()


def host_class(model) -> type:
    """:class:`ComfyHost` for a UNet, ``comfy_dit.ComfyDiTHost`` for a supported DiT (``model``: the
    k-diffusion denoiser a sampler function receives, or a ModelPatcher / BaseModel)."""
    from . import comfy_dit

    g = getattr(model, "inner_model", None)
    base = g.inner_model if g is not None and hasattr(g, "inner_model") else _base_model(model)
    return comfy_dit.ComfyDiTHost if comfy_dit.dit_family(base) is not None else ComfyHost


class _Interruptible:
    """The k-diffusion denoiser the engine calls, checking for a user interrupt before every model call (the
    engine's own loops check once per step; exact inversion, guidance and time travel make several calls)."""

    def __init__(self, model):
        self._model = model

    def __call__(self, *args, **kwargs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def make_sampler(engine_fn: Callable, *, hooks: EditHooks | None = None, with_model_id: bool = False,
                 input_name: str = "model", **options) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running ``engine_fn(model, x, sigmas, extra_args=, callback=, disable=, hooks=,
    host=, **options)`` (k-diffusion convention, returns the final latent).

    Per run: a fresh :class:`EditHooks` (unless ``hooks`` is given), the hooks installed into a copy of
    ``extra_args["model_options"]``, a :class:`ComfyHost`; the engine runs under ``torch.no_grad()`` (the
    k-diffusion convention; ``host.grad_context()`` re-enables gradients) but outside inference mode, with
    its input tensors as normal tensors, so gradient passes work. ``with_model_id`` also passes
    ``model_id=host.model_id``.
    """

    def sampler_fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
        h = hooks if hooks is not None else EditHooks()
        with torch.inference_mode(False), torch.no_grad():
            args = dict(extra_args or {})
            x, sigmas = _plain(x), _plain(sigmas)
            if args.get("denoise_mask") is not None:
                args["denoise_mask"] = _plain(args["denoise_mask"])
            host = host_class(model)(model, args, h, input_name=input_name)
            args["model_options"] = host.model_options
            opts = dict(options)
            opts.update(kw)
            if with_model_id:
                opts["model_id"] = host.model_id
            return engine_fn(_Interruptible(model), x, sigmas, extra_args=args, callback=callback, disable=disable,
                             hooks=h, host=host, **opts)

    return comfy.samplers.KSAMPLER(sampler_fn)


# ----------------------------------------------------------------------------------- trajectory anchor
class _AnchoredGuider:
    """A guider proxy whose calls follow a :class:`~..samplers.blend.TrajectoryAnchor` outside its mask."""

    def __init__(self, guider, anchor):
        self._guider = guider
        self._fn = anchor.wrap_model(guider)

    def __call__(self, x, sigma, **kwargs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return self._fn(x, sigma, **kwargs)

    def __getattr__(self, name):
        return getattr(self._guider, name)


class AnchoredSampler(comfy.samplers.Sampler):
    """Wrap any ComfyUI SAMPLER so the latent outside a mask follows an inverted trajectory.

    The wrapped sampler sees a guider proxy: on the trajectory's sigmas the model input is pinned outside
    the mask and the x0 estimate there is the one landing the step on the trajectory (engine
    ``TrajectoryAnchor.wrap_model``).
    """

    def __init__(self, inner: comfy.samplers.Sampler, anchor, name: str = "trajectory"):
        self.inner, self.anchor, self.name = inner, anchor, name

    def max_denoise(self, model_wrap, sigmas):
        return self.inner.max_denoise(model_wrap, sigmas)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        patcher = getattr(model_wrap, "model_patcher", None)
        if patcher is not None:
            check_supported(patcher, "model")
        self.anchor.trajectory.check_compatible(
            model_id=model_id(patcher) if patcher is not None else None, sigmas=sigmas, shape=tuple(noise.shape),
            name=self.name)
        return self.inner.sample(_AnchoredGuider(model_wrap, self.anchor), sigmas, extra_args, callback, noise,
                                 latent_image, denoise_mask, disable_pbar)
