"""Make a ComfyUI checkout importable in-process for the host test tier.

``setup()`` must run before anything imports ``comfy.model_management`` (it reads ``args.cpu`` at import
time and fails on a CUDA-less torch without it). The root ``conftest.py`` calls it when ``COMFYUI_ROOT`` is
set. It is idempotent.

* ``COMFYUI_ROOT`` is put first on ``sys.path`` (``import comfy``, ``comfy_api``, ``folder_paths``...);
* when ``import torchvision`` fails, the stub package in ``tests/host/stubs`` is put on ``sys.path``
  (CPU torch wheels cannot load PyPI torchvision; ComfyUI imports it at module level but only uses it in
  Cosmos/Cascade/ACE code paths);
* ``comfy.cli_args.args.cpu = True`` when CUDA is unavailable.
"""
from __future__ import annotations

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
STUBS = HERE / "stubs"
_done = False


def comfy_root() -> pathlib.Path | None:
    root = os.environ.get("COMFYUI_ROOT")
    return pathlib.Path(root).resolve() if root else None


def needs_torchvision_stub() -> bool:
    if str(STUBS) in sys.path:
        return True
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return True


def setup() -> pathlib.Path:
    global _done
    root = comfy_root()
    if root is None:
        raise RuntimeError("COMFYUI_ROOT is not set; point it at a ComfyUI checkout (v0.3.64 was tested)")
    if _done:
        return root
    if not (root / "comfy" / "model_management.py").is_file():
        raise RuntimeError(f"COMFYUI_ROOT={root} is not a ComfyUI checkout (comfy/model_management.py missing)")
    if "comfy.model_management" in sys.modules:
        raise RuntimeError("comfy.model_management was imported before comfy_bootstrap.setup()")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if needs_torchvision_stub() and str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    _done = True
    return root


def subprocess_env(extra_pythonpath: list[str] | None = None) -> dict:
    """Environment for a ``python main.py`` subprocess: the stub on PYTHONPATH when needed."""
    env = dict(os.environ)
    paths = list(extra_pythonpath or [])
    if needs_torchvision_stub():
        paths.insert(0, str(STUBS))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
