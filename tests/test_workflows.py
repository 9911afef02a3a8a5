"""Every example workflow (UI format and API twin) is consistent with the node schemas (snapshot)."""
import json
import pathlib

import pytest

WF = pathlib.Path(__file__).resolve().parents[1] / "workflows"
SCHEMA = json.loads((WF / "schema_snapshot.json").read_text())
UI_FILES = sorted(p for p in WF.glob("*.json") if p.name != "schema_snapshot.json")
EXPECTED = {"inversion_reconstruction", "move", "resize", "drag", "appearance_replace", "paste", "erase_concept",
            "safe_guidance", "drag_loss", "image_prompt_move"}


def _check_value(node, inp, value):
    where = f"{node} input {inp['name']}"
    t = inp["type"]
    if t == "COMBO":
        if inp.get("image_upload"):
            assert (WF / "assets" / value).is_file(), f"{where}: asset {value} is not shipped in workflows/assets"
        elif inp["options"] == "files":
            assert isinstance(value, str) and value.endswith(".safetensors"), f"{where}: {value!r}"
        else:
            assert value in inp["options"], f"{where}: {value!r} not in {inp['options']}"
    elif t in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        if t == "INT":
            assert float(value).is_integer(), f"{where}: {value!r} is not an integer"
        assert inp.get("min", value) <= value <= inp.get("max", value), f"{where}: {value} out of range"
    elif t == "BOOLEAN":
        assert isinstance(value, bool), where
    elif t == "STRING":
        assert isinstance(value, str), where


def test_every_task_has_a_ui_workflow_and_an_api_twin():
    names = {p.stem for p in UI_FILES}
    assert EXPECTED <= names
    assert names == {p.stem for p in (WF / "api").glob("*.json")}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_workflow_is_valid(path):
    api = json.loads((WF / "api" / path.name).read_text())
    for nid, node in api.items():
        t = node["class_type"]
        assert t in SCHEMA, f"node {nid}: unknown type {t}"
        schema = {i["name"]: i for i in SCHEMA[t]["inputs"]}
        for name, value in node["inputs"].items():
            assert name in schema, f"node {nid} ({t}): no input named {name}"
            inp = schema[name]
            if isinstance(value, list):
                src = api[value[0]]
                out = SCHEMA[src["class_type"]]["outputs"][value[1]]
                assert out["type"] == inp["type"], f"node {nid}.{name}: {out['type']} linked into {inp['type']}"
            else:
                assert inp["widget"], f"node {nid}.{name}: a widget value for a socket input"
                _check_value(f"node {nid} ({t})", inp, value)
        missing = [n for n, i in schema.items() if i["required"] and n not in node["inputs"]]
        assert not missing, f"node {nid} ({t}): required inputs missing: {missing}"
    assert any(n["class_type"] == "SaveImage" for n in api.values())


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_its_api_twin(path):
    ui = json.loads(path.read_text())
    api = json.loads((WF / "api" / path.name).read_text())
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert set(nodes) == set(api) and ui["last_node_id"] == len(nodes)
    links = {l[0]: l for l in ui["links"]}
    assert ui["last_link_id"] == len(links)
    for nid, n in nodes.items():
        assert n["type"] == api[nid]["class_type"]
        schema = SCHEMA[n["type"]]["inputs"]
        widgets = [i for i in schema if i["widget"]]
        expected = []
        for i in widgets:
            expected.append(api[nid]["inputs"][i["name"]])
            expected += ["fixed"] if i.get("control_after_generate") else []
            expected += ["image"] if i.get("image_upload") else []
        assert n["widgets_values"] == expected, f"node {nid} widgets"
        for slot, inp in enumerate(n["inputs"]):
            lid, src, src_slot, dst, dst_slot, typ = links[inp["link"]]
            assert (dst, dst_slot) == (n["id"], slot)
            assert api[nid]["inputs"][inp["name"]] == [str(src), src_slot]
            assert typ == inp["type"] == SCHEMA[nodes[str(src)]["type"]]["outputs"][src_slot]["type"]
            assert lid in nodes[str(src)]["outputs"][src_slot]["links"]
