"""Loading DiffEditor's image-prompt weights (official ``ip_sd15_64.bin`` layout), safely.

``.safetensors`` (keys ``image_proj.*`` and ``ip_adapter.*``) or ``.bin``/``.pt`` through
``torch.load(weights_only=True)`` only: a pickle holding anything but tensors and plain containers is
refused. :func:`convert_to_safetensors` writes the safe format once.
"""
from __future__ import annotations

import pathlib

import torch


def _split(flat: dict) -> tuple[dict, dict]:
    proj = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
    return proj, ip


def _validate(proj: dict, ip: dict, path) -> None:
    need = ("latents", "proj_in.weight", "proj_out.weight", "norm_out.weight", "layers.0.0.to_q.weight",
            "layers.0.0.to_kv.weight", "layers.0.1.1.weight")
    missing = [k for k in need if k not in proj]
    if missing or not ip:
        raise ValueError(f"{path}: not DiffEditor image-prompt weights (expected 'image_proj' with {list(need)} "
                         f"and 'ip_adapter' with '<index>.to_k_ip.weight'; missing {missing or ['ip_adapter']})")
    if proj["latents"].ndim != 3 or proj["latents"].shape[0] != 1:
        raise ValueError(f"{path}: image_proj.latents must be [1, queries, width], got "
                         f"{tuple(proj['latents'].shape)}")
    for k, v in {**proj, **ip}.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: {k} is not a tensor")


def load_ip_weights(path) -> tuple[dict, dict]:
    """``(resampler_state_dict, ip_adapter_state_dict)`` from ``.safetensors`` or a weights-only pickle."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image-prompt weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        proj, ip = _split(load_file(str(path)))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # an unsafe pickle (custom classes, code) is refused by weights_only
            raise ValueError(f"{path}: refused to load: it is not a plain tensor file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); convert trusted weights to .safetensors") from None
        if not isinstance(obj, dict) or not {"image_proj", "ip_adapter"} <= set(obj):
            raise ValueError(f"{path}: expected a dict with 'image_proj' and 'ip_adapter'")
        proj, ip = dict(obj["image_proj"]), dict(obj["ip_adapter"])
    _validate(proj, ip, path)
    return proj, ip


def check_context_dim(ip_sd: dict, context_dim: int, path="weights") -> None:
    dims = {v.shape[1] for k, v in ip_sd.items() if k.endswith("to_k_ip.weight")}
    if dims != {context_dim}:
        raise ValueError(f"{path}: the image tokens have width {sorted(dims)} but the model's cross-attention "
                         f"expects {context_dim}; these weights are for another base model")


def convert_to_safetensors(src, dst) -> pathlib.Path:
    from safetensors.torch import save_file

    proj, ip = load_ip_weights(src)
    flat = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()}
    flat.update({f"ip_adapter.{k}": v.contiguous() for k, v in ip.items()})
    save_file(flat, str(dst))
    return pathlib.Path(dst)
