"""Build the example workflows (UI format + API twins), their image assets and the schema snapshot.

    COMFYUI_ROOT=/path/to/ComfyUI python workflows/build.py     # refresh schema_snapshot.json from live nodes
    python workflows/build.py                                   # rebuild the JSON from the committed snapshot

Each workflow is described once (nodes, widget values by input name, links) and written as the UI format
the ComfyUI front end loads (``workflows/<name>.json``, drag onto the canvas) and the API format
``/prompt`` accepts (``workflows/api/<name>.json``). Widget order, types and links are read from
``schema_snapshot.json`` (node inputs/outputs as ComfyUI's /object_info reports them), which the default
test tier validates against and the host tier checks against the live schemas.
"""
from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SNAPSHOT = HERE / "schema_snapshot.json"
ASSETS = HERE / "assets"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CORE_NODES = ("CheckpointLoaderSimple", "CLIPTextEncode", "LoadImage", "LoadImageMask", "VAEEncode", "VAEDecode",
              "SaveImage", "EmptyLatentImage", "KSampler", "DisableNoise", "CFGGuider", "SamplerCustomAdvanced",
              "CLIPVisionLoader")
# Workflows that need weights no test machine has (a CLIP ViT-H image encoder, the released image-prompt
# weights): validated against the schemas, not run in the CPU server test.
NEEDS_USER_WEIGHTS = ("image_prompt_move",)
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# ------------------------------------------------------------------------------------------- graphs
PROMPT = "a red circle, a blue square and a green triangle on a sand background"
INVERT = dict(steps=50, scheduler="ddim_uniform", cfg=1.0, exact=False, exact_iters=10, record_kv_bank=True,
              bank_start=0.0, bank_end=1.0, kv_budget_mb=4096.0)
KNOBS = dict(preset="DiffEditor", seed=42, energy=-1.0, regional=True, guidance_end=-1.0, sde_strength=-1.0,
             sde_start=0.22, sde_end=0.4, time_travel_repeats=-1, time_travel_start=0.44, time_travel_end=0.6,
             visual_cross_attention="auto", kv_start=-1.0, kv_end=-1.0)


def _base(image="diffeditor_scene.png", prompt=PROMPT):
    return {
        "ckpt": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
        "pos": ("CLIPTextEncode", {"text": prompt, "clip": ("ckpt", 1)}),
        "neg": ("CLIPTextEncode", {"text": "", "clip": ("ckpt", 1)}),
        "image": ("LoadImage", {"image": image}),
        "encode": ("VAEEncode", {"pixels": ("image", 0), "vae": ("ckpt", 2)}),
        "invert": ("DiffEditorInvert", dict(INVERT, model=("ckpt", 0), positive=("pos", 0), negative=("neg", 0),
                                            latent=("encode", 0))),
    }


def _finish(g, latent_src, prefix):
    g["decode"] = ("VAEDecode", {"samples": (latent_src, 0), "vae": ("ckpt", 2)})
    g["save"] = ("SaveImage", {"filename_prefix": f"DiffEditor/{prefix}", "images": ("decode", 0)})
    return g


def _edit(g, spec="spec", **over):
    g["edit"] = ("DiffEditorEdit", dict(KNOBS, **dict(dict(cfg=-1.0, model=("ckpt", 0), positive=("pos", 0),
                                                           negative=("neg", 0), trajectory=("invert", 0),
                                                           spec=(spec, 0)), **over)))
    return g


def _mask(name, file):
    return {name: ("LoadImageMask", {"image": file, "channel": "red"})}


def _reference(g, image="diffeditor_reference.png"):
    g["ref_image"] = ("LoadImage", {"image": image})
    g["ref_encode"] = ("VAEEncode", {"pixels": ("ref_image", 0), "vae": ("ckpt", 2)})
    g["ref_invert"] = ("DiffEditorInvert", dict(INVERT, model=("ckpt", 0), positive=("pos", 0),
                                                negative=("neg", 0), latent=("ref_encode", 0)))
    return g


