"""diffusers host adapter for flow transformers: ``FluxTransformer2DModel`` and ``SD3Transformer2DModel``.

The DiT counterpart of ``diffusers_adapter.py`` (headless editing on Flux.1 and SD3.x):

* :class:`FlowDenoiser` — ``denoiser(x, sigma) -> denoised`` in ComfyUI sigma space for rectified flow
  (``x = (1 - sigma) x0 + sigma eps``, ``sigma`` in [0, 1]; the network sees ``x`` and predicts the velocity
  ``v``, ``denoised = x - sigma v``). The timestep is what diffusers' flow pipelines pass: Flux takes
  ``timestep = sigma`` (and multiplies it by 1000 inside, as it does the guidance value), SD3 takes
  ``timestep = 1000 sigma``. Flux latents are packed into 2x2 patches with ``img_ids`` / ``txt_ids``; SD3
  patches them itself. A guidance-distilled Flux (``guidance_embeds``) gets its guidance value and no
  unconditional pass (``cfg`` must be 1); SD3 and a non-distilled Flux use true CFG with an unconditional branch.
* :func:`hooked` — installs the engine hooks through diffusers' official mechanisms only: attention processors
  on every joint / double-stream / single-stream attention (``set_attn_processor``) and forward hooks on the
  blocks for the features; the transformer's own processors are restored afterwards.
* :class:`DiTHost` — the :class:`~..samplers.hooks.EditHost` of a flow transformer (``param = "flow"``).

K,V hook (``samplers/hooks.py``): the *image* tokens' K,V, heads merged ``[B, N_img, C]``; K after q/k-norm
and (Flux) RoPE, so injected keys keep the positions they were recorded at; V as projected. What comes back
(possibly another token count) is re-joined with the text tokens in the model's order (Flux: text first,
SD3: image first) before the attention core; queries are untouched, so the output keeps its length.
Layer names: ``samplers.dit.double_name(i)`` (Flux double-stream / SD3 joint block ``i``) and
``single_name(i)`` (Flux single-stream block ``i``). SD3.5's second, image-only attention (``attn2`` of the
dual-attention blocks) keeps its own processor.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F

from ..samplers.dit import default_dit_levels, double_name, single_name
from ..samplers.hooks import COND, UNCOND, EditHooks, EditHost, StopForward
from .diffusers_adapter import _as_sigma, _rep
from .diffusers_adapter import model_id as _module_id

FLUX, SD3 = "flux", "sd3"
_CLASSES = {"FluxTransformer2DModel": FLUX, "SD3Transformer2DModel": SD3}


def dit_family(model) -> str | None:
    """``"flux"`` / ``"sd3"`` for a diffusers flow transformer (by class, subclasses included), else None."""
    for cls in type(model).__mro__:
        if cls.__name__ in _CLASSES:
            return _CLASSES[cls.__name__]
    return None


def model_id(model) -> str:
    """Identity of a diffusers transformer: class, config and a fingerprint of a few weights."""
    return _module_id(model)


# ------------------------------------------------------------------------------------------- schedules
def flow_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """The sampling sigmas of diffusers' flow pipelines for ``steps`` steps, descending and ending at 0:
    ``t = linspace(1, 1/steps, steps)``, ``sigma = shift t / (1 + (shift - 1) t)`` (FlowMatchEulerDiscrete's
    static shift; Flux's resolution-dependent ``mu`` is ``shift = exp(mu)``, see :func:`flux_shift`)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive number, got {shift}")
    t = torch.linspace(1.0, 1.0 / steps, int(steps), dtype=torch.float64)
    s = shift * t / (1 + (shift - 1) * t)
    return torch.cat([s, s.new_zeros(1)]).float()


def flux_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
               max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent shift ``exp(mu)``, ``mu`` linear in the number of image tokens (the
    scheduler config of FLUX.1-dev: 256 -> 0.5, 4096 -> 1.15)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return math.exp(image_seq_len * m + base_shift - m * base_seq_len)


# ------------------------------------------------------------------------------------ packing (Flux)
def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/2)(W/2), 4C]`` (Flux's 2x2 patches, row-major tokens)."""
    B, C, H, W = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"Flux latents need an even height and width, got {H}x{W}")
    return x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpack_latents(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent of size ``hw``."""
    H, W = hw
    B, _, D = t.shape
    C = D // 4
    return t.reshape(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Flux ``img_ids`` ``[h*w, 3]``: (0, row, col) per token of an ``h x w`` token grid."""
    ids = torch.zeros(h, w, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w, device=device, dtype=dtype)[None, :]
    return ids.reshape(h * w, 3)


# ------------------------------------------------------------------------------------------------ hooks
class _CallState:
    """Per-call facts the processors need (set by the denoiser before each transformer call)."""

    def __init__(self, hooks: EditHooks):
        self.hooks = hooks
        self.branches: list[int] | None = None
        self.token_hw: tuple[int, int] = (1, 1)

    @property
    def n_img(self) -> int:
        return self.token_hw[0] * self.token_hw[1]


def _sdpa(q, k, v, mask=None):
    """``[B, N, H, D]`` tensors -> ``[B, Nq, H*D]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2, 3)


def _hook_kv(state: _CallState, name: str, k_img, v_img, mask):
    """Image K,V ``[B, N, H, D]`` through the hooks; returns them (possibly another N) or the originals."""
    B, N, H, D = k_img.shape
    k2, v2 = state.hooks.self_attention_kv(name, k_img.flatten(2), v_img.flatten(2), state.token_hw, state.branches)
    if k2.shape[1] != N and mask is not None:
        raise ValueError("K,V injection that changes the token count cannot be combined with an attention mask")
    return k2.reshape(k2.shape[0], k2.shape[1], H, D), v2.reshape(v2.shape[0], v2.shape[1], H, D)


class _FluxAttention:
    """Processor for a ``FluxAttention`` (double- or single-stream): image K,V go through ``EditHooks``."""

    def __init__(self, name: str, state: _CallState):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kw):
        from diffusers.models.embeddings import apply_rotary_emb

        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = attn.head_dim
        q, k, v = (t.unflatten(-1, (-1, d)) for t in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        double = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if double:
            if getattr(attn, "fused_projections", False):
                eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                eq = attn.add_q_proj(encoder_hidden_states)
                ek = attn.add_k_proj(encoder_hidden_states)
                ev = attn.add_v_proj(encoder_hidden_states)
            eq, ek, ev = (t.unflatten(-1, (-1, d)) for t in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            n_txt = eq.shape[1]
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        else:  # single-stream: text tokens first, then the image's
            n_txt = q.shape[1] - self.state.n_img
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        ki, vi = _hook_kv(self.state, self.name, k[:, n_txt:], v[:, n_txt:], attention_mask)
        k, v = torch.cat([k[:, :n_txt], ki], 1), torch.cat([v[:, :n_txt], vi], 1)
        out = _sdpa(q, k, v, attention_mask).to(q.dtype)
        if not double:
            return out
        enc, img = out[:, :n_txt], out[:, n_txt:]
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        return img, attn.to_add_out(enc.contiguous())


class _JointAttention:
    """Processor for an SD3 joint attention (``JointAttnProcessor2_0``'s computation; image tokens first)."""

    def __init__(self, name: str, state: _CallState):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kw):
        B, n_img = hidden_states.shape[:2]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.reshape(B, -1, attn.heads, d) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        k, v = _hook_kv(self.state, self.name, k, v, attention_mask)
        if encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).reshape(B, -1, attn.heads, d)
            ek = attn.add_k_proj(encoder_hidden_states).reshape(B, -1, attn.heads, d)
            ev = attn.add_v_proj(encoder_hidden_states).reshape(B, -1, attn.heads, d)
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)
        out = _sdpa(q, k, v, attention_mask).to(q.dtype)
        enc = None
        if encoder_hidden_states is not None:
            out, enc = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                enc = attn.to_add_out(enc)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if enc is None else (out, enc)


