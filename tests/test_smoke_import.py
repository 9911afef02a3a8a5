"""The package as ComfyUI and CI see it: V3 registration inside ComfyUI, a clean import outside it, and a
broken install that fails loudly instead of loading as a pack with zero nodes."""
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_v1_mappings_so_comfyui_takes_the_v3_entry_point():
    import diffeditor

    # ComfyUI's loader takes the V1 path whenever NODE_CLASS_MAPPINGS exists (even empty): it must not.
    assert not hasattr(diffeditor, "NODE_CLASS_MAPPINGS")
    assert diffeditor.WEB_DIRECTORY == "./web"
    assert (ROOT / "web").is_dir()


@pytest.mark.skipif(bool(os.environ.get("COMFYUI_ROOT")), reason="checks the import without ComfyUI")
def test_pack_imports_without_comfy_and_exposes_no_nodes():
    import diffeditor

    assert "comfy_api" not in sys.modules
    assert not hasattr(diffeditor, "comfy_entrypoint")


def test_requirements_install_nothing_comfyui_lacks():
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in reqs if r}
    assert names == {"numpy", "pillow", "safetensors", "kornia", "tqdm"}  # all in ComfyUI's own requirements
    assert not any(n.startswith(("torch", "diffusers", "transformers")) for n in names)


# ------------------------------------------------------------------- what counts as "ComfyUI is absent"
_LOAD = ("import importlib.util\n"
         "spec = importlib.util.spec_from_file_location('pack_loader_under_test', 'pack_loader.py')\n"
         "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
         "p = m.load('pack_under_test')\n"
         "print('NODES', len(getattr(p, 'NODE_LIST', [])), hasattr(p, 'comfy_entrypoint'))\n")


def _import_pack_with(pythonpath: list[str]):
    """Import the pack in a fresh interpreter whose only extra import path is ``pythonpath`` (no real ComfyUI)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_ROOT")}
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return subprocess.run([sys.executable, "-c", _LOAD], cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=120)


def _fake_comfy_api(tmp_path, latest_source: str):
    api = tmp_path / "comfy_api" / "latest"
    api.mkdir(parents=True)
    (api / "__init__.py").write_text(latest_source)
    return str(tmp_path)


def test_without_comfyui_the_import_succeeds_with_no_entry_point(tmp_path):
    r = _import_pack_with([str(tmp_path)])
    assert r.returncode == 0, r.stderr
    assert "NODES 0 False" in r.stdout


def test_broken_sub_import_raises_instead_of_loading_zero_nodes(tmp_path):
    """ComfyUI's V3 API is there (a stand-in) but a module the nodes need is not: the import must fail."""
    # a permissive stand-in for io (any attribute, call or subclass works), so the first failure is the missing
    # comfy.* package the nodes import, wherever the first such import is
    stand_in = ("class ComfyExtension:\n    pass\n\n\nclass _Any:\n    def __init__(self, *a, **k):\n"
                "        pass\n\n    def __getattr__(self, name):\n        return _Any()\n\n"
                "    def __call__(self, *a, **k):\n        return _Any()\n\n\nio = _Any()\nui = _Any()\n")
    r = _import_pack_with([_fake_comfy_api(tmp_path, stand_in)])
    assert r.returncode != 0 and "NODES" not in r.stdout, r.stdout
    assert "ModuleNotFoundError" in r.stderr and "'comfy" in r.stderr, r.stderr[-2000:]


def test_comfyui_missing_one_of_its_own_dependencies_raises(tmp_path):
    """``comfy_api`` exists but its V3 module fails on an import of its own: a broken ComfyUI, not "no ComfyUI"."""
    r = _import_pack_with([_fake_comfy_api(tmp_path, "import diffeditor_test_missing_dependency  # noqa\n")])
    assert r.returncode != 0 and "NODES" not in r.stdout, r.stdout
    assert "needs ComfyUI's V3 node API" in r.stderr and "diffeditor_test_missing_dependency" in r.stderr


@pytest.mark.skipif(not os.environ.get("COMFYUI_ROOT"), reason="needs COMFYUI_ROOT")
def test_comfyui_loader_registers_every_node_from_the_pack_folder(tmp_path):
    """ComfyUI's own ``nodes.load_custom_node`` on the pack folder (loaded by path, under a folder name that is
    not an identifier, as in a user's install), in a fresh interpreter: every node lands in its registry."""
    import json
    import subprocess

    sys.path.insert(0, str(ROOT / "tests" / "host"))
    import comfy_bootstrap

    from diffeditor.nodes import NODE_LIST

    link = tmp_path / "ComfyUI-DiffEditor"
    link.symlink_to(ROOT, target_is_directory=True)
    code = ("import asyncio, json, torch\n"
            "from comfy.cli_args import args\n"
            "args.cpu = not torch.cuda.is_available()\n"
            "import nodes\n"
            "before = set(nodes.NODE_CLASS_MAPPINGS)\n"
            f"ok = asyncio.run(nodes.load_custom_node({str(link)!r}))\n"
            "new = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k not in before)\n"
            "print('RESULT' + json.dumps({'ok': ok, 'new': new}))\n")
    root = comfy_bootstrap.comfy_root()
    r = subprocess.run([sys.executable, "-c", code], cwd=str(root), env=comfy_bootstrap.subprocess_env([str(root)]),
                       capture_output=True, text=True, timeout=300)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line is not None, r.stderr[-3000:]
    res = json.loads(line[len("RESULT"):])
    assert res["ok"] is True
    assert set(res["new"]) == {n.define_schema().node_id for n in NODE_LIST}
