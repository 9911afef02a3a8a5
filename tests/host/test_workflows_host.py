"""Every workflows/api/*.json runs in a real ComfyUI server, and the schema snapshot matches the live nodes.

The server loads a thin SD15-detected checkpoint with random weights: a 3-level 320-channel UNet (so the
decoder has DiffEditor's feature levels), a random CLIP-L text encoder (so CLIPTextEncode works) and a
random TAESD. To fit a CPU budget the test shrinks the work, not the graph: the shipped assets are written
to the server's input folder at 64x64, pixel parameters (dx, dy, drag points) are scaled by the same factor
and the inversion runs 4 steps. Everything else is the committed API workflow.
"""
import json
import pathlib
import re

import pytest

WF = pathlib.Path(__file__).resolve().parents[2] / "workflows"
SIZE = 64
FACTOR = SIZE / 512


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import thin_checkpoint as tc
    from comfy_server import running_server

    ck = tc.write_thin_checkpoint(tmp_path_factory.mktemp("ckpt") / "v1-5-pruned-emaonly.safetensors",
                                  levels=3, with_clip=True)
    with running_server(tmp_path_factory.mktemp("wfserver"), ck) as srv:
        from PIL import Image

        for p in (WF / "assets").glob("*.png"):
            Image.open(p).resize((SIZE, SIZE), Image.NEAREST).save(srv["base"] / "input" / p.name)
        yield srv


def test_snapshot_matches_live_schemas():
    build = _build()
    live = build.live_schema(build.used_types())
    assert json.loads(json.dumps(live, sort_keys=True)) == json.loads((WF / "schema_snapshot.json").read_text()), \
        "workflows/schema_snapshot.json is stale: run `COMFYUI_ROOT=... python workflows/build.py`"


def shrink(graph: dict) -> dict:
    g = json.loads(json.dumps(graph))
    for node in g.values():
        ins = node["inputs"]
        if node["class_type"] == "DiffEditorInvert":
            ins["steps"] = 4
        if node["class_type"] == "KSampler":
            ins["steps"] = 4
        if node["class_type"] == "EmptyLatentImage":
            ins["width"] = ins["height"] = SIZE
        for k in ("dx", "dy"):
            if k in ins and not isinstance(ins[k], list):
                ins[k] = int(round(ins[k] * FACTOR / 8) * 8)
        if "points" in ins:
            ins["points"] = re.sub(r"\d+(\.\d+)?", lambda m: str(round(float(m.group()) * FACTOR)), ins["points"])
    return g


def _build():
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffeditor_workflow_build", WF / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


@pytest.mark.parametrize("path", sorted((WF / "api").glob("*.json")), ids=lambda p: p.stem)
def test_api_workflow_runs(server, path):
    from comfy_server import run_prompt

    if path.stem in _build().NEEDS_USER_WEIGHTS:
        pytest.skip(f"{path.stem} needs a CLIP ViT-H image encoder and the released image-prompt weights")

    hist = run_prompt(server, shrink(json.loads(path.read_text())), timeout=240)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"], indent=1)[-3000:]
    images = [img for out in hist["outputs"].values() for img in out.get("images", [])]
    assert images, "the workflow saved no image"
    assert (server["base"] / "out" / images[0]["subfolder"] / images[0]["filename"]).stat().st_size > 0