def dit_attention_names(model) -> dict[str, str]:
    """Processor key -> host-neutral layer name, for every hooked attention of a Flux / SD3 transformer."""
    out = {}
    for key in model.attn_processors:
        parts = key.split(".")  # transformer_blocks.{i}.attn.processor / single_transformer_blocks.{i}.attn...
        if len(parts) != 4 or parts[2] != "attn":
            continue
        if parts[0] == "transformer_blocks":
            out[key] = double_name(int(parts[1]))
        elif parts[0] == "single_transformer_blocks":
            out[key] = single_name(int(parts[1]))
    return out


def _blocks(model) -> list:
    """Every block in forward order: double / joint blocks, then single blocks (global feature levels)."""
    return list(model.transformer_blocks) + list(getattr(model, "single_transformer_blocks", []))


@contextmanager
def hooked(model, hooks: EditHooks):
    """Install ``hooks`` on a Flux / SD3 transformer for the block; yields the per-call state."""
    family = dit_family(model)
    if family is None:
        raise ValueError(f"not a diffusers Flux or SD3 transformer: {type(model).__name__}")
    state = _CallState(hooks)
    original = dict(model.attn_processors)
    names = dit_attention_names(model)
    proc = _FluxAttention if family == FLUX else _JointAttention
    procs = {k: (proc(names[k], state) if k in names else p) for k, p in original.items()}
    handles = []

    def make_hook(level):
        def fn(module, inputs, output):
            if level not in hooks.capture_levels:
                return
            img = output[1]  # (text tokens, image tokens) for every Flux / SD3 block
            if state.branches and len(state.branches) > 1:
                n = img.shape[0] // len(state.branches)
                img = img[n * state.branches.index(COND):n * (state.branches.index(COND) + 1)]
            h, w = state.token_hw
            hooks.feature(level, img.reshape(img.shape[0], h, w, img.shape[-1]).permute(0, 3, 1, 2))
            if hooks.wants_stop():
                raise StopForward()
        return fn

    try:
        model.set_attn_processor(procs)
        for i, block in enumerate(_blocks(model)):
            handles.append(block.register_forward_hook(make_hook(i)))
        yield state
    finally:
        for h in handles:
            h.remove()
        model.set_attn_processor(original)


