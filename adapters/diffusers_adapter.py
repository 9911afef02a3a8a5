"""diffusers host adapter: a ``UNet2DConditionModel`` as a k-diffusion denoiser with the engine's hooks.

This is also the headless Python API for batch pipelines (see README, "Headless (diffusers)").

* :class:`DiffusersDenoiser` — ``denoiser(x, sigma) -> denoised`` in ComfyUI sigma space (eps models), with
  classifier-free guidance; sigma -> timestep uses the nearest log-sigma of the scheduler's table, as ComfyUI.
* :func:`hooked` — a context manager installing the engine hooks through diffusers' official mechanisms
  (attention processors on every decoder ``attn1``, forward hooks on ``up_blocks``) and restoring the
  UNet's own processors afterwards: the UNet is never left modified.
* :class:`DiffusersHost` — the :class:`~..samplers.hooks.EditHost` the editing samplers need.
"""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F

from ..samplers.hooks import COND, UNCOND, EditHooks, EditHost, StopForward, layer_name
from ..samplers.schedule import scaled_linear_alphas_cumprod, sigma_from_alpha_bar
from ..samplers.trajectory import tensor_fingerprint


def _attention(q, k, v, heads):
    b, _, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, heads * d)


class _HookedSelfAttention:
    """Attention processor for a decoder self-attention: projected K,V go through ``EditHooks``."""

    def __init__(self, name: str, state: "_CallState"):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        if attn.norm_q is not None or attn.norm_k is not None:
            raise NotImplementedError("q/k-normalised self-attention is not supported by the K,V hooks")
        k, v = self.state.hooks.self_attention_kv(self.name, k, v, self.state.token_hw(q.shape[1]),
                                                  self.state.branches)
        out = _attention(q, k, v, attn.heads).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class _CallState:
    def __init__(self, hooks: EditHooks):
        self.hooks = hooks
        self.branches: list[int] | None = None
        self.latent_hw: tuple[int, int] = (1, 1)

    def token_hw(self, n: int) -> tuple[int, int]:
        h, w = self.latent_hw
        f = math.sqrt(h * w / n)
        return max(1, round(h / f)), max(1, round(w / f))


def decoder_self_attention_names(unet) -> dict[str, str]:
    """Processor key -> host-neutral layer name, for every ``attn1`` in ``unet.up_blocks``."""
    out = {}
    for key in unet.attn_processors:
        parts = key.split(".")
        if parts[0] != "up_blocks" or "attn1" not in parts:
            continue
        # up_blocks.{i}.attentions.{j}.transformer_blocks.{k}.attn1.processor
        i, j, k = int(parts[1]), int(parts[3]), int(parts[5])
        out[key] = layer_name(i, j, k)
    return out


@contextmanager
def hooked(unet, hooks: EditHooks):
    """Install ``hooks`` on ``unet`` for the duration of the block; yields the per-call state."""
    state = _CallState(hooks)
    original = dict(unet.attn_processors)
    names = decoder_self_attention_names(unet)
    procs = {k: (_HookedSelfAttention(names[k], state) if k in names else p) for k, p in original.items()}
    handles = []

    def make_hook(level):
        def fn(module, inputs, output):
            hooks.feature(level, output)
            if hooks.wants_stop():
                raise StopForward()
        return fn

    try:
        unet.set_attn_processor(procs)
        for i, block in enumerate(unet.up_blocks):
            handles.append(block.register_forward_hook(make_hook(i)))
        yield state
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(original)


