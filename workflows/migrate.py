"""Migrate workflows made with the first Edit-node interface to today's nodes (UI and API formats).

    python workflows/build.py --migrate old.json [new.json]     # writes new.json (default: old.migrated.json)

What changed (issue 12, "a friendlier Edit node"):

* **DiffEditor Edit / Edit Sampler** kept ``cfg`` (Edit only), ``preset``, ``seed`` and ``keep_background``;
  ``energy`` and ``kappa`` became ``guidance_strength`` (x the task's official guidance); the other knobs moved
  to the optional **DiffEditor Edit Options** node, whose defaults are the official values and which has no
  ``-1`` "auto" values (named choices ``preset`` / ``auto`` instead). A migrated workflow gets an Options node
  only where the old knobs differ from the official values, and computes exactly what it computed before
  (``samplers.edit.legacy_knobs``; the host test ``test_golden_nodes.py`` checks it bit for bit).
* **DiffEditor Paste Spec** lost ``scale`` (the reference image was never rescaled, so the object was not
  resized correctly): a scale other than 1 becomes a **DiffEditor Paste Reference** node that rescales the
  reference image and its mask before VAE Encode / Invert.

The old UI format stores widget values by position; the old widget order is written down here.
"""
from __future__ import annotations

import copy
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

OLD_KNOBS = ["energy", "kappa", "regional", "guidance_start", "guidance_end", "sde_strength", "sde_strength_outside",
             "sde_start", "sde_end", "time_travel_repeats", "time_travel_start", "time_travel_end",
             "visual_cross_attention", "kv_start", "kv_end"]
# The first interface's widgets, in order (seed is followed by its control_after_generate mode in UI files).
OLD_WIDGETS = {"DiffEditorEdit": ["cfg", "preset", "seed"] + OLD_KNOBS + ["keep_background"],
               "DiffEditorEditSampler": ["preset", "seed"] + OLD_KNOBS + ["keep_background"],
               "DiffEditorPasteSpec": ["dx", "dy", "scale"]}
SPEC_TASK = {"DiffEditorMoveSpec": "move", "DiffEditorDragSpec": "drag", "DiffEditorAppearanceSpec": "appearance",
             "DiffEditorPasteSpec": "paste"}
OPTIONS = "DiffEditorEditOptions"
OPTIONS_TYPE = "DIFFEDITOR_EDIT_OPTIONS"


def _engine():
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    from diffeditor.samplers import edit

    return edit


def convert_edit(inputs: dict, task: str) -> tuple[dict, dict | None]:
    """Old Edit / Edit Sampler inputs (by name) -> ``(new inputs, Edit Options values or None)``."""
    edit = _engine()
    old = {k: inputs[k] for k in OLD_KNOBS if k in inputs}
    knobs = edit.legacy_knobs(inputs.get("preset", "DiffEditor"), task, **old)
    new = {k: v for k, v in inputs.items() if k not in OLD_KNOBS}
    new["guidance_strength"] = knobs.guidance_strength
    new.setdefault("keep_background", False)
    options = {k: v for k, v in knobs.__dict__.items() if k != "guidance_strength"}
    return new, (options if edit.EditKnobs(**options) != edit.EditKnobs() else None)


def is_legacy(node_type: str, inputs: dict) -> bool:
    if node_type in ("DiffEditorEdit", "DiffEditorEditSampler"):
        return any(k in inputs for k in OLD_KNOBS)
    return node_type == "DiffEditorPasteSpec" and "scale" in inputs


# ----------------------------------------------------------------------------------------------- API format
def migrate_api(prompt: dict) -> dict:
    """An API-format prompt (``{id: {"class_type", "inputs"}}``) in today's interface (a new dict)."""
    p = copy.deepcopy(prompt)
    next_id = max((int(k) for k in p if str(k).isdigit()), default=0) + 1
    for nid in list(p):
        node = p[nid]
        t, ins = node["class_type"], node["inputs"]
        if not is_legacy(t, ins):
            continue
        if t == "DiffEditorPasteSpec":
            scale = float(ins.pop("scale"))
            if scale != 1.0:
                image, encode = _paste_image_source(p, nid)
                rid = str(next_id)
                next_id += 1
                p[rid] = {"class_type": "DiffEditorPasteReference",
                          "inputs": {"image": image, "mask": ins["mask"], "scale": scale},
                          "_meta": {"title": "DiffEditor Paste Reference (scale)"}}
                p[encode]["inputs"]["pixels"] = [rid, 0]
                ins["mask"] = [rid, 1]
            continue
        new, options = convert_edit(ins, _task_of(p, ins))
        if options is not None:
            oid = str(next_id)
            next_id += 1
            p[oid] = {"class_type": OPTIONS, "inputs": options, "_meta": {"title": "DiffEditor Edit Options"}}
            new["options"] = [oid, 0]
        node["inputs"] = new
    return p


def _task_of(p: dict, inputs: dict) -> str:
    spec = inputs.get("spec")
    t = p.get(str(spec[0]), {}).get("class_type") if isinstance(spec, list) else None
    if t not in SPEC_TASK:
        raise ValueError(f"cannot tell the edit's task: its spec input comes from {t!r}, not a DiffEditor spec node")
    return SPEC_TASK[t]


def _paste_image_source(p: dict, spec_id: str):
    """``(link of the reference IMAGE, id of its VAE Encode)`` behind a Paste Spec's reference trajectory."""
    try:
        inv = p[str(p[spec_id]["inputs"]["reference"][0])]
        enc_id = str(inv["inputs"]["latent"][0])
        enc = p[enc_id]
        if enc["class_type"] != "VAEEncode":
            raise KeyError
        return enc["inputs"]["pixels"], enc_id
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"DiffEditor Paste Spec {spec_id} has scale != 1 but its reference is not 'image -> VAE "
                         "Encode -> DiffEditor Invert'; add a DiffEditor Paste Reference node by hand") from None


