"""Build (seeded random) or load (safetensors only, no network) the demo model.

A saved model is a folder with ``config.json`` (the ``vae``/``unet``/``scheduler``/``text`` configs and the
tokenizer ``vocab``) and ``vae.safetensors``, ``unet.safetensors``, ``text_encoder.safetensors``.
Both entry points return ``(vae, unet, text_encoder, tokenizer, alphas_cumprod)`` with the modules in
eval mode and ``alphas_cumprod`` a float64 tensor ``[1000]``.
"""
from __future__ import annotations

import json
import pathlib

import torch

from . import config as C
from .text import DemoTextEncoder, DemoTokenizer

FILES = {"vae": "vae.safetensors", "unet": "unet.safetensors", "text_encoder": "text_encoder.safetensors"}


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(cfg).items()}


def build(cfgs: dict | None = None, vocab=None):
    cfgs = cfgs or C.configs()
    tok = DemoTokenizer(vocab, max_length=cfgs["text"]["max_length"])
    vae = C.make_vae(cfgs["vae"])
    unet = C.make_unet(cfgs["unet"])
    te = DemoTextEncoder(len(tok), **cfgs["text"])
    return vae, unet, te, tok, C.alphas_cumprod(cfgs["scheduler"])


def build_random(seed: int = 0):
    """Seeded random demo model (for tests): ``(vae, unet, text_encoder, tokenizer, alphas_cumprod)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae, unet, te, tok, ac = build()
    return vae.eval(), unet.eval(), te.eval(), tok, ac


def save_demo(path, vae, unet, text_encoder, tokenizer, cfgs: dict | None = None, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfgs = dict(cfgs or C.configs())
    cfgs["vae"] = dict(cfgs["vae"], scaling_factor=float(vae.config.scaling_factor))
    meta = {k: _jsonable(v) for k, v in cfgs.items()}
    meta["vocab"] = list(tokenizer.vocab)
    if extra:
        meta.update(extra)
    (path / "config.json").write_text(json.dumps(meta, indent=2))
    for name, mod in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        sd = {k: v.detach().contiguous().cpu() for k, v in mod.state_dict().items()}
        save_file(sd, str(path / FILES[name]))


def load_demo(path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a saved demo model: ``(vae, unet, text_encoder, tokenizer, alphas_cumprod)``."""
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    meta = json.loads((path / "config.json").read_text())
    cfgs = {k: meta[k] for k in ("vae", "unet", "scheduler", "text")}
    vae, unet, te, tok, ac = build(cfgs, meta["vocab"])
    for name, mod in (("vae", vae), ("unet", unet), ("text_encoder", te)):
        sd = load_file(str(path / FILES[name]))
        missing, unexpected = mod.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    mods = [m.to(device=device, dtype=dtype).eval() for m in (vae, unet, te)]
    return mods[0], mods[1], mods[2], tok, ac
