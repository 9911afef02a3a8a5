"""Every example workflow (UI format and API twin) is consistent with the node schemas (snapshot).

No ComfyUI needed: ``workflows/schema/schema_snapshot.json`` holds the schemas (the host tier checks it against
the live nodes and runs every API workflow in a real server). The UI-format rules follow the front end
(comfyui-frontend-package 1.27): ``widgets_values`` are the widgets in input order (required, then optional),
an INT/COMBO with ``control_after_generate`` is followed by its mode (a COMBO also by a filter string), and a
required ``image_upload`` combo adds an upload button, created last and saved as ``"image"``.
"""
import importlib.util
import json
import pathlib

import pytest

WF = pathlib.Path(__file__).resolve().parents[1] / "workflows"
SCHEMA = json.loads((WF / "schema" / "schema_snapshot.json").read_text())
UI_FILES = sorted(WF.glob("*.json"))
EXPECTED = {"inversion_reconstruction", "move", "resize", "drag", "appearance_replace", "paste", "erase_concept",
            "safe_guidance", "drag_loss", "image_prompt_move", "warp_inpaint", "multi_turn", "flux_move",
            "flux_drag", "sd3_move"}
DIT_TITLES = {"flux_move": "DiffEditor - Flux - move an object", "flux_drag": "DiffEditor - Flux - drag points",
              "sd3_move": "DiffEditor - SD3 - move an object"}
LEGACY = pathlib.Path(__file__).resolve().parent / "data" / "legacy_workflows"
FRONTEND_ONLY = {"MarkdownNote", "Note"}
# DiffEditor Edit: the task its spec node describes
SPEC_TASK = {"DiffEditorMoveSpec": "move", "DiffEditorDragSpec": "drag", "DiffEditorAppearanceSpec": "appearance",
             "DiffEditorPasteSpec": "paste"}