def graphs() -> dict[str, dict]:
    out = {}
    g = _base()
    g["invert"][1]["record_kv_bank"] = False
    g["reconstruct"] = ("DiffEditorReconstruct", {"model": ("ckpt", 0), "positive": ("pos", 0),
                                                  "negative": ("neg", 0), "trajectory": ("invert", 0), "cfg": 1.0})
    out["inversion_reconstruction"] = _finish(g, "reconstruct", "reconstruction")

    g = {**_base(), **_mask("object", "diffeditor_object_mask.png")}
    g["spec"] = ("DiffEditorMoveSpec", {"mask": ("object", 0), "dx": 96, "dy": 32, "scale": 1.0})
    out["move"] = _finish(_edit(g), "edit", "move")

    g = {**_base(), **_mask("object", "diffeditor_object_mask.png")}
    g["spec"] = ("DiffEditorMoveSpec", {"mask": ("object", 0), "dx": 0, "dy": 0, "scale": 1.3})
    out["resize"] = _finish(_edit(g), "edit", "resize")

    g = {**_base(), **_mask("region", "diffeditor_drag_region.png")}
    g["spec"] = ("DiffEditorDragSpec", {"points": "152,176->216,176", "mask": ("region", 0)})
    out["drag"] = _finish(_edit(g), "edit", "drag")

    g = _reference({**_base(), **_mask("object", "diffeditor_object_mask.png"),
                    **_mask("ref_object", "diffeditor_reference_mask.png")})
    g["spec"] = ("DiffEditorAppearanceSpec", {"mask": ("object", 0), "reference": ("ref_invert", 0),
                                              "ref_mask": ("ref_object", 0)})
    out["appearance_replace"] = _finish(_edit(g), "edit", "appearance")

    g = _reference({**_base(), **_mask("ref_object", "diffeditor_reference_mask.png")})
    g["spec"] = ("DiffEditorPasteSpec", {"reference": ("ref_invert", 0), "mask": ("ref_object", 0), "dx": 0,
                                         "dy": 160, "scale": 1.0})
    out["paste"] = _finish(_edit(g), "edit", "paste")

    g = {**_base(), **_mask("region", "diffeditor_drag_region.png")}
    g["drag"] = ("DiffEditorDragOptimize", {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0),
                                            "trajectory": ("invert", 0), "points": "152,176->216,176",
                                            "strength": 0.7, "steps": 80, "lr": 0.01, "r_m": 1, "r_p": 3,
                                            "lam": 0.1, "mask": ("region", 0)})
    g["noise"] = ("DisableNoise", {})
    g["guider"] = ("CFGGuider", {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "cfg": 1.0})
    g["sampler"] = ("DiffEditorSampler", {"eta": 0.0, "eta_outside": 0.0, "eta_start": 0.0, "eta_end": 1.0,
                                          "kv_trajectory": ("invert", 0), "kv_mode": "replace"})
    g["sample"] = ("SamplerCustomAdvanced", {"noise": ("noise", 0), "guider": ("guider", 0),
                                             "sampler": ("sampler", 0), "sigmas": ("drag", 1),
                                             "latent_image": ("drag", 0)})
    out["drag_loss"] = _finish(g, "sample", "drag_loss")

    g = {**_base(), **_mask("object", "diffeditor_object_mask.png")}
    g["clip_vision"] = ("CLIPVisionLoader", {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"})
    g["ip_weights"] = ("DiffEditorLoadImagePrompt", {"weights": "ip_sd15_64.safetensors"})
    g["image_prompt"] = ("DiffEditorImagePrompt", {"model": ("ckpt", 0), "clip_vision": ("clip_vision", 0),
                                                   "image": ("image", 0), "image_prompt": ("ip_weights", 0),
                                                   "scale": 0.1, "start": 0.2, "end": 0.4})
    g["spec"] = ("DiffEditorMoveSpec", {"mask": ("object", 0), "dx": 96, "dy": 32, "scale": 1.0})
    out["image_prompt_move"] = _finish(_edit(g, model=("image_prompt", 0)), "edit", "image_prompt_move")

    def generate(model_src, prefix, extra):
        g = {"ckpt": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
             "pos": ("CLIPTextEncode", {"text": "a photo of a red car on a street", "clip": ("ckpt", 1)}),
             "neg": ("CLIPTextEncode", {"text": "", "clip": ("ckpt", 1)}), **extra,
             "empty": ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
             "sample": ("KSampler", {"model": model_src, "positive": ("pos", 0), "negative": ("neg", 0),
                                     "latent_image": ("empty", 0), "seed": 42, "steps": 30, "cfg": 7.5,
                                     "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0})}
        return _finish(g, "sample", prefix)

    out["erase_concept"] = generate(("erase", 0), "erase", {
        "erase": ("DiffEditorEraseConcept", {"model": ("ckpt", 0), "clip": ("ckpt", 1), "concepts": "red",
                                             "guide": "", "preserve": "car\nstreet", "erase_scale": 1.0,
                                             "preserve_scale": 1.0, "lam": 0.5})})
    out["safe_guidance"] = generate(("safe", 0), "safe", {
        "safety": ("CLIPTextEncode", {"text": "red", "clip": ("ckpt", 1)}),
        "safe": ("DiffEditorSafeGuidance", {"model": ("ckpt", 0), "safety": ("safety", 0), "preset": "medium",
                                            "warmup_steps": 10, "guidance_scale": 1000.0, "threshold": 0.01,
                                            "momentum_scale": 0.3, "momentum_beta": 0.4})})
    return out


# ------------------------------------------------------------------------------------------ snapshot
def _norm_input(name, spec, required):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    entry = {"name": name, "required": required}
    if isinstance(kind, (list, tuple)):
        entry.update(type="COMBO", options=list(kind))
    else:
        entry["type"] = str(kind)
        if entry["type"] == "COMBO":
            entry["options"] = list(opts.get("options", []))
    for k in ("default", "min", "max", "control_after_generate", "image_upload"):
        if k in opts:
            entry[k] = opts[k]
    if entry["type"] == "COMBO" and (opts.get("image_upload") or name in ("ckpt_name", "clip_name", "weights")):
        entry["options"] = "files"  # listed from the user's folders: install-specific
    entry["widget"] = entry["type"] in WIDGET_TYPES and not opts.get("forceInput", False)
    return entry


def live_schema(node_types) -> dict:
    """The schemas of ``node_types`` from the running ComfyUI (core nodes + this pack)."""
    import nodes as comfy_nodes

    sys.path.append(str(ROOT))
    import pack_loader

    pack = pack_loader.load("diffeditor")
    import comfy_extras.nodes_custom_sampler as custom_sampler

    classes = dict(comfy_nodes.NODE_CLASS_MAPPINGS)
    classes.update(custom_sampler.NODE_CLASS_MAPPINGS)
    classes.update(pack.NODE_CLASS_MAPPINGS)
    out = {}
    for t in sorted(node_types):
        cls = classes[t]
        it = cls.INPUT_TYPES()
        ins = [_norm_input(n, s, True) for n, s in it.get("required", {}).items()]
        ins += [_norm_input(n, s, False) for n, s in it.get("optional", {}).items()]
        names = getattr(cls, "RETURN_NAMES", None) or [str(r) for r in cls.RETURN_TYPES]
        out[t] = {"inputs": ins, "outputs": [{"name": n, "type": str(r)} for n, r in zip(names, cls.RETURN_TYPES)]}
    return out


def used_types() -> set[str]:
    return {t for g in graphs().values() for t, _ in g.values()} | set(CORE_NODES)


# ------------------------------------------------------------------------------------------- writers
def _widgets(schema, t, values):
    out = []
    for i in schema[t]["inputs"]:
        if not i["widget"]:
            continue
        out.append(values[i["name"]])
        if i.get("control_after_generate"):
            out.append("fixed")
        if i.get("image_upload"):
            out.append("image")
    return out


def to_api(graph: dict) -> dict:
    ids = {k: str(n + 1) for n, k in enumerate(graph)}
    api = {}
    for k, (t, vals) in graph.items():
        inputs = {n: ([ids[v[0]], v[1]] if isinstance(v, tuple) else v) for n, v in vals.items()}
        api[ids[k]] = {"class_type": t, "inputs": inputs, "_meta": {"title": k}}
    return api


def to_ui(graph: dict, schema: dict) -> dict:
    ids = {k: n + 1 for n, k in enumerate(graph)}
    links, nodes = [], []
    out_links: dict = {}
    for k, (t, vals) in graph.items():
        for name, v in vals.items():
            if isinstance(v, tuple):
                lid = len(links) + 1
                src_t = graph[v[0]][0]
                typ = schema[src_t]["outputs"][v[1]]["type"]
                links.append([lid, ids[v[0]], v[1], ids[k], name, typ])
                out_links.setdefault((ids[v[0]], v[1]), []).append(lid)
    depth: dict = {}

    def level(k):
        if k not in depth:
            srcs = [v[0] for v in graph[k][1].values() if isinstance(v, tuple)]
            depth[k] = 0 if not srcs else 1 + max(level(s) for s in srcs)
        return depth[k]

    rows: dict = {}
    for order, (k, (t, vals)) in enumerate(graph.items()):
        col = level(k)
        row = rows.get(col, 0)
        rows[col] = row + 1
        ins = []
        for i in schema[t]["inputs"]:
            v = vals.get(i["name"])
            if isinstance(v, tuple):
                lid = next(l[0] for l in links if l[3] == ids[k] and l[4] == i["name"])
                ins.append({"name": i["name"], "type": i["type"], "link": lid})
        outs = [{"name": o["name"], "type": o["type"], "links": out_links.get((ids[k], n), []), "slot_index": n}
                for n, o in enumerate(schema[t]["outputs"])]
        nodes.append({"id": ids[k], "type": t, "title": k, "pos": [40 + 360 * col, 40 + 260 * row],
                      "size": [320, 200], "flags": {}, "order": order, "mode": 0, "inputs": ins, "outputs": outs,
                      "properties": {"Node name for S&R": t}, "widgets_values": _widgets(schema, t, vals)})
    ui_links = []
    for l in links:
        tgt = next(n for n in nodes if n["id"] == l[3])
        slot = next(n for n, i in enumerate(tgt["inputs"]) if i["name"] == l[4])
        ui_links.append([l[0], l[1], l[2], l[3], slot, l[5]])
    return {"last_node_id": len(nodes), "last_link_id": len(ui_links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"diffeditor": "built by workflows/build.py"}, "version": 0.4}


# -------------------------------------------------------------------------------------------- assets
def write_assets(size: int = 512) -> None:
    """A scene, a reference scene and masks (white = 1) rendered with the benchmark's generator."""
    import numpy as np
    from PIL import Image

    sys.path.append(str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    from diffeditor.bench import scenes

    ASSETS.mkdir(parents=True, exist_ok=True)
    s = size / scenes.CANVAS
    rng = np.random.default_rng(1)
    bg = scenes.render_background("sand", rng, size, size)
    src = scenes.Scene(bg, (scenes.Obj("circle", "red", 19 * s, 22 * s, 9 * s),
                            scenes.Obj("square", "blue", 44 * s, 44 * s, 8 * s),
                            scenes.Obj("triangle", "green", 46 * s, 16 * s, 8 * s)), "sand", 1)
    ref = scenes.Scene(scenes.render_background("sky", np.random.default_rng(2), size, size),
                       (scenes.Obj("diamond", "yellow", 24 * s, 14 * s, 8 * s),), "sky", 2)

    def save(arr, name):
        Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(ASSETS / name, optimize=True)

    save(src.image(), "diffeditor_scene.png")
    save(ref.image(), "diffeditor_reference.png")
    save(src.masks()[0].astype(np.float32), "diffeditor_object_mask.png")
    save(ref.masks()[0].astype(np.float32), "diffeditor_reference_mask.png")
    region = np.zeros((size, size), np.float32)
    region[96:256, 96:320] = 1
    save(region, "diffeditor_drag_region.png")


def main():
    import os

    if os.environ.get("COMFYUI_ROOT"):
        sys.path.insert(0, str(ROOT / "tests" / "host"))
        import comfy_bootstrap

        comfy_bootstrap.setup()
        SNAPSHOT.write_text(json.dumps(live_schema(used_types()), indent=1, sort_keys=True))
        print(f"wrote {SNAPSHOT}")
    schema = json.loads(SNAPSHOT.read_text())
    (HERE / "api").mkdir(exist_ok=True)
    for name, g in graphs().items():
        (HERE / f"{name}.json").write_text(json.dumps(to_ui(g, schema), indent=1))
        (HERE / "api" / f"{name}.json").write_text(json.dumps(to_api(g), indent=1))
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")
    write_assets()


if __name__ == "__main__":
    main()
