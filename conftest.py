"""Test bootstrap: load this pack under the fixed name ``diffeditor``.

The repository root *is* the pack (ComfyUI loads it by path from ``custom_nodes/<any folder name>``), so
its import name depends on the clone folder. Tests import it as ``diffeditor`` instead, loaded by path the
same way ComfyUI does. When ``COMFYUI_ROOT`` is set, ComfyUI is put on ``sys.path`` first (see
``tests/host/conftest.py``) so the pack registers its nodes exactly as it would inside the server.
"""
import importlib.util
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent

sys.path.insert(0, str(ROOT / "tests"))  # shared test helpers (tiny_models.py)

if os.environ.get("COMFYUI_ROOT"):
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    import comfy_bootstrap  # noqa: E402  (puts ComfyUI on sys.path, CPU mode, torchvision stub if needed)

    comfy_bootstrap.setup()

_spec = importlib.util.spec_from_file_location("diffeditor_pack_loader", ROOT / "pack_loader.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
_loader.load("diffeditor")
