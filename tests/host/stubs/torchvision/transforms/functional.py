"""``resize`` implemented with ``torch.nn.functional.interpolate`` (test stub)."""
import torch.nn.functional as F


def resize(img, size, interpolation=None, max_size=None, antialias=None):
    mode = getattr(interpolation, "value", interpolation) or "bilinear"
    if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic"):
        mode = "bilinear"
    if isinstance(size, int):
        h, w = img.shape[-2:]
        size = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = img
    squeeze = 0
    while x.ndim < 4:
        x = x.unsqueeze(0)
        squeeze += 1
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    kw = {} if mode.startswith("nearest") else {"align_corners": False}
    out = F.interpolate(x.float() if not x.is_floating_point() else x, size=tuple(size), mode=mode, **kw)
    out = out.to(img.dtype).reshape(*lead, *out.shape[-3:])
    for _ in range(squeeze):
        out = out.squeeze(0)
    return out


def pil_to_tensor(pic):
    """PIL image -> uint8 tensor [C, H, W]."""
    import numpy as np
    import torch

    a = np.array(pic, copy=True)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def to_tensor(pic):
    """PIL image -> float tensor [C, H, W] in [0, 1]."""
    return pil_to_tensor(pic).float() / 255.0



def __getattr__(name):
    """``InterpolationMode`` as in torchvision, and ``rotate`` / ``normalize`` that raise when called: what
    spandrel imports at module level (ComfyUI's upscale-model nodes import spandrel; without them the front
    end 1.27 fails to build combo widgets, see its modelToNodeStore defaults)."""
    if name == "InterpolationMode":
        from . import InterpolationMode

        return InterpolationMode
    if name in ("rotate", "normalize"):
        def unavailable(*args, **kwargs):
            raise NotImplementedError(f"torchvision.transforms.functional.{name} is not available (test stub)")

        unavailable.__name__ = name
        return unavailable
    raise AttributeError(name)
