"""Loading DiffEditor's image-prompt weights (official ``ip_sd15_64.bin`` layout), safely.

Accepted files (reference doc §1.12):

* ``.safetensors`` with flat keys ``image_proj.<resampler key>`` and ``ip_adapter.<index>.to_{k,v}_ip.weight``;
* ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` (pickles) **only** through
  ``torch.load(path, weights_only=True, map_location="cpu")``: a pickle holding anything but tensors and plain
  containers (a custom class instance, a callable) is refused with a ``ValueError``. The pickle may be the
  official nested dict ``{"image_proj": {...}, "ip_adapter": {...}}`` or the flat layout above.

The layout is validated (every resampler key and shape, paired K/V projections whose input width is the
resampler's output width) and a bad file gives a ``ValueError`` naming the file and what was expected. The
number of queries is read from ``image_proj.latents``. :func:`convert_to_safetensors` writes the safe format.
"""
from __future__ import annotations

import pathlib

import torch

from .image_prompt import ImagePromptAdapter, resampler_dims

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_LAYOUT = ("expected the official DiffEditor layout: 'image_proj' (resampler: latents [1, queries, width], "
           "proj_in, layers.N.0.{norm1,norm2,to_q,to_kv,to_out}, layers.N.1.{0,1,3}, proj_out, norm_out) and "
           "'ip_adapter' ('<index>.to_k_ip.weight' / '<index>.to_v_ip.weight')")


def _split(flat: dict) -> tuple[dict, dict, list]:
    proj = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
    other = [k for k in flat if not (k.startswith("image_proj.") or k.startswith("ip_adapter."))]
    return proj, ip, other


def _load_pickle(path: pathlib.Path) -> tuple[dict, dict]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses custom classes, callables and other code-carrying objects
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: refused to load: the pickle holds something other than tensors and plain "
                         f"containers, or is not a torch file ({type(e).__name__}: {first}). Only weights-only "
                         f"files are read; convert trusted weights to .safetensors") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}; {_LAYOUT}")
    if "image_proj" in obj or "ip_adapter" in obj:
        proj, ip = obj.get("image_proj"), obj.get("ip_adapter")
        if not isinstance(proj, dict) or not isinstance(ip, dict):
            raise ValueError(f"{path}: 'image_proj' and 'ip_adapter' must both be present as dicts of tensors; "
                             f"{_LAYOUT}")
        return dict(proj), dict(ip)
    proj, ip, _ = _split(obj)
    if not proj and not ip:
        raise ValueError(f"{path}: no 'image_proj' / 'ip_adapter' weights (top-level keys "
                         f"{sorted(map(str, obj))[:6]}); {_LAYOUT}")
    return proj, ip


def _load_safetensors(path: pathlib.Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path), device="cpu")
    except Exception as e:
        raise ValueError(f"{path}: not a readable .safetensors file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    proj, ip, other = _split(flat)
    if other:
        raise ValueError(f"{path}: unexpected keys {other[:6]}; {_LAYOUT}")
    return proj, ip


def validate_ip_weights(resampler_sd: dict, ip_sd: dict, path="weights", heads: int | None = None) -> dict:
    """Check the official layout; return the resampler dims (:func:`resampler_dims`; ``heads`` is not in the
    file, so it is only checked when given) plus ``ip_layers`` and ``context_dim``."""
    for part, sd in (("image_proj", resampler_sd), ("ip_adapter", ip_sd)):
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{path}: {part}.{bad[0]} is not a tensor; {_LAYOUT}")
    if "latents" not in resampler_sd:
        raise ValueError(f"{path}: missing 'image_proj.latents' (the resampler's learned queries); {_LAYOUT}")
    if not ip_sd:
        raise ValueError(f"{path}: missing the 'ip_adapter' K/V projections; {_LAYOUT}")
    try:
        dims = resampler_dims(resampler_sd, heads)
        adapter = ImagePromptAdapter(ip_sd)
    except ValueError as e:
        raise ValueError(f"{path}: {e}; {_LAYOUT}") from None
    if adapter.context_dim != dims["output_dim"]:
        raise ValueError(f"{path}: the K/V projections take {adapter.context_dim}-wide image tokens but the "
                         f"resampler outputs {dims['output_dim']}-wide tokens; {_LAYOUT}")
    return {**dims, "ip_layers": adapter.indices, "context_dim": adapter.context_dim}


def load_ip_weights(path) -> tuple[dict, dict]:
    """``(resampler_state_dict, ip_adapter_state_dict)`` from ``.safetensors`` or a weights-only pickle.

    Keys are returned without their ``image_proj.`` / ``ip_adapter.`` prefixes. The query count is that of
    ``image_proj.latents`` (64 for the official file). Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for a refused pickle or a file not in the official layout.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image-prompt weights not found: {path}")
    if path.suffix.lower() == ".safetensors":
        proj, ip = _load_safetensors(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        proj, ip = _load_pickle(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected .safetensors or "
                         f"{', '.join(PICKLE_SUFFIXES)}")
    validate_ip_weights(proj, ip, path)
    return proj, ip


def check_context_dim(ip_sd: dict, context_dim: int, path="weights") -> None:
    """The image K/V projections must project into the model's cross-attention: their input width is the
    image-token width, which the released weights tie to the text context width (768 for SD1.x)."""
    dims = {v.shape[1] for k, v in ip_sd.items() if k.endswith("to_k_ip.weight") or k.endswith("to_v_ip.weight")}
    if dims != {int(context_dim)}:
        raise ValueError(f"{path}: the image tokens have width {sorted(dims)} but the model's cross-attention "
                         f"context is {context_dim}-wide; these weights are for another base model")


def convert_to_safetensors(src, dst) -> pathlib.Path:
    """Validate ``src`` (any accepted format) and write it flat (``image_proj.*``, ``ip_adapter.*``) to ``dst``."""
    from safetensors.torch import save_file

    proj, ip = load_ip_weights(src)
    flat = {f"image_proj.{k}": v.detach().cpu().contiguous() for k, v in proj.items()}
    flat.update({f"ip_adapter.{k}": v.detach().cpu().contiguous() for k, v in ip.items()})
    dst = pathlib.Path(dst)
    save_file(flat, str(dst), metadata={"format": "pt", "source": "DiffEditor image prompt"})
    return dst