class DiffusersDenoiser:
    """``denoiser(x, sigma) -> x0`` for an eps-prediction ``UNet2DConditionModel`` in sigma space.

    ``cond``/``uncond`` are text-encoder hidden states ``[1 or B, T, D]``; ``cfg`` is the guidance scale
    (1 = conditional only, no unconditional pass).
    """

    def __init__(self, unet, cond: torch.Tensor, uncond: torch.Tensor | None = None, cfg: float = 1.0,
                 alphas_cumprod: torch.Tensor | None = None, hooks: EditHooks | None = None,
                 added_cond_kwargs: dict | None = None):
        if getattr(unet.config, "prediction_type", "epsilon") not in (None, "epsilon"):
            raise ValueError("only eps-prediction UNets are supported")
        self.unet = unet
        self.cond, self.uncond, self.cfg = cond, uncond, float(cfg)
        if self.cfg != 1.0 and uncond is None:
            raise ValueError("cfg != 1 needs an unconditional embedding (uncond)")
        ac = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
        self.log_sigmas = sigma_from_alpha_bar(ac).log().float()
        self.hooks = hooks if hooks is not None else EditHooks()
        self.added_cond_kwargs = added_cond_kwargs
        self.state: _CallState | None = None
        self.calls = 0

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        d = sigma.float().log().reshape(-1, 1).to(self.log_sigmas.device) - self.log_sigmas[None]
        return d.abs().argmin(dim=1)

    def _eps(self, x, sigma, context, branches):
        """One UNet call; ``sigma`` per batch item. Returns eps."""
        self.calls += 1
        sig = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        xc = x / torch.sqrt(sig ** 2 + 1)
        t = self.timestep(sigma).to(x.device)
        dtype = next(self.unet.parameters()).dtype
        kw = {}
        if self.added_cond_kwargs is not None:
            kw["added_cond_kwargs"] = {k: _rep(v, x.shape[0]) for k, v in self.added_cond_kwargs.items()}
        st = self.state
        if st is not None:
            st.branches, st.latent_hw = branches, tuple(x.shape[-2:])
        out = self.unet(xc.to(dtype), t, encoder_hidden_states=context.to(dtype), **kw).sample
        return out.float() if x.dtype == torch.float32 else out.to(x.dtype)

    def _context(self, c, b):
        return _rep(c, b)

    def __call__(self, x, sigma, **_):
        sigma = _as_sigma(sigma, x)
        B = x.shape[0]
        with self.installed():
            if self.cfg == 1.0:
                eps = self._eps(x, sigma, self._context(self.cond, B), [COND])
            else:
                ctx = torch.cat([self._context(self.cond, B), self._context(self.uncond, B)])
                e = self._eps(torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, [COND, UNCOND])
                ec, eu = e[:B], e[B:]
                eps = eu + self.cfg * (ec - eu)
        return x - sigma.reshape(-1, 1, 1, 1) * eps

    def denoise_cond(self, x, sigma):
        sigma = _as_sigma(sigma, x)
        with self.installed():
            eps = self._eps(x, sigma, self._context(self.cond, x.shape[0]), [COND])
        return x - sigma.reshape(-1, 1, 1, 1) * eps

    @contextmanager
    def installed(self):
        """Keep the hooks installed for a whole run (one install instead of one per UNet call, which walks
        every attention module twice: ~10 ms on a CPU for SD1.5). Calls inside it reuse the installation."""
        if self.state is not None:  # already inside hooked()
            yield
            return
        with hooked(self.unet, self.hooks) as st:
            self.state = st
            try:
                yield
            finally:
                self.state = None


def _rep(t: torch.Tensor, b: int) -> torch.Tensor:
    if t.shape[0] == b:
        return t
    if t.shape[0] == 1:
        return t.expand(b, *t.shape[1:])
    raise ValueError(f"conditioning batch {t.shape[0]} does not match the latent batch {b}")


def _as_sigma(sigma, x) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return s.expand(x.shape[0]) if s.ndim == 0 or s.numel() == 1 else s.reshape(-1)


class DiffusersHost(EditHost):
    """The editing samplers' view of a diffusers UNet (features, conditional denoise, interruption)."""

    def __init__(self, denoiser: DiffusersDenoiser, interrupt=None):
        self.denoiser = denoiser
        self.hooks = denoiser.hooks
        self.num_up_blocks = len(denoiser.unet.up_blocks)
        self._interrupt = interrupt

    def denoise_cond(self, x, sigma):
        return self.denoiser.denoise_cond(x, sigma)

    def features(self, x, sigma, levels: Sequence[int]):
        sigma = _as_sigma(sigma, x)
        with self.hooks.capturing(levels) as feats:
            try:
                with self.denoiser.installed():
                    self.denoiser._eps(x, sigma, self.denoiser._context(self.denoiser.cond, x.shape[0]), [COND])
            except StopForward:
                pass
            missing = [l for l in levels if l not in feats]
            if missing:
                raise ValueError(f"feature levels {missing} were not produced (the UNet has "
                                 f"{self.num_up_blocks} up blocks)")
            return dict(feats)

    def check_interrupt(self):
        if self._interrupt is not None:
            self._interrupt()


def model_id(unet) -> str:
    """Identity of a diffusers UNet: class, config and a fingerprint of a few weights."""
    params = list(unet.parameters())
    probe = [params[0], params[len(params) // 2], params[-1]]
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    cfg_hash = hashlib.sha1(repr(sorted((k, repr(v)) for k, v in cfg.items())).encode()).hexdigest()[:8]
    return f"diffusers:{type(unet).__name__}:{cfg_hash}:{tensor_fingerprint(*probe)}"
