"""Test-only import stub for ``torchvision`` (CPU torch wheels cannot load PyPI torchvision).

ComfyUI imports torchvision at module level in a few model files (Cosmos, Stable Cascade, ACE) but only *uses*
it in those code paths. This stub satisfies the imports; ``models`` raises when touched. It is put on
``sys.path`` by ``tests/host/comfy_bootstrap.py`` only when a real torchvision cannot be imported.
"""
__version__ = "0.0.0+stub"
IS_STUB = True

from . import io, transforms  # noqa: E402,F401


class _Unavailable:
    def __init__(self, what):
        self._what = what

    def __getattr__(self, name):
        raise ImportError(f"torchvision.{self._what}.{name} is not available (test stub of torchvision)")


models = _Unavailable("models")
ops = _Unavailable("ops")
