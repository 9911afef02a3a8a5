"""The inverted trajectory (``EDIT_TRAJECTORY``): every latent of a DDIM inversion plus what it was made with."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .hooks import KVBank


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A short, stable hash of tensor contents (shape, dtype and values in fp32)."""
    h = hashlib.sha1()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().float().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class EditTrajectory:
    """A DDIM inversion trajectory in sigma space (model latent scale).

    ``latents[i]`` is the latent at ``sigmas[i]``; ``sigmas`` are the *sampling* sigmas (descending, the last
    one 0), so ``latents[0]`` is the editing start z_T and ``latents[-1]`` the clean input. ``bank`` holds the
    decoder self-attention K,V recorded during inversion (key = the sampling step index whose sigma the model
    was evaluated at). ``exact_residuals`` are the fixed-point residuals per step when exact inversion ran.
    """

    latents: list[torch.Tensor]
    sigmas: torch.Tensor
    model_id: str
    cond_fingerprint: str
    cfg: float = 1.0
    exact_iters: int = 0
    exact_residuals: list[float] = field(default_factory=list)
    bank: KVBank | None = None
    model_calls: int = 0
    meta: dict = field(default_factory=dict)
    #: the model family's parameterisation (``samplers/param.py``): "eps" (SD UNets) or "flow" (Flux, SD3)
    param: str = "eps"

    def __post_init__(self):
        if len(self.latents) != self.sigmas.shape[0]:
            raise ValueError(f"trajectory has {len(self.latents)} latents for {self.sigmas.shape[0]} sigmas")

    # The executor never serialises custom types, but downstream nodes clone models (deepcopy of options).
    def __deepcopy__(self, memo):
        return self

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @property
    def z_T(self) -> torch.Tensor:
        return self.latents[0]

    @property
    def x0(self) -> torch.Tensor:
        return self.latents[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.latents[0].shape)

    def at(self, i: int, like: torch.Tensor | None = None) -> torch.Tensor:
        t = self.latents[i]
        return t if like is None else t.to(device=like.device, dtype=like.dtype)

    def check_compatible(self, *, model_id: str | None = None, sigmas: torch.Tensor | None = None,
                         shape: tuple[int, ...] | None = None, name: str = "trajectory", param=None) -> None:
        """Raise a ValueError naming ``name`` when the trajectory does not fit the model, schedule or latent
        (``param``: the model family's parameterisation, or its name)."""
        if param is not None:
            want = getattr(param, "name", param)
            if want != self.param:
                from .param import param_for
                raise ValueError(f"{name} was inverted on a {param_for(self.param).label} model, but this MODEL is "
                                 f"{param_for(want).label}; invert the image again with this MODEL")
        if model_id is not None and model_id != self.model_id:
            raise ValueError(f"{name} was inverted with another model ({self.model_id}) than the one given "
                             f"({model_id}); invert the image again with this MODEL")
        if sigmas is not None:
            s = sigmas.detach().float().cpu()
            if s.shape != self.sigmas.shape or not torch.allclose(s, self.sigmas.float().cpu(), rtol=1e-4, atol=1e-6):
                raise ValueError(f"{name} has {self.steps} steps with sigmas {self._sig_str(self.sigmas)}, but the "
                                 f"sampler got {s.shape[0] - 1} steps with sigmas {self._sig_str(s)}; use the same "
                                 "steps and scheduler as the inversion")
        if shape is not None and len(shape) == len(self.shape) and shape[1] != self.shape[1]:
            raise ValueError(f"{name} latent has {self.shape[1]} channels but the latent given has {shape[1]}; it "
                             "was inverted with another model family (invert the image again with this MODEL)")
        if shape is not None and tuple(shape[-2:]) != self.shape[-2:]:
            raise ValueError(f"{name} latent is {self.shape[-2]}x{self.shape[-1]} but the latent given is "
                             f"{shape[-2]}x{shape[-1]}")

    @staticmethod
    def _sig_str(s: torch.Tensor) -> str:
        v = [f"{x:.3f}" for x in s.float().cpu().tolist()]
        return "[" + ", ".join(v if len(v) <= 6 else v[:2] + ["..."] + v[-2:]) + "]"