# ------------------------------------------------------------------------------------------------ UI format
def _widget_names(node_type: str, values: list) -> dict:
    names = OLD_WIDGETS[node_type]
    out, rest = {}, list(values)
    for n in names:
        if not rest:
            break
        out[n] = rest.pop(0)
        if n == "seed" and rest and rest[0] in ("fixed", "increment", "decrement", "randomize"):
            out["control_after_generate"] = rest.pop(0)
    return out


def migrate_ui(workflow: dict) -> dict:
    """A UI-format workflow (front end JSON) in today's interface (a new dict)."""
    w = copy.deepcopy(workflow)
    nodes = {n["id"]: n for n in w["nodes"]}
    links = {l[0]: l for l in w["links"]}
    state = {"node": max(nodes, default=0), "link": max(links, default=0)}

    def new_link(src, src_slot, dst, dst_slot, typ):
        state["link"] += 1
        lid = state["link"]
        link = [lid, src, src_slot, dst, dst_slot, typ]
        w["links"].append(link)
        links[lid] = link
        nodes[src]["outputs"][src_slot].setdefault("links", [])
        nodes[src]["outputs"][src_slot]["links"] = (nodes[src]["outputs"][src_slot]["links"] or []) + [lid]
        return lid

    def add_node(node_type, title, pos, size, inputs, outputs, widgets):
        state["node"] += 1
        n = {"id": state["node"], "type": node_type, "title": title, "pos": pos, "size": size, "flags": {},
             "order": len(w["nodes"]), "mode": 0, "inputs": inputs, "outputs": outputs,
             "properties": {"Node name for S&R": node_type}, "widgets_values": widgets}
        w["nodes"].append(n)
        nodes[n["id"]] = n
        return n

    def source_of(node, name):
        i = next((i for i in node["inputs"] if i["name"] == name), None)
        return None if i is None or i.get("link") is None else links[i["link"]]

    for node in list(w["nodes"]):
        t = node["type"]
        if t not in OLD_WIDGETS:
            continue
        vals = _widget_names(t, node.get("widgets_values") or [])
        if not is_legacy(t, vals):
            continue
        if t == "DiffEditorPasteSpec":
            scale = float(vals.get("scale", 1.0))
            node["widgets_values"] = [vals["dx"], vals["dy"]]
            if scale != 1.0:
                _ui_paste_reference(node, scale, nodes, links, source_of, add_node, new_link)
            continue
        spec_link = source_of(node, "spec")
        task = SPEC_TASK.get(nodes[spec_link[1]]["type"]) if spec_link else None
        if task is None:
            raise ValueError(f"node {node['id']} ({t}): cannot tell the edit's task (spec not linked to a spec node)")
        new, options = convert_edit(vals, task)
        mode = new.pop("control_after_generate", "fixed")
        node["widgets_values"] = ([new["cfg"]] if t == "DiffEditorEdit" else []) + \
            [new["preset"], new["seed"], mode, new["guidance_strength"], new["keep_background"]]
        slot = len(node["inputs"])
        node["inputs"].append({"name": "options", "type": OPTIONS_TYPE, "link": None})
        if options is not None:
            x, y = node["pos"]
            opt = add_node(OPTIONS, "DiffEditor Edit Options", [x, y + node["size"][1] + 60], [340, 520], [],
                           [{"name": "options", "type": OPTIONS_TYPE, "links": [], "slot_index": 0}],
                           list(options.values()))
            node["inputs"][slot]["link"] = new_link(opt["id"], 0, node["id"], slot, OPTIONS_TYPE)
    w["last_node_id"], w["last_link_id"] = state["node"], state["link"]
    return w


def _ui_paste_reference(spec, scale, nodes, links, source_of, add_node, new_link):
    ref = source_of(spec, "reference")
    inv = nodes[ref[1]] if ref else None
    lat = source_of(inv, "latent") if inv else None
    enc = nodes[lat[1]] if lat else None
    pix = source_of(enc, "pixels") if enc and enc["type"] == "VAEEncode" else None
    mask = source_of(spec, "mask")
    if pix is None or mask is None:
        raise ValueError(f"DiffEditor Paste Spec {spec['id']} has scale != 1 but its reference is not 'image -> VAE "
                         "Encode -> DiffEditor Invert'; add a DiffEditor Paste Reference node by hand")
    x, y = enc["pos"]
    r = add_node("DiffEditorPasteReference", "DiffEditor Paste Reference (scale)", [x, y - 200], [340, 130],
                 [{"name": "image", "type": "IMAGE", "link": None}, {"name": "mask", "type": "MASK", "link": None}],
                 [{"name": "image", "type": "IMAGE", "links": [], "slot_index": 0},
                  {"name": "mask", "type": "MASK", "links": [], "slot_index": 1}], [scale])
    for old, slot_name, slot in ((pix, "image", 0), (mask, "mask", 1)):  # sources now feed the new node
        dst_node, dst_slot = nodes[old[3]], old[4]
        old[3], old[4] = r["id"], slot
        r["inputs"][slot]["link"] = old[0]
        lid = new_link(r["id"], slot, dst_node["id"], dst_slot, old[5])
        dst_node["inputs"][dst_slot]["link"] = lid


def migrate_file(src: pathlib.Path, dst: pathlib.Path | None = None) -> pathlib.Path:
    data = json.loads(pathlib.Path(src).read_text())
    out = migrate_ui(data) if "nodes" in data else migrate_api(data)
    dst = pathlib.Path(dst) if dst else pathlib.Path(src).with_suffix(".migrated.json")
    dst.write_text(json.dumps(out, indent=1) + "\n")
    return dst
