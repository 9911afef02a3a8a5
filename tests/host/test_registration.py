"""Registration inside a real ComfyUI: the V3 entry point, every node's schema, and a broken install."""
import asyncio
import sys

import pytest

import diffeditor


def test_entrypoint_registers_every_node_with_ids_categories_and_tooltips():
    ext = asyncio.run(diffeditor.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    assert len(nodes) >= 15
    ids = set()
    for cls in nodes:
        s = cls.define_schema()
        assert s.node_id.startswith("DiffEditor") and s.category.startswith("DiffEditor/"), s.node_id
        assert s.display_name and s.display_name.startswith("DiffEditor"), s.node_id
        ids.add(s.node_id)
        for i in s.inputs:
            assert getattr(i, "tooltip", None), f"{s.node_id}.{i.id} has no tooltip"
        for o in s.outputs:
            assert getattr(o, "tooltip", None), f"{s.node_id} output {o.id} has no tooltip"
    assert len(ids) == len(nodes)  # unique ids
    assert {"DiffEditorInvert", "DiffEditorEdit", "DiffEditorEditSampler", "DiffEditorDragOptimize"} <= ids


def test_a_broken_node_module_fails_the_import_instead_of_hiding_it(monkeypatch):
    import importlib.util
    import pathlib

    root = pathlib.Path(diffeditor.__file__).parent
    name = "diffeditor_broken_copy"
    monkeypatch.setitem(sys.modules, f"{name}.nodes.edit", None)  # importing it raises ImportError
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    with pytest.raises(ImportError):
        spec.loader.exec_module(mod)
