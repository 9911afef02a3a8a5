"""Always collected: says why the host tier is skipped, or checks the bootstrap when it runs."""
import os
import pathlib

import pytest


@pytest.mark.skipif(not os.environ.get("COMFYUI_ROOT"),
                    reason="host tier needs a ComfyUI checkout: set COMFYUI_ROOT=/path/to/ComfyUI")
def test_comfy_bootstrapped():

    import comfy.model_management as mm
    from comfy.cli_args import args

    root = pathlib.Path(os.environ["COMFYUI_ROOT"]).resolve()
    assert pathlib.Path(mm.__file__).resolve().is_relative_to(root)
    import torch
    assert args.cpu or torch.cuda.is_available()
    assert mm.get_torch_device() is not None
    import diffeditor
    assert callable(diffeditor.comfy_entrypoint) and len(diffeditor.nodes.NODE_LIST) >= 4