# -------------------------------------------------------------------------------------------- denoiser
class FlowDenoiser:
    """``denoiser(x, sigma) -> x0`` for a diffusers Flux / SD3 transformer in (flow) sigma space.

    ``cond`` / ``pooled``: the prompt's hidden states ``[1 or B, T, D]`` and pooled embedding ``[1 or B, P]``
    (Flux: T5 hidden states + CLIP pooled; SD3: the joint CLIP+T5 hidden states + the pooled CLIP pair);
    ``uncond`` / ``uncond_pooled`` the negative's, needed for ``cfg != 1``. ``guidance``: the distilled guidance
    value of a Flux with ``guidance_embeds`` (FLUX.1-dev: 3.5), ignored otherwise.
    """

    param = "flow"

    def __init__(self, transformer, cond: torch.Tensor, pooled: torch.Tensor, uncond: torch.Tensor | None = None,
                 uncond_pooled: torch.Tensor | None = None, cfg: float = 1.0, guidance: float = 3.5,
                 hooks: EditHooks | None = None):
        self.family = dit_family(transformer)
        if self.family is None:
            raise ValueError(f"FlowDenoiser takes a diffusers FluxTransformer2DModel or SD3Transformer2DModel, "
                             f"got {type(transformer).__name__}")
        self.model = transformer
        self.cfg = float(cfg)
        self.distilled = self.family == FLUX and bool(getattr(transformer.config, "guidance_embeds", False))
        if self.distilled and self.cfg != 1.0:
            raise ValueError(f"cfg {self.cfg:g} on a guidance-distilled Flux: it has no unconditional branch; set "
                             "cfg to 1 and use the guidance value (e.g. 3.5) instead")
        if self.cfg != 1.0 and (uncond is None or uncond_pooled is None):
            raise ValueError("cfg != 1 needs the negative prompt's hidden states and pooled embedding")
        if pooled is None:
            raise ValueError("a flow transformer needs the pooled text embedding (pooled_projections)")
        self.cond, self.pooled, self.uncond, self.uncond_pooled = cond, pooled, uncond, uncond_pooled
        self.guidance = float(guidance)
        self.hooks = hooks if hooks is not None else EditHooks()
        self.state: _CallState | None = None
        self.calls = 0
        cfgm = transformer.config
        self.patch = 2 if self.family == FLUX else int(cfgm.patch_size)
        self.channels = int(cfgm.in_channels) // 4 if self.family == FLUX else int(cfgm.in_channels)

    @property
    def sigma_min(self) -> float:
        return 0.0

    @property
    def sigma_max(self) -> float:
        return 1.0

    def _velocity(self, x, sigma, context, pooled, branches):
        """One transformer call; ``sigma`` per batch item. Returns the velocity ``[B, C, h, w]``."""
        self.calls += 1
        if x.shape[1] != self.channels:
            raise ValueError(f"the {self.family} transformer takes {self.channels}-channel latents, got "
                             f"{x.shape[1]} channels")
        H, W = x.shape[-2:]
        if H % self.patch or W % self.patch:
            raise ValueError(f"latent {H}x{W} is not a multiple of the patch size {self.patch}")
        hw = (H // self.patch, W // self.patch)
        dtype = next(self.model.parameters()).dtype
        st = self.state
        if st is not None:
            st.branches, st.token_hw = branches, hw
        B = x.shape[0]
        if self.family == FLUX:
            kw = {}
            if self.distilled:
                kw["guidance"] = torch.full((B,), self.guidance, device=x.device, dtype=torch.float32)
            out = self.model(hidden_states=pack_latents(x).to(dtype), encoder_hidden_states=context.to(dtype),
                             pooled_projections=pooled.to(dtype), timestep=sigma.to(x.device, torch.float32),
                             img_ids=image_ids(*hw, device=x.device),
                             txt_ids=torch.zeros(context.shape[1], 3, device=x.device), **kw).sample
            out = unpack_latents(out, (H, W))
        else:
            out = self.model(hidden_states=x.to(dtype), encoder_hidden_states=context.to(dtype),
                             pooled_projections=pooled.to(dtype),
                             timestep=(sigma * 1000).to(x.device, torch.float32)).sample
        return out.float() if x.dtype == torch.float32 else out.to(x.dtype)

    def __call__(self, x, sigma, **_):
        sigma = _as_sigma(sigma, x)
        B = x.shape[0]
        with self.installed():
            if self.cfg == 1.0:
                v = self._velocity(x, sigma, _rep(self.cond, B), _rep(self.pooled, B), [COND])
            else:
                ctx = torch.cat([_rep(self.cond, B), _rep(self.uncond, B)])
                pool = torch.cat([_rep(self.pooled, B), _rep(self.uncond_pooled, B)])
                vv = self._velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, pool, [COND, UNCOND])
                vc, vu = vv[:B], vv[B:]
                v = vu + self.cfg * (vc - vu)
        return x - sigma.reshape(-1, 1, 1, 1).to(x.dtype) * v

    def denoise_cond(self, x, sigma):
        sigma = _as_sigma(sigma, x)
        B = x.shape[0]
        with self.installed():
            v = self._velocity(x, sigma, _rep(self.cond, B), _rep(self.pooled, B), [COND])
        return x - sigma.reshape(-1, 1, 1, 1).to(x.dtype) * v

    @contextmanager
    def installed(self):
        """Keep the hooks installed for a whole run; calls inside it reuse the installation."""
        if self.state is not None:
            yield
            return
        with hooked(self.model, self.hooks) as st:
            self.state = st
            try:
                yield
            finally:
                self.state = None


