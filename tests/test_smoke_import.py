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
