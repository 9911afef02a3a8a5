"""Every workflows/api/*.json runs in a real ComfyUI server, and the schema snapshot matches the live nodes.

The server (``main.py --cpu``, the pack symlinked into a temp custom_nodes folder) loads a thin SD15-detected
checkpoint with random weights, written at test time (never committed): a 3-level 320-channel UNet (so the
decoder has DiffEditor's feature levels), a random CLIP-L text encoder built from ComfyUI's own SD1 CLIP class
(so CLIPTextEncode works) and a random TAESD. To fit a 2-core CPU budget the test shrinks the work, not the
graph: the shipped assets are copied into the server's input folder at 64x64, pixel parameters (dx, dy, drag
points) are scaled by the same factor (a DiffEditor Canvas scales its editor coordinates itself), and
inversions/samplers/optimisers run a few steps. Everything else is the committed API workflow. The images are
random noise; the test checks plumbing, not quality.
"""
import importlib.util
import json
import pathlib
import re
import time
import urllib.parse
import urllib.request

import pytest

WF = pathlib.Path(__file__).resolve().parents[2] / "workflows"
SNAPSHOT = WF / "schema" / "schema_snapshot.json"
SIZE = 64
FACTOR = SIZE / 512
STEPS = 4
PROMPT_TIMEOUT = 240  # seconds per workflow; they take 1-6 s each on 2 cores


def _build():
    spec = importlib.util.spec_from_file_location("diffeditor_workflow_build", WF / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import thin_checkpoint as tc
    from comfy_server import running_server
    from PIL import Image

    ck = tc.write_thin_checkpoint(tmp_path_factory.mktemp("ckpt") / _build().CHECKPOINT, levels=3, with_clip=True)
    with running_server(tmp_path_factory.mktemp("wfserver"), ck) as srv:
        for p in (WF / "assets").glob("*.png"):
            Image.open(p).resize((SIZE, SIZE), Image.NEAREST).save(srv["base"] / "input" / p.name)
        yield srv


def test_snapshot_matches_live_schemas():
    build = _build()
    live = json.loads(json.dumps(build.live_schema(build.used_types()), sort_keys=True))
    assert live == json.loads(SNAPSHOT.read_text()), \
        "workflows/schema/schema_snapshot.json is stale: run `COMFYUI_ROOT=... python workflows/build.py`"


def test_snapshot_matches_object_info(server):
    """What the front end builds the widgets from (/object_info, with input_order) is what the snapshot says."""
    build = _build()
    snapshot = json.loads(SNAPSHOT.read_text())
    for t, entry in snapshot.items():
        info = server["info"][t]
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", [])
        assert names == [i["name"] for i in entry["inputs"]], f"{t}: input order"
        for i in entry["inputs"]:
            section = "required" if i["required"] else "optional"
            live = build._norm_input(i["name"], info["input"][section][i["name"]], i["required"])
            assert json.loads(json.dumps(live)) == i, f"{t}.{i['name']}"
        assert info["output"] == [o["type"] for o in entry["outputs"]], f"{t}: output types"


def test_workflows_are_listed_as_templates(server):
    """ComfyUI lists ``workflows/*.json`` in its template browser (legacy folder name, still served in 0.3.64)."""
    from comfy_server import PACK_FOLDER, get_json

    listed = get_json(server["url"] + "/workflow_templates").get(PACK_FOLDER, [])
    assert sorted(listed) == sorted(p.stem for p in WF.glob("*.json"))
    name = _build().NAMES["move"]  # a human title with spaces: the front end requests it URL-encoded
    for ext, check in ((".json", lambda b: json.loads(b) == json.loads((WF / f"{name}.json").read_text())),
                       (".jpg", lambda b: b == (WF / f"{name}.jpg").read_bytes())):
        url = f"{server['url']}/api/workflow_templates/{PACK_FOLDER}/{urllib.parse.quote(name + ext)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert check(r.read()), url


def shrink(graph: dict) -> dict:
    g = json.loads(json.dumps(graph))
    for node in g.values():
        ins, t = node["inputs"], node["class_type"]
        if t in ("DiffEditorInvert", "KSampler", "DiffEditorDragOptimize"):
            ins["steps"] = STEPS
        if t == "DiffEditorSafeGuidance":
            ins["warmup_steps"] = 1
        if t == "EmptyLatentImage":
            ins["width"] = ins["height"] = SIZE
        # A DiffEditor Canvas whose editor state records its image size scales its own coordinates (and dx, dy)
        # to the image it gets: leave those to the node, so that path runs too.
        canvas_scales_itself = t == "DiffEditorCanvas" and '"size"' in ins.get("editor", "")
        for k in ("dx", "dy"):
            if k in ins and not isinstance(ins[k], list) and not canvas_scales_itself:
                ins[k] = int(round(ins[k] * FACTOR / 8) * 8)
        if "points" in ins:
            ins["points"] = re.sub(r"\d+(\.\d+)?", lambda m: str(round(float(m.group()) * FACTOR)), ins["points"])
    return g


@pytest.mark.parametrize("path", sorted((WF / "api").glob("*.json")), ids=lambda p: p.stem)
def test_api_workflow_runs(server, path):
    from comfy_server import run_prompt

    build = _build()
    if path.stem in {build.NAMES[k] for k in build.NEEDS_USER_WEIGHTS}:
        pytest.skip(f"{path.stem} needs a CLIP ViT-H image encoder and the released image-prompt weights")
    if path.stem in {build.NAMES[k] for k in build.DIT_WORKFLOWS}:
        pytest.skip(f"{path.stem} needs a T5-XXL text encoder no test machine can build; tests/host/test_dit_nodes.py "
                    "runs its graph on tiny in-process Flux/SD3 MODELs")
    t0 = time.time()
    hist = run_prompt(server, shrink(json.loads(path.read_text())), timeout=PROMPT_TIMEOUT)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"], indent=1)[-3000:]
    images = [img for out in hist["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert images, "the workflow saved no image"  # (previews, e.g. the canvas', go to temp/)
    png = server["base"] / "out" / images[0]["subfolder"] / images[0]["filename"]
    assert png.stat().st_size > 0
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (SIZE, SIZE)
    print(f"{path.stem}: {time.time() - t0:.1f} s")