def _build():
    spec = importlib.util.spec_from_file_location("diffeditor_workflow_build", WF / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(path):
    return json.loads(path.read_text()), json.loads((WF / "api" / path.name).read_text())


def _migrate():
    spec = importlib.util.spec_from_file_location("diffeditor_workflow_migrate", WF / "migrate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_value(where, inp, value):
    t = inp["type"]
    if t == "COMBO":
        if inp.get("image_upload"):
            assert isinstance(value, str) and (WF / "assets" / value).is_file(), \
                f"{where}: {value!r} is not shipped in workflows/assets"
        elif inp["options"] == "files":
            assert isinstance(value, str) and value.endswith(".safetensors"), f"{where}: {value!r}"
        else:
            assert value in inp["options"], f"{where}: {value!r} not in {inp['options']}"
    elif t in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        assert inp.get("min", value) <= value <= inp.get("max", value), \
            f"{where}: {value} not in [{inp.get('min')}, {inp.get('max')}]"
        if t == "INT":
            assert float(value).is_integer(), f"{where}: {value!r} is not an integer"
            step = inp.get("step", 1)
            assert step <= 1 or value % step == 0, f"{where}: {value} is not a multiple of the step {step}"
    elif t == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif t == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    else:
        raise AssertionError(f"{where}: unexpected widget type {t}")


def _ui_widgets_by_name(node):
    """Read a UI node's ``widgets_values`` back into {input name: value} by the front end's rules."""
    inputs = SCHEMA[node["type"]]["inputs"]
    values, rest = {}, list(node["widgets_values"])
    where = f"node {node['id']} ({node['type']}) widgets_values {node['widgets_values']}"
    for i in inputs:
        if not i["widget"]:
            continue
        assert rest, f"{where}: no value for {i['name']}"
        values[i["name"]] = rest.pop(0)
        if i.get("control_after_generate"):
            assert rest and rest.pop(0) in ("fixed", "increment", "decrement", "randomize"), \
                f"{where}: control_after_generate mode after {i['name']}"
            if i["type"] == "COMBO":
                assert rest and isinstance(rest.pop(0), str), f"{where}: combo filter after {i['name']}"
    if any(i.get("image_upload") for i in inputs if i["required"]):
        assert rest == ["image"], f"{where}: the upload button's value must come last"
        rest = []
    assert not rest, f"{where}: extra values {rest}"
    return values


def test_every_task_has_a_ui_workflow_and_an_api_twin():
    build = _build()
    assert set(build.NAMES) == EXPECTED == set(build.graphs())
    names = {p.stem for p in UI_FILES}
    assert names == set(build.NAMES.values()), f"missing or stale: {names ^ set(build.NAMES.values())}"
    assert names == {p.stem for p in (WF / "api").glob("*.json")}
    for title in names:  # the template browser shows the file name: a human title, valid on every OS
        assert title.startswith("DiffEditor - ") and "_" not in title, title
        assert not set(title) & set('<>:"/\\|?*'), f"{title}: not a valid file name on Windows"
    assert {k: build.NAMES[k] for k in DIT_TITLES} == DIT_TITLES


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_top_level_json_is_a_ui_workflow(path):
    """ComfyUI lists every ``workflows/*.json`` in its template browser: nothing else may live there."""
    ui = json.loads(path.read_text())
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(ui), path.name


def check_api(api: dict) -> None:
    """An API-format prompt is valid against the schema snapshot (types, links, widget values, required)."""
    for nid, node in api.items():
        t = node["class_type"]
        assert t in SCHEMA, f"node {nid}: unknown type {t}"
        schema = {i["name"]: i for i in SCHEMA[t]["inputs"]}
        for name, value in node["inputs"].items():
            assert name in schema, f"node {nid} ({t}): no input named {name}"
            inp = schema[name]
            if isinstance(value, list):
                assert len(value) == 2 and value[0] in api, f"node {nid}.{name}: bad link {value}"
                outs = SCHEMA[api[value[0]]["class_type"]]["outputs"]
                assert 0 <= value[1] < len(outs), f"node {nid}.{name}: no output {value[1]} on node {value[0]}"
                assert outs[value[1]]["type"] == inp["type"], \
                    f"node {nid}.{name}: {outs[value[1]]['type']} linked into {inp['type']}"
            else:
                assert inp["widget"], f"node {nid}.{name}: a widget value for a socket input"
                _check_value(f"node {nid} ({t}).{name}", inp, value)
        missing = [n for n, i in schema.items() if i["required"] and n not in node["inputs"]]
        assert not missing, f"node {nid} ({t}): required inputs missing: {missing}"
    assert any(n["class_type"] == "SaveImage" for n in api.values()), "no SaveImage"



@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_workflow_is_valid(path):
    check_api(_load(path)[1])


def check_ui(ui: dict) -> None:
    """A UI-format workflow is valid against the schema snapshot (links wired on both ends, sockets, widgets)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] == max(nodes)
    links = {l[0]: l for l in ui["links"]}
    assert len(links) == len(ui["links"]) and ui["last_link_id"] == max(links)
    for lid, src, src_slot, dst, dst_slot, typ in ui["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in out["links"] and inp["link"] == lid, f"link {lid} is not wired on both ends"
        assert typ == out["type"] == inp["type"], f"link {lid}: {out['type']} -> {inp['type']} ({typ})"
    for n in ui["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        assert n.get("title"), f"{where}: give it a title"
        if n["type"] in FRONTEND_ONLY:
            assert not n["inputs"] and not n["outputs"] and len(n["widgets_values"]) == 1
            continue
        schema = SCHEMA[n["type"]]
        sockets = [i for i in schema["inputs"] if not i["widget"]]
        assert [(i["name"], i["type"]) for i in n["inputs"]] == [(i["name"], i["type"]) for i in sockets], \
            f"{where}: the socket inputs must be those of the schema, in order"
        for i, s in zip(n["inputs"], sockets):
            assert i["link"] is not None or not s["required"], f"{where}: required input {i['name']} not linked"
            assert i["link"] is None or links[i["link"]][3:5] == [n["id"], n["inputs"].index(i)]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == \
               [(o["name"], o["type"]) for o in schema["outputs"]], f"{where}: outputs"
        for o in n["outputs"]:
            assert all(links[l][1:3] == [n["id"], o["slot_index"]] for l in o["links"] or [])
        for name, value in _ui_widgets_by_name(n).items():
            _check_value(f"{where}.{name}", {i["name"]: i for i in schema["inputs"]}[name], value)



@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_valid(path):
    check_ui(_load(path)[0])


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_its_api_twin(path):
    ui, api = _load(path)
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY}
    assert set(nodes) == set(api)
    links = {l[0]: l for l in ui["links"]}
    for nid, n in nodes.items():
        assert n["type"] == api[nid]["class_type"]
        assert n["title"] == api[nid]["_meta"]["title"]
        wired = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]] for i in n["inputs"]
                 if i["link"] is not None}
        assert {**wired, **_ui_widgets_by_name(n)} == api[nid]["inputs"], f"node {nid} ({n['type']})"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_layout_reads_left_to_right(path):
    ui, _ = _load(path)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for _, src, _, dst, _, _ in ui["links"]:
        assert nodes[src]["pos"][0] + nodes[src]["size"][0] <= nodes[dst]["pos"][0], \
            f"link {nodes[src]['title']} -> {nodes[dst]['title']} runs right to left"
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]]
    for a in range(len(boxes)):
        for b in range(a):
            A, B = boxes[a], boxes[b]
            assert A[2] <= B[0] or B[2] <= A[0] or A[3] <= B[1] or B[3] <= A[1], \
                f"{ui['nodes'][a]['title']} overlaps {ui['nodes'][b]['title']}"


def test_committed_files_are_the_builder_output():
    """No hand edits, no stale files: ``python workflows/build.py`` reproduces every committed workflow."""
    build = _build()
    for name, g in build.graphs().items():
        ui, api = _load(WF / f"{build.NAMES[name]}.json")
        assert build.to_ui(g, SCHEMA, name) == ui, f"{name}.json differs from build.py's output"
        assert build.to_api(g, SCHEMA, name) == api, f"api/{name}.json differs from build.py's output"
    assert build.used_types() == set(SCHEMA), "the snapshot covers exactly the node types the builder knows"


def test_snapshot_covers_every_node_type_used():
    used = {n["class_type"] for p in (WF / "api").glob("*.json") for n in json.loads(p.read_text()).values()}
    assert used <= set(SCHEMA)


def _family(api: dict) -> str:
    """"flux" (UNETLoader + DualCLIPLoader flux), "sd3" (TripleCLIPLoader) or "sd" (an SD1.5 checkpoint)."""
    types = {n["class_type"]: n for n in api.values()}
    if "DualCLIPLoader" in types:
        assert types["DualCLIPLoader"]["inputs"]["type"] == "flux" and "UNETLoader" in types
        return "flux"
    return "sd3" if "TripleCLIPLoader" in types else "sd"


def test_official_presets():
    """SD1.5: 50 DDIM steps on ddim_uniform for every inversion; Flux/SD3: 28 steps on 'simple'. Each edit's cfg
    is the task's official value, except on guidance-distilled Flux: 1 (its guidance is FluxGuidance's)."""
    from diffeditor.guidance.official import TASK_DEFAULTS

    for path in UI_FILES:
        _, api = _load(path)
        family = _family(api)
        for nid, node in api.items():
            if node["class_type"] == "DiffEditorInvert":
                want = (50, "ddim_uniform") if family == "sd" else (28, "simple")
                assert (node["inputs"]["steps"], node["inputs"]["scheduler"]) == want, path.stem
                assert node["inputs"]["cfg"] == 1.0, path.stem
            if node["class_type"] == "DiffEditorEdit":
                spec = api[node["inputs"]["spec"][0]]
                task = spec["inputs"]["task"] if spec["class_type"] == "DiffEditorCanvas" else \
                    SPEC_TASK[spec["class_type"]]
                want = 1.0 if family == "flux" else TASK_DEFAULTS[task]["cfg"]
                assert node["inputs"]["cfg"] == want, f"{path.stem}: edit cfg"
            if node["class_type"] == "EmptyLatentImage":
                assert (node["inputs"]["width"], node["inputs"]["height"]) == (512, 512), path.stem


def test_dit_workflows_load_models_the_way_their_users_do():
    """Flux: UNETLoader + DualCLIPLoader (flux) + VAELoader, FluxGuidance on the positive of the inversion and
    the edit; SD3: the checkpoint's MODEL and VAE with TripleCLIPLoader. Both edit on the DiffEditor Canvas."""
    build = _build()
    for name, title in DIT_TITLES.items():
        _, api = _load(WF / f"{title}.json")
        family = _family(api)
        assert family == name.split("_")[0]
        by_type = {}
        for nid, n in api.items():
            by_type.setdefault(n["class_type"], []).append(nid)
        edit = api[by_type["DiffEditorEdit"][0]]["inputs"]
        invert = api[by_type["DiffEditorInvert"][0]]["inputs"]
        model = api[edit["model"][0]]
        assert invert["model"] == edit["model"]
        assert api[edit["spec"][0]]["class_type"] == "DiffEditorCanvas"
        task = api[edit["spec"][0]]["inputs"]["task"]
        assert task == ("drag" if "drag" in name else "move")
        if family == "flux":
            assert model["class_type"] == "UNETLoader" and model["inputs"]["unet_name"] == build.FLUX_UNET
            assert len(by_type["VAELoader"]) == 1
            for node in (edit, invert):
                pos = api[node["positive"][0]]
                assert pos["class_type"] == "FluxGuidance" and pos["inputs"]["guidance"] == 3.5
            assert edit["cfg"] == 1.0
        else:
            assert model["class_type"] == "CheckpointLoaderSimple"
            assert model["inputs"]["ckpt_name"] == build.SD3_CKPT
            clip = api[api[edit["positive"][0]]["inputs"]["clip"][0]]
            assert clip["class_type"] == "TripleCLIPLoader"
        decode = api[by_type["VAEDecode"][0]]["inputs"]
        encode = api[by_type["VAEEncode"][0]]["inputs"]
        assert decode["vae"] == encode["vae"]
        note = build.NOTES[name]
        assert "28 steps" in note and "simple" in note and "cfg" in note


def test_edit_workflows_use_the_pack_preset_and_the_image_prompt_the_published_one():
    for path in UI_FILES:
        _, api = _load(path)
        for node in api.values():
            if node["class_type"] in ("DiffEditorEdit", "DiffEditorStableEdit"):
                want = "DiffEditor" if "image prompt" in path.stem else "DiffEditor+"
                assert node["inputs"]["preset"] == want, path.stem


def test_multi_turn_chains_three_tracked_edits():
    """Each turn edits the previous turn's result: its inversion takes that latent, its canvas shows that image."""
    path = next(p for p in UI_FILES if "chained" in p.stem)
    _, api = _load(path)
    stable = {nid: n for nid, n in api.items() if n["class_type"] == "DiffEditorStableEdit"}
    assert len(stable) == 3
    first = [nid for nid, n in stable.items() if api[n["inputs"]["trajectory"][0]]["inputs"]["latent"][0] not in stable]
    assert len(first) == 1
    nid, turns = first[0], 1
    while True:
        nxt = [k for k, n in stable.items()
               if api[n["inputs"]["trajectory"][0]]["inputs"]["latent"][0] == nid]
        if not nxt:
            break
        canvas = api[stable[nxt[0]]["inputs"]["spec"][0]]
        decoded = api[canvas["inputs"]["image"][0]]
        assert decoded["class_type"] == "VAEDecode" and decoded["inputs"]["samples"][0] == nid
        nid, turns = nxt[0], turns + 1
    assert turns == 3
    for n in stable.values():
        assert n["inputs"]["max_level"] == 3 and n["inputs"]["threshold_db"] == 35.0


def test_assets_are_shipped_small_and_all_used():
    from PIL import Image

    used = set()
    for path in UI_FILES:
        _, api = _load(path)
        used |= {n["inputs"]["image"] for n in api.values() if n["class_type"] in ("LoadImage", "LoadImageMask")}
    shipped = {p.name for p in (WF / "assets").iterdir()}
    assert used <= shipped, f"not shipped: {used - shipped}"
    assert shipped <= used, f"shipped but unused: {shipped - used}"
    for name in shipped:
        p = WF / "assets" / name
        assert p.stat().st_size < 64_000, f"{name}: keep the assets small"
        with Image.open(p) as im:
            assert im.size == (512, 512), name
            if "mask" in name or "region" in name:
                assert im.mode == "L", f"{name}: masks are grayscale (white = 1)"
                hist = im.histogram()
                assert sum(hist[1:255]) == 0, f"{name}: masks are binary"
                assert hist[0] and hist[255], f"{name}: empty or full mask"
            else:
                assert im.mode == "RGB", name


def test_thumbnail_per_workflow_is_a_real_picture():
    """ComfyUI's template browser shows ``<name>.jpg``: one per workflow, rendered (not a grey placeholder)."""
    import numpy as np
    from PIL import Image

    jpgs = {p.stem for p in WF.glob("*.jpg")}
    assert jpgs == {p.stem for p in UI_FILES}, f"missing or stale thumbnails: {jpgs ^ {p.stem for p in UI_FILES}}"
    for path in WF.glob("*.jpg"):
        assert path.stat().st_size < 120_000, f"{path.name}: keep thumbnails small"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.width >= 256 and im.height >= 192, path.name
            a = np.asarray(im, dtype=np.float32)
        assert a.std() > 25, f"{path.name}: looks like a placeholder (std {a.std():.1f})"
        assert (a.max(-1) - a.min(-1)).mean() > 12, f"{path.name}: no colour: not a rendered result"


def test_every_workflow_says_where_to_get_its_models():
    build = _build()
    for name, g in build.graphs().items():
        note = build.NOTES[name]
        for t, vals in g.values():
            for key in build.FILE_COMBOS:
                if key in vals:
                    assert vals[key] in note and "https://huggingface.co/" in note, f"{name}: {key} {vals[key]}"
        if name in build.DIT_WORKFLOWS:
            repo = "black-forest-labs/FLUX.1-dev" if name.startswith("flux") else "stabilityai/stable-diffusion-3.5"
            assert repo in note, name
        else:
            assert ("ckpt_name" not in str(g)) or "stable-diffusion-v1-5/stable-diffusion-v1-5" in note, name


# ------------------------------------------------------------------------------------------ migration
def test_migrate_ui_workflows_of_the_first_interface():
    migrate = _migrate()
    drag = migrate.migrate_ui(json.loads((LEGACY / "drag_ui.json").read_text()))
    check_ui(drag)
    edit = next(n for n in drag["nodes"] if n["type"] == "DiffEditorEdit")
    assert _ui_widgets_by_name(edit) == {"cfg": 4.0, "preset": "DiffEditor", "seed": 42, "guidance_strength": 1.0,
                                         "keep_background": False}
    assert not any(n["type"] == "DiffEditorEditOptions" for n in drag["nodes"])  # all knobs were official
    # non-default knobs get an Options node; a paste scale gets a Paste Reference before VAE Encode
    old = json.loads((LEGACY / "paste_ui.json").read_text())
    spec = next(n for n in old["nodes"] if n["type"] == "DiffEditorPasteSpec")
    spec["widgets_values"][2] = 0.8
    edit = next(n for n in old["nodes"] if n["type"] == "DiffEditorEdit")
    order = ["cfg", "preset", "seed", "seed_mode"] + migrate.OLD_KNOBS + ["keep_background"]
    assert len(order) == len(edit["widgets_values"])
    edit["widgets_values"][order.index("energy")] = 3.0
    edit["widgets_values"][order.index("time_travel_repeats")] = 2
    paste = migrate.migrate_ui(old)
    check_ui(paste)
    types = [n["type"] for n in paste["nodes"]]
    assert types.count("DiffEditorEditOptions") == 1 and types.count("DiffEditorPasteReference") == 1
    opts = _ui_widgets_by_name(next(n for n in paste["nodes"] if n["type"] == "DiffEditorEditOptions"))
    assert opts["time_travel"] == "on" and opts["time_travel_repeats"] == 2
    edit = _ui_widgets_by_name(next(n for n in paste["nodes"] if n["type"] == "DiffEditorEdit"))
    assert edit["guidance_strength"] == 2.0  # energy 3 for paste (official 1.5)
    ref = next(n for n in paste["nodes"] if n["type"] == "DiffEditorPasteReference")
    assert ref["widgets_values"] == [0.8]
    links = {l[0]: l for l in paste["links"]}
    nodes = {n["id"]: n for n in paste["nodes"]}
    assert {nodes[links[i["link"]][3]]["type"] for o in ref["outputs"] for i in
            [{"link": lid} for lid in o["links"]]} == {"VAEEncode", "DiffEditorPasteSpec"}


def test_migrate_api_prompts_of_the_first_interface():
    migrate = _migrate()
    move = migrate.migrate_api(json.loads((LEGACY / "move_api.json").read_text()))
    check_api(move)
    old = json.loads((LEGACY / "paste_api.json").read_text())
    spec_id = next(k for k, n in old.items() if n["class_type"] == "DiffEditorPasteSpec")
    edit_id = next(k for k, n in old.items() if n["class_type"] == "DiffEditorEdit")
    old[spec_id]["inputs"]["scale"] = 1.3
    old[edit_id]["inputs"].update(visual_cross_attention="concat", kv_start=0.3, sde_strength=0.0)
    new = migrate.migrate_api(old)
    check_api(new)
    opts = next(n for n in new.values() if n["class_type"] == "DiffEditorEditOptions")["inputs"]
    assert (opts["visual_cross_attention"], opts["kv_start"], opts["kv_end"]) == ("concat", 0.3, 0.72)
    assert opts["regional_sde"] == "on" and opts["sde_strength"] == 0.0
    rid = next(k for k, n in new.items() if n["class_type"] == "DiffEditorPasteReference")
    assert new[rid]["inputs"]["scale"] == 1.3 and new[spec_id]["inputs"]["mask"] == [rid, 1]
    assert migrate.migrate_api(new) == new  # idempotent
    for path in UI_FILES:  # today's workflows need no migration
        api = _load(path)[1]
        assert migrate.migrate_api(api) == api
