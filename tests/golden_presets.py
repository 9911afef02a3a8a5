"""Golden outputs of the published presets: every task x preset on the tiny seeded UNet and the demo model.

The refactors of the engine and the nodes must leave the published presets (``DiffEditor``,
``DragonDiffusion``) bit-for-bit identical. This module builds each case through the engine's public API
(``make_task``, ``preset_schedule``, ``sample_edit`` / ``DiffEditorPipeline.edit``), and

    python tests/golden_presets.py --record      # writes tests/data/golden_presets.pt (do this on the old code)

records the outputs; ``tests/test_golden_presets.py`` re-runs the cases and asserts ``torch.equal``.

CPU floating point is bitwise reproducible only for the same torch build, CPU kind and thread count: the cases
run on one thread, and the file stores a canary (one plain UNet forward) so a machine that computes the canary
differently is told so (the test skips there) instead of failing on last-bit noise.
"""
from __future__ import annotations

import hashlib
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "golden_presets.pt"
DEMO_WEIGHTS = ROOT / "models" / "demo" / "weights"
PRESETS = ("DiffEditor", "DragonDiffusion")
TASKS = ("move", "resize", "drag", "appearance", "paste")
STEPS = 10  # every mechanism of the DiffEditor preset is active at 10 steps (guidance, SDE, time travel, K,V)


def _box(H, W, y0, y1, x0, x1):
    m = torch.zeros(H, W)
    m[y0:y1, x0:x1] = 1.0
    return m


def specs(H: int, W: int) -> dict:
    """The spec of every task for an ``H x W`` image (pixels of the image the latent was encoded from)."""
    from diffeditor.guidance.tasks import AppearanceSpec, DragSpec, MoveSpec, PasteSpec

    sy, sx = H / 128, W / 128
    obj = _box(H, W, int(32 * sy), int(64 * sy), int(24 * sx), int(56 * sx))
    region = _box(H, W, int(16 * sy), int(80 * sy), int(16 * sx), int(100 * sx))
    return {
        "move": MoveSpec(obj, dx=32 * sx, dy=8 * sy),
        "resize": MoveSpec(obj, dx=0.0, dy=0.0, scale=1.3),
        "drag": DragSpec([((40 * sx, 40 * sy), (72 * sx, 48 * sy))], mask=region),
        "appearance": AppearanceSpec(obj, obj.flip(-1)),
        "paste": PasteSpec(obj.flip(-1), dx=-32 * sx, dy=16 * sy),
    }


SCHEDULE_TASK = {"move": "move", "resize": "move", "drag": "drag", "appearance": "appearance", "paste": "paste"}
CFG = {"move": 4.0, "drag": 4.0, "appearance": 5.0, "paste": 4.0}


# ----------------------------------------------------------------------------------------- tiny UNet
def tiny_cases():
    """``{(task, preset): latent}`` on the seeded tiny diffusers UNet (tests/tiny_models.py), 16x16 latents."""
    from diffeditor.adapters.diffusers_adapter import DiffusersDenoiser, DiffusersHost
    from diffeditor.guidance.tasks import make_task
    from diffeditor.samplers.edit import preset_schedule, sample_edit
    from diffeditor.samplers.hooks import EditHooks, KVBank
    from diffeditor.samplers.inversion import invert
    from diffeditor.samplers.schedule import ddim_sigmas
    from tiny_models import make_tiny_unet

    unet = make_tiny_unet()
    g = torch.Generator().manual_seed(7)
    cond, uncond = torch.randn(1, 6, 32, generator=g), torch.randn(1, 6, 32, generator=g) * 0.5
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    hooks = EditHooks()
    sig = ddim_sigmas(STEPS)
    inv = DiffusersDenoiser(unet, cond, hooks=hooks)
    src = invert(inv, x0, sig, hooks=hooks, bank=KVBank(steps=range(STEPS)), disable=True)
    ref = invert(inv, x0.flip(-1), sig, hooks=hooks, bank=KVBank(steps=range(STEPS)), disable=True)
    out = {}
    for task, spec in specs(128, 128).items():
        for preset in PRESETS:
            t = make_task(spec, x0, reference=ref if task in ("appearance", "paste") else None)
            den = DiffusersDenoiser(unet, cond, uncond, cfg=CFG[SCHEDULE_TASK[task]], hooks=hooks)
            out[(task, preset)] = sample_edit(den, torch.zeros_like(x0), sig, host=DiffusersHost(den), hooks=hooks,
                                              trajectory=src, task=t,
                                              schedule=preset_schedule(preset, SCHEDULE_TASK[task]), seed=42,
                                              disable=True)
    return out


