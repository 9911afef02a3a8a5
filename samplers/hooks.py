"""The engine's small hook interface, implemented by every host adapter.

A host adapter (ComfyUI ModelPatcher, diffusers UNet2DConditionModel) translates two things into its own
official mechanisms and calls back into an :class:`EditHooks` object:

* every **decoder self-attention** (``attn1`` of the up blocks) calls
  ``hooks.self_attention_kv(layer, k, v, token_hw, branches)`` with the *projected* K and V
  (``[B, N, C]``, before the head split) and uses the returned K, V for the attention core;
* the output of each **decoder level** (diffusers ``up_blocks[i]`` after its upsampler) is passed to
  ``hooks.feature(level, h)``; when ``hooks.wants_stop()`` is true after a capture, the adapter may stop
  the forward pass by raising :class:`StopForward` (truncation after the deepest needed level) and must
  catch it itself.

Layer names are host neutral and follow diffusers: ``"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}"``;
feature levels are the up-block index ``i`` (int). ``branches`` lists, per equal-sized batch chunk, whether
the chunk is conditional (0) or unconditional (1), as ComfyUI's ``cond_or_uncond``; ``None`` means one
conditional chunk.

The sampler sets ``hooks.step`` (the editing step index, 0 = noisiest) before each model call.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from ..guidance.grids import resize_mask

COND, UNCOND = 0, 1


class StopForward(Exception):
    """Raised by an adapter's feature hook to end a forward pass once every requested level is captured."""


class KVBudgetError(ValueError):
    """A K,V bank outgrew its byte budget (a ValueError: the budget or the recorded steps must change). Host
    adapters turn it into a plain ValueError naming their own inputs."""


def default_feature_levels(num_up_blocks: int) -> tuple[int, ...]:
    """DiffEditor's feature levels: the outputs of the up blocks at half and full latent resolution.

    SD1.x/2.x (4 up blocks) -> (1, 2); SDXL (3 up blocks) -> (0, 1); smaller test UNets degrade gracefully.
    """
    return tuple(sorted({max(num_up_blocks - 3, 0), max(num_up_blocks - 2, 0)}))


def layer_name(up_block: int, attention: int, transformer: int = 0) -> str:
    return f"up_blocks.{up_block}.attentions.{attention}.transformer_blocks.{transformer}"


# ----------------------------------------------------------------------------------------------- K,V bank
class KVBank:
    """Projected self-attention K,V per (layer, step), recorded from a source trajectory.

    Entries are stored in ``dtype`` on ``device`` (the offload device, CPU by default). The default
    (``dtype=None``) keeps two bytes a value without ever overflowing: bf16 for a bf16 model, fp16 for an
    fp16 model, and for fp32/fp64 models fp16 (three more mantissa bits) unless the entry's values exceed
    fp16's finite range (65504), in which case that entry is kept in bf16.
    ``steps`` restricts recording to the steps that will be injected; ``byte_budget`` (bytes) bounds the
    total size: exceeding it raises :class:`KVBudgetError` with the size that was needed.
    """

    def __init__(self, steps: Iterable[int] | None = None, layers: Iterable[str] | None = None,
                 dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                 byte_budget: int | None = None):
        self.steps = None if steps is None else frozenset(int(s) for s in steps)
        self.layers = None if layers is None else frozenset(layers)
        self.dtype = dtype
        self.device = torch.device(device)
        self.byte_budget = byte_budget
        self._data: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.nbytes = 0

    def wants(self, layer: str, step: int | None) -> bool:
        if step is None:
            return False
        return (self.steps is None or step in self.steps) and (self.layers is None or layer in self.layers)

    def put(self, layer: str, step: int, k: torch.Tensor, v: torch.Tensor) -> None:
        dtype = self.dtype or _half_storage(k, v)
        k = k.detach().to(device=self.device, dtype=dtype).clone()
        v = v.detach().to(device=self.device, dtype=dtype).clone()
        old = self._data.get((layer, step))
        add = k.numel() * k.element_size() + v.numel() * v.element_size()
        sub = 0 if old is None else sum(t.numel() * t.element_size() for t in old)
        if self.byte_budget is not None and self.nbytes + add - sub > self.byte_budget:
            raise KVBudgetError(
                f"K,V bank needs more than its byte budget of {self.byte_budget / 2**20:.1f} MiB "
                f"(at layer {layer}, step {step}); raise the budget or inject the bank on fewer steps")
        self._data[(layer, step)] = (k, v)
        self.nbytes += add - sub

    def get(self, layer: str, step: int | None, like: torch.Tensor | None = None):
        if step is None:
            return None
        kv = self._data.get((layer, step))
        if kv is None or like is None:
            return kv
        return kv[0].to(device=like.device, dtype=like.dtype), kv[1].to(device=like.device, dtype=like.dtype)

    def has_step(self, step: int) -> bool:
        return any(s == step for (_, s) in self._data)

    def recorded_steps(self) -> list[int]:
        return sorted({s for (_, s) in self._data})

    def recorded_layers(self) -> list[str]:
        return sorted({l for (l, _) in self._data})

    def __len__(self) -> int:
        return len(self._data)

    def __deepcopy__(self, memo):  # banks are large and immutable once recorded: share, never copy
        return self


