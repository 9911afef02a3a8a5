"""Host test tier: the pack inside a real ComfyUI (in-process tiny models and a CPU server).

Runs only when ``COMFYUI_ROOT`` points at a ComfyUI checkout (the root conftest then bootstraps it before
anything imports ComfyUI): ``COMFYUI_ROOT=/path/to/ComfyUI python -m pytest tests/host -q``.
"""
import os

import pytest

if not os.environ.get("COMFYUI_ROOT"):
    # everything but test_bootstrap.py (which reports the skip, so `pytest tests/host` exits 0)
    collect_ignore_glob = ["test_[!b]*.py"]
else:
    import torch

    import comfy_tiny as tm

    @pytest.fixture(scope="module", autouse=True)
    def _one_thread():
        """Tiny models: one intra-op thread is as fast, and avoids OpenMP oversubscription slowdowns (10-30x
        seen) on a shared, loaded CPU. Restored after each module so other test tiers are unaffected."""
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)

    @pytest.fixture(scope="session")
    def sd15_model():
        return tm.build_sd15(seed=0)

    @pytest.fixture(scope="session")
    def sdxl_model():
        return tm.build_sdxl(seed=1)

    @pytest.fixture(scope="session")
    def flow_model():
        return tm.build_flow(seed=2)

    @pytest.fixture(scope="session")
    def conds():
        """(positive, negative) random SD1.x-style conditioning, built as inference tensors."""
        return tm.random_conditioning(10), tm.random_conditioning(11, scale=0.5)

    @pytest.fixture(scope="session")
    def sdxl_conds():
        extra = {"width": 128, "height": 128, "crop_w": 0, "crop_h": 0, "target_width": 128, "target_height": 128}
        return (tm.random_conditioning(20, pooled_dim=1280, **extra),
                tm.random_conditioning(21, pooled_dim=1280, scale=0.5, **extra))

    @pytest.fixture(scope="session")
    def latent():
        return tm.random_latent(3)

    @pytest.fixture(scope="session")
    def thin_checkpoint(tmp_path_factory):
        """A thin SD15-detected checkpoint with a random TAESD VAE, for server tests (guide §8.3)."""
        import thin_checkpoint as tc

        d = tmp_path_factory.mktemp("checkpoints")
        return tc.write_thin_checkpoint(d / "diffeditor_thin_sd15.safetensors")
