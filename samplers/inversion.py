"""Deterministic DDIM inversion in sigma space, with an optional exact (fixed-point) correction.

``sample_invert`` follows the k-diffusion sampler convention over *ascending* sigmas (0 first); ``invert``
wraps it and returns an :class:`EditTrajectory` keyed by the sampling schedule.

Cost: the plain inversion makes one model call per step (50 for 50 steps), like the official code. The
exact option adds ``exact_iters`` calls per step at most (it stops early once the relative fixed-point
residual is below ``exact_tol``); the inverted latents then reproduce the source through the plain
deterministic sampler up to that residual.
"""
from __future__ import annotations

import torch
from tqdm.auto import trange

from .ddim import inversion_step
from .hooks import EditHooks, KVBank
from .param import param_for
from .schedule import check_latent, check_sigmas
from .trajectory import EditTrajectory


@torch.no_grad()
def sample_invert(model, x, sigmas, extra_args=None, callback=None, disable=None, hooks: EditHooks | None = None,
                  exact_iters: int = 0, exact_tol: float = 1e-7, trajectory_out: list | None = None,
                  residuals_out: list | None = None, interrupt=None, param=None):
    """DDIM-invert ``x`` along ascending ``sigmas`` (``sigmas[0]`` is normally 0); returns the noisiest latent.

    ``model(x, sigma, **extra_args)`` returns the denoised estimate (use cfg 1 / the conditional branch).
    Step ``j`` evaluates the model at ``sigmas[j+1]``, i.e. at sampling step ``n-1-j``; ``hooks.step`` is set
    to that index so a K,V bank recorded here is read by the sampling step that evaluates the same sigma.
    ``trajectory_out`` (list) receives every latent, ascending. ``param``: the model family
    (``samplers/param.py``; default EPS).
    """
    extra_args = {} if extra_args is None else extra_args
    check_sigmas(sigmas, "sigmas", descending=False)
    if param is not None:
        param_for(param).check_sigmas(sigmas)
    n = len(sigmas) - 1
    s_in = x.new_ones([x.shape[0]])
    last = {}

    def eps_fn(xx, s):
        if interrupt is not None:  # before every model call (exact inversion makes several per step)
            interrupt()
        d = model(xx, s * s_in, **extra_args)
        last["denoised"] = d
        return (xx - d) / s

    if trajectory_out is not None:
        trajectory_out.append(x)
    for j in trange(n, disable=disable):
        if interrupt is not None:
            interrupt()
        step = n - 1 - j
        if hooks is not None:
            hooks.step = step
        x, _, _, res = inversion_step(eps_fn, x, sigmas[j], sigmas[j + 1], exact_iters, exact_tol,
                                      None if param is None else param_for(param))
        if residuals_out is not None and exact_iters:
            residuals_out.append(res)
        if callback is not None:
            callback({"x": x, "i": j, "sigma": sigmas[j + 1], "sigma_hat": sigmas[j + 1],
                      "denoised": last["denoised"]})
        if trajectory_out is not None:
            trajectory_out.append(x)
    if hooks is not None:
        hooks.step = None
    return x


class _Counter:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.model(*a, **k)


def invert(model, x0: torch.Tensor, sigmas: torch.Tensor, extra_args=None, *, model_id: str = "unknown",
           cond_fingerprint: str = "", cfg: float = 1.0, exact_iters: int = 0, exact_tol: float = 1e-7,
           hooks: EditHooks | None = None, bank: KVBank | None = None, callback=None, disable=None,
           interrupt=None, param=None) -> EditTrajectory:
    """Invert the clean latent ``x0`` (model latent scale) for the *sampling* schedule ``sigmas`` (descending).

    With ``bank`` (and ``hooks`` wired into the model by the host adapter) the decoder self-attention K,V are
    recorded on the bank's steps. ``param``: the model family (``samplers/param.py``: EPS for SD UNets, FLOW for
    Flux/SD3; default EPS); the trajectory records it.
    """
    p = param_for(param)
    check_latent(x0)
    check_sigmas(sigmas, "sigmas", descending=True)
    if float(sigmas[-1]) != 0.0:
        raise ValueError("the sampling sigmas must end at 0 for inversion from a clean latent")
    if exact_iters < 0:
        raise ValueError(f"exact_iters must be >= 0, got {exact_iters}")
    asc = sigmas.flip(0).to(x0.device)
    lat: list[torch.Tensor] = []
    res: list[float] = []
    counted = _Counter(model)
    if hooks is not None and bank is not None:
        hooks.record = bank
    try:
        sample_invert(counted, x0, asc, extra_args, callback, disable, hooks, exact_iters, exact_tol, lat, res,
                      interrupt, None if param is None else p)
    finally:
        if hooks is not None and bank is not None:
            hooks.record = None
    return EditTrajectory(latents=lat[::-1], sigmas=sigmas.detach().float().cpu(), model_id=model_id,
                          cond_fingerprint=cond_fingerprint, cfg=cfg, exact_iters=exact_iters,
                          exact_residuals=res, bank=bank, model_calls=counted.calls, param=p.name)