# ------------------------------------------------------------------------------------- K,V composition
_FP16_MAX = float(torch.finfo(torch.float16).max)


def _half_storage(*ts: torch.Tensor) -> torch.dtype:
    """The two-byte dtype that holds ``ts`` without overflow (see :class:`KVBank`)."""
    if any(t.dtype == torch.bfloat16 for t in ts):
        return torch.bfloat16
    if all(t.dtype == torch.float16 for t in ts):
        return torch.float16
    peak = max(float(t.detach().abs().amax()) if t.numel() else 0.0 for t in ts)
    return torch.float16 if peak <= _FP16_MAX else torch.bfloat16


def mask_to_tokens(mask: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Nearest-resize a mask (``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]``) to a token grid; bool ``[h*w]``."""
    m = mask.float()
    while m.ndim < 4:
        m = m.unsqueeze(0)
    m = resize_mask(m[:1, :1], hw, "nearest")
    return (m[0, 0] > 0.5).flatten()


def _expand(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    if batch % t.shape[0] == 0:
        return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))
    raise ValueError(f"bank batch {t.shape[0]} does not divide the attention batch {batch}")


def compose_kv(mode: str, k: torch.Tensor, v: torch.Tensor, src: tuple[torch.Tensor, torch.Tensor],
               ref: tuple[torch.Tensor, torch.Tensor] | None = None,
               src_keep: torch.Tensor | None = None, ref_keep: torch.Tensor | None = None):
    """Visual cross-attention K,V (pure function).

    * ``replace``: the source's K,V replace the current ones;
    * ``concat``: the source's K,V are appended after the current ones (token axis);
    * ``composite``: K,V = [source tokens where ``src_keep`` ; reference tokens where ``ref_keep``]; the
      current K,V are discarded (appearance replace / paste).

    ``k, v``: ``[B, N, C]``; bank entries ``[b, N, C]`` broadcast to ``B``; keep masks are bool ``[N]``.
    """
    B = k.shape[0]
    sk, sv = _expand(src[0], B), _expand(src[1], B)
    if mode == "replace":
        return sk, sv
    if mode == "concat":
        return torch.cat([k, sk], dim=1), torch.cat([v, sv], dim=1)
    if mode == "composite":
        if ref is None or src_keep is None or ref_keep is None:
            raise ValueError("composite K,V needs a reference bank and both keep masks")
        rk, rv = _expand(ref[0], B), _expand(ref[1], B)
        ck = torch.cat([sk[:, src_keep], rk[:, ref_keep]], dim=1)
        cv = torch.cat([sv[:, src_keep], rv[:, ref_keep]], dim=1)
        if ck.shape[1] == 0:
            raise ValueError("composite K,V selected no tokens (both masks empty at this layer)")
        return ck, cv
    raise ValueError(f"unknown K,V injection mode {mode!r}; expected replace, concat or composite")


@dataclass
class KVInjection:
    """How and when a bank is injected during editing.

    ``composite``: tokens of ``bank`` *outside* ``src_mask`` plus tokens of ``ref_bank`` *inside* ``ref_mask``.
    ``steps=None`` injects on every step the bank holds; ``layers=None`` on every layer it holds.
    """

    mode: str
    bank: KVBank
    steps: frozenset[int] | None = None
    ref_bank: KVBank | None = None
    src_mask: torch.Tensor | None = None
    ref_mask: torch.Tensor | None = None
    layers: frozenset[str] | None = None
    _token_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.mode not in ("replace", "concat", "composite"):
            raise ValueError(f"unknown K,V injection mode {self.mode!r}; expected replace, concat or composite")
        if self.mode == "composite" and (self.ref_bank is None or self.src_mask is None or self.ref_mask is None):
            raise ValueError("composite injection needs ref_bank, src_mask and ref_mask")

    def active(self, layer: str, step: int | None) -> bool:
        if step is None:
            return False
        if self.steps is not None and step not in self.steps:
            return False
        return self.layers is None or layer in self.layers

    def apply(self, layer: str, step: int, k: torch.Tensor, v: torch.Tensor, token_hw):
        src = self.bank.get(layer, step, like=k)
        if src is None:
            return k, v
        if self.mode != "composite":
            return compose_kv(self.mode, k, v, src)
        ref = self.ref_bank.get(layer, step, like=k)
        if ref is None:
            return k, v
        key = tuple(int(s) for s in token_hw)
        if key not in self._token_cache:
            self._token_cache[key] = (~mask_to_tokens(self.src_mask, key).to(k.device),
                                      mask_to_tokens(self.ref_mask, key).to(k.device))
        sk, rk = self._token_cache[key]
        return compose_kv("composite", k, v, src, ref, sk, rk)

    def __deepcopy__(self, memo):
        return self


# --------------------------------------------------------------------------------------------- the hooks
class EditHooks:
    """Per-run state the adapters call back into. Share it, never copy it (``__deepcopy__`` returns self)."""

    def __init__(self):
        self.step: int | None = None
        self.record: KVBank | None = None
        self.inject: KVInjection | None = None
        self.capture_levels: frozenset[int] = frozenset()
        self.stop_after_capture: bool = False
        self.features: dict[int, torch.Tensor] = {}
        self.enabled: bool = True
        self.extra: dict = {}  # host-neutral options for other hooks (e.g. the image-prompt window)

    def __deepcopy__(self, memo):
        return self

    # -- called by adapters ------------------------------------------------------------------------
    def self_attention_kv(self, layer: str, k: torch.Tensor, v: torch.Tensor, token_hw,
                          branches: Sequence[int] | None = None):
        if not self.enabled:
            return k, v
        if self.record is not None and self.record.wants(layer, self.step):
            self.record.put(layer, self.step, *_cond_part(k, v, branches))
        if self.inject is not None and self.inject.active(layer, self.step):
            return self.inject.apply(layer, self.step, k, v, token_hw)
        return k, v

    def feature(self, level: int, h: torch.Tensor) -> None:
        if level in self.capture_levels:
            self.features[level] = h

    def wants_stop(self) -> bool:
        return self.stop_after_capture and bool(self.capture_levels) and \
            all(l in self.features for l in self.capture_levels)

    # -- used by the engine ------------------------------------------------------------------------
    @contextmanager
    def capturing(self, levels: Iterable[int], stop: bool = True):
        """Capture the given levels with bank injection/recording off (the "feature estimator" pass)."""
        saved = (self.capture_levels, self.stop_after_capture, self.record, self.inject)
        self.capture_levels, self.stop_after_capture = frozenset(levels), stop
        self.record = self.inject = None
        self.features = {}
        try:
            yield self.features
        finally:
            self.capture_levels, self.stop_after_capture, self.record, self.inject = saved

    @contextmanager
    def using(self, **state):
        """Temporarily set attributes (``step``, ``record``, ``inject``, ``enabled``)."""
        saved = {k: getattr(self, k) for k in state}
        for k, val in state.items():
            setattr(self, k, val)
        try:
            yield self
        finally:
            for k, val in saved.items():
                setattr(self, k, val)


def _cond_part(k: torch.Tensor, v: torch.Tensor, branches: Sequence[int] | None):
    """The conditional chunk(s) of a cond/uncond batch."""
    if not branches:
        return k, v
    n = len(branches)
    if k.shape[0] % n:
        raise ValueError(f"batch {k.shape[0]} is not divisible into {n} cond/uncond chunks")
    size = k.shape[0] // n
    idx = [i for i, b in enumerate(branches) if b == COND]
    if not idx:
        raise ValueError("no conditional chunk to record K,V from")
    sel = torch.cat([torch.arange(i * size, (i + 1) * size) for i in idx]).to(k.device)
    return k[sel], v[sel]


# ---------------------------------------------------------------------------------------- host protocol
class EditHost:
    """What the editing samplers need from a host besides the plain ``model(x, sigma, **extra_args)``.

    Adapters subclass this. All tensors are in sigma space (``x`` at noise level ``sigma``), model latent
    scale. ``features`` must be differentiable with respect to ``x`` when called under ``torch.enable_grad``.
    """

    hooks: EditHooks
    num_up_blocks: int
    #: the model family's :class:`~.param.Parameterization` name ("eps" or "flow")
    param: str = "eps"

    def default_levels(self) -> tuple[int, ...]:
        """The feature levels the energies use unless a schedule names others (UNets: DiffEditor's two decoder
        levels; DiT hosts override this with the blocks chosen by measurement)."""
        return default_feature_levels(self.num_up_blocks)

    def denoise_cond(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoised estimate for the positive conditioning only (no CFG)."""
        raise NotImplementedError

    def features(self, x: torch.Tensor, sigma: torch.Tensor, levels: Sequence[int]) -> dict[int, torch.Tensor]:
        """Decoder features (positive conditioning, no bank, no image prompt), truncated where possible."""
        raise NotImplementedError

    def grad_context(self):
        """Context manager under which gradients through the model work (host specific)."""
        return torch.enable_grad()

    def check_interrupt(self) -> None:
        """Raise if the user interrupted processing (host specific; no-op by default)."""


def host_levels(host) -> tuple[int, ...]:
    """``host.default_levels()``, or DiffEditor's UNet levels for hosts that predate it."""
    f = getattr(host, "default_levels", None)
    return tuple(f()) if f is not None else default_feature_levels(host.num_up_blocks)


ProgressFn = Callable[[int, int], None]