# ---------------------------------------------------------------------------------------- demo model
def demo_weights_hash() -> str:
    h = hashlib.sha1()
    for f in sorted(DEMO_WEIGHTS.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def demo_cases():
    """``{(task, preset): latent}`` on the committed demo model through ``DiffEditorPipeline`` (64x64 images)."""
    import numpy as np

    from diffeditor.adapters.pipeline import DiffEditorPipeline
    from diffeditor.bench import scenes
    from diffeditor.guidance.tasks import make_task
    from diffeditor.models.demo.load import load_demo
    from diffeditor.samplers.edit import preset_schedule

    vae, unet, te, tok, ac = load_demo(DEMO_WEIGHTS)

    def encode_text(prompts):
        with torch.no_grad():
            return te(tok(list(prompts)))

    pipe = DiffEditorPipeline(unet, vae=vae, encode_text=encode_text, alphas_cumprod=ac)
    scene, other = scenes.make_scene(0), scenes.make_scene(1)
    z = pipe.encode_image(torch.from_numpy(scene.image())[None])
    zr = pipe.encode_image(torch.from_numpy(other.image())[None])
    src = pipe.invert(z, scene.caption(), steps=STEPS)
    ref = pipe.invert(zr, other.caption(), steps=STEPS)
    H, W = scene.height, scene.width
    obj = torch.from_numpy(scene.masks()[0].astype(np.float32))
    other_obj = torch.from_numpy(other.masks()[0].astype(np.float32))
    sp = specs(H, W)
    from diffeditor.guidance.tasks import AppearanceSpec, MoveSpec, PasteSpec

    sp["move"] = MoveSpec(obj, dx=8.0, dy=4.0)
    sp["resize"] = MoveSpec(obj, dx=0.0, dy=0.0, scale=1.3)
    sp["appearance"] = AppearanceSpec(obj, other_obj)
    sp["paste"] = PasteSpec(other_obj, dx=-4.0, dy=8.0)
    out = {}
    for task, spec in sp.items():
        for preset in PRESETS:
            t = make_task(spec, z, reference=ref if task in ("appearance", "paste") else None,
                          pixels_per_latent=pipe.pixels_per_latent)
            out[(task, preset)] = pipe.edit(src, t, scene.caption(), cfg=CFG[SCHEDULE_TASK[task]],
                                            schedule=preset_schedule(preset, SCHEDULE_TASK[task]), seed=42)
    return out


def canary() -> torch.Tensor:
    """One plain forward of the seeded tiny UNet (no pack code): equal bits here mean equal arithmetic."""
    from tiny_models import make_tiny_unet

    unet = make_tiny_unet()
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 6, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=c).sample


class one_thread:
    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *a):
        torch.set_num_threads(self.n)


def record(path: pathlib.Path = DATA) -> dict:
    with one_thread():
        data = {"torch": str(torch.__version__), "canary": canary(), "demo_weights": demo_weights_hash(),
                "tiny": {f"{t}/{p}": v for (t, p), v in tiny_cases().items()},
                "demo": {f"{t}/{p}": v for (t, p), v in demo_cases().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import pack_loader

    pack_loader.load("diffeditor")
    if "--record" in sys.argv:
        d = record()
        print(f"wrote {DATA.relative_to(ROOT)}: {len(d['tiny'])} tiny and {len(d['demo'])} demo cases")