class DiTHost(EditHost):
    """The editing samplers' view of a diffusers flow transformer (features, conditional denoise, interruption)."""

    param = "flow"

    def __init__(self, denoiser: FlowDenoiser, interrupt=None):
        self.denoiser = denoiser
        self.hooks = denoiser.hooks
        m = denoiser.model
        self.n_double = len(m.transformer_blocks)
        self.n_single = len(getattr(m, "single_transformer_blocks", []))
        self.num_up_blocks = 0  # (a UNet notion; DiT levels are global block indices)
        self._interrupt = interrupt

    @property
    def num_blocks(self) -> int:
        return self.n_double + self.n_single

    def default_levels(self) -> tuple[int, ...]:
        return default_dit_levels(self.n_double, self.n_single)

    def denoise_cond(self, x, sigma):
        return self.denoiser.denoise_cond(x, sigma)

    def features(self, x, sigma, levels: Sequence[int]):
        sigma = _as_sigma(sigma, x)
        bad = [l for l in levels if not 0 <= int(l) < self.num_blocks]
        if bad:
            raise ValueError(f"feature levels {bad} do not exist: the {self.denoiser.family} transformer has "
                             f"{self.num_blocks} blocks (levels 0..{self.num_blocks - 1})")
        den = self.denoiser
        with self.hooks.capturing(levels) as feats:
            try:
                with den.installed():
                    den._velocity(x, sigma, _rep(den.cond, x.shape[0]), _rep(den.pooled, x.shape[0]), [COND])
            except StopForward:
                pass
            missing = [l for l in levels if l not in feats]
            if missing:
                raise ValueError(f"feature levels {missing} were not produced")
            return dict(feats)

    def grad_context(self):
        return torch.enable_grad()

    def check_interrupt(self):
        if self._interrupt is not None:
            self._interrupt()
