"""Load this pack as the importable package ``diffeditor`` from its folder (whatever the folder is named).

ComfyUI loads ``custom_nodes/<folder>/__init__.py`` by path; scripts, benchmarks and tests do the same
through :func:`load`, so the relative imports inside the pack work without installing it.
"""
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent


def load(name: str = "diffeditor"):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]
