"""Server smoke test: a headless CPU ComfyUI loads the pack by path and runs a graph with every node.

The pack is symlinked into a temporary custom_nodes folder (next to a test-only node that makes random
CONDITIONING); checkpoints point at a thin SD15-detected checkpoint with a random TAESD VAE.
"""
import json

import pytest

from comfy_server import PACK_FOLDER, run_prompt, running_server
from diffeditor.nodes import NODE_LIST


@pytest.fixture(scope="module")
def server(tmp_path_factory, thin_checkpoint):
    with running_server(tmp_path_factory.mktemp("server"), thin_checkpoint) as srv:
        yield srv


def test_pack_loads_and_registers_every_node(server):
    text = server["log"].read_text()
    failed = [l for l in text.splitlines() if "IMPORT FAILED" in l]
    assert not [l for l in failed if PACK_FOLDER in l or "diffeditor_testing_nodes" in l], "\n".join(failed)
    info = server["info"]
    for cls in NODE_LIST:
        sid = cls.define_schema().node_id
        assert sid in info, f"{sid} missing from /object_info"
        node = info[sid]
        assert node["category"].startswith("DiffEditor/")
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{sid}.{name} has no tooltip"
        assert all(node["output_tooltips"]), sid
    assert "DIFFEDITOR_TRAJECTORY" in info["DiffEditorInvert"]["output"]


def _graph(ckpt, blend_mask_value=1.0):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "DiffEditorTestRandomConditioning", "inputs": {"seed": 1, "scale": 1.0}},
        "3": {"class_type": "DiffEditorTestRandomConditioning", "inputs": {"seed": 2, "scale": 0.5}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x8040C0}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "DiffEditorInvert", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["5", 0], "steps": 4,
            "scheduler": "ddim_uniform", "cfg": 1.0, "exact": True, "exact_iters": 2, "record_kv_bank": True,
            "bank_start": 0.0, "bank_end": 1.0, "kv_budget_mb": 64.0}},
        "7": {"class_type": "DiffEditorReconstruct", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "trajectory": ["6", 0], "cfg": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "diffeditor_rec"}},
        "10": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "11": {"class_type": "SolidMask", "inputs": {"value": blend_mask_value, "width": 64, "height": 64}},
        "12": {"class_type": "DiffEditorSampler", "inputs": {
            "eta": 0.3, "eta_outside": 0.0, "eta_start": 0.0, "eta_end": 1.0, "trajectory": ["6", 0],
            "eta_mask": ["10", 0]}},
        "13": {"class_type": "DiffEditorMaskedBlend", "inputs": {
            "sampler": ["12", 0], "trajectory": ["6", 0], "mask": ["11", 0], "feather_px": 4.0,
            "schedule": "every step", "fraction": 1.0}},
        "14": {"class_type": "CFGGuider", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 2.0}},
        "15": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "16": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["15", 0], "guider": ["14", 0], "sampler": ["13", 0], "sigmas": ["6", 2],
            "latent_image": ["5", 0]}},
        "17": {"class_type": "VAEDecode", "inputs": {"samples": ["16", 0], "vae": ["1", 2]}},
        "18": {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "diffeditor_edit"}},
    }


def test_graph_runs_in_the_real_executor(server):
    """Invert (exact, K,V bank) -> Reconstruct, and DiffEditor Sampler inside Masked Blend inside
    SamplerCustomAdvanced, all on inference-mode weights loaded by CheckpointLoaderSimple."""
    hist = run_prompt(server, _graph(server["ckpt"]))
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"], indent=1)[-3000:]
    assert hist["outputs"]["9"]["images"] and hist["outputs"]["18"]["images"]


def test_runtime_validation_error_reaches_the_user(server):
    hist = run_prompt(server, _graph(server["ckpt"], blend_mask_value=0.0))
    assert hist["status"]["status_str"] == "error"
    errors = [m for m in hist["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "mask is empty" in errors[0][1]["exception_message"]
    assert errors[0][1]["node_type"] == "DiffEditorMaskedBlend"


def test_kv_budget_error_is_a_plain_value_error_naming_the_inputs(server):
    """Loaded by path, the pack's module names are file-system paths: the error class must be a builtin one."""
    g = _graph(server["ckpt"])
    g["6"]["inputs"]["kv_budget_mb"] = 1.0
    g["4"]["inputs"].update(width=1024, height=1024)  # a 128x128 latent: the bank cannot fit in 1 MiB
    hist = run_prompt(server, g)
    assert hist["status"]["status_str"] == "error"
    err = [m for m in hist["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert err["node_type"] == "DiffEditorInvert" and err["exception_type"] == "ValueError", err["exception_type"]
    assert err["exception_message"].startswith("kv_budget_mb: ") and "bank_start/bank_end" in err["exception_message"]
    assert run_prompt(server, _graph(server["ckpt"]))["status"]["status_str"] == "success"  # the server lives on
