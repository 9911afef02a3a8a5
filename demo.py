"""The embedded demo: move an object with DiffEditor on the project's own demo model.

    python demo.py                       # writes out/demo.png: source | result | truth
    python demo.py --seed 7 --dx 12 --dy -8 --steps 50 --preset DragonDiffusion

It generates a benchmark scene (its exact "truth" is rendered analytically), inverts it with the demo
latent diffusion model (models/demo/weights, trained by models/demo/train.py), moves one object with
the chosen preset, decodes, and reports how far the detected object landed from the truth.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import pack_loader  # noqa: E402

de = pack_loader.load("diffeditor")
from diffeditor.adapters.pipeline import DiffEditorPipeline  # noqa: E402
from diffeditor.bench import scenes  # noqa: E402
from diffeditor.bench.detector import detect  # noqa: E402
from diffeditor.guidance.official import TASK_DEFAULTS  # noqa: E402
from diffeditor.guidance.tasks import MoveSpec, make_task  # noqa: E402
from diffeditor.models.demo.load import build_random, load_demo  # noqa: E402
from diffeditor.samplers.edit import EditStats, preset_schedule  # noqa: E402

WEIGHTS = ROOT / "models" / "demo" / "weights"


def demo_pipeline(weights: pathlib.Path | None = WEIGHTS, progress: bool = True):
    """The demo model as a :class:`DiffEditorPipeline` (random weights when ``weights`` is None)."""
    if weights is None:
        vae, unet, te, tok, ac = build_random(0)
    else:
        if not (weights / "config.json").exists():
            print(f"NOTE: no trained demo weights in {weights} (train them with `python models/demo/train.py "
                  "--out models/demo/weights`); running the whole pipeline with untrained weights: the numbers "
                  "(calls, timings) are real, the picture is not meaningful.", flush=True)
            return demo_pipeline(None, progress)
        vae, unet, te, tok, ac = load_demo(weights)

    def encode_text(prompts):
        with torch.no_grad():
            return te(tok(list(prompts)))

    return DiffEditorPipeline(unet, vae=vae, encode_text=encode_text, alphas_cumprod=ac, progress=progress)


def pick_move(seed: int, dx: float | None, dy: float | None):
    """A scene and a valid move of one of its objects (the scene seed is searched upward until one fits)."""
    for s in range(seed, seed + 200):
        scene = scenes.make_scene(s)
        rng = np.random.default_rng(s)
        for i in range(len(scene.objects)):
            for _ in range(20):
                ddx = dx if dx is not None else float(rng.choice([-1, 1]) * rng.integers(8, 17))
                ddy = dy if dy is not None else float(rng.choice([-1, 1]) * rng.integers(0, 13))
                try:
                    return scenes.move(scene, i, ddx, ddy)
                except scenes.InvalidEdit:
                    continue
    raise SystemExit("no valid move found; try other --dx/--dy")


def to_png(panels: list[np.ndarray], path: pathlib.Path, zoom: int = 4) -> None:
    from PIL import Image

    gap = np.ones((panels[0].shape[0], 2, 3), np.float32)
    row = np.concatenate(sum(([p, gap] for p in panels), [])[:-1], axis=1)
    img = Image.fromarray((np.clip(row, 0, 1) * 255).round().astype(np.uint8))
    img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a - b) ** 2
    mse = float(d[mask].mean()) if mask is not None else float(d.mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def run(seed=0, dx=None, dy=None, steps=50, preset="DiffEditor", exact_iters=0, out=ROOT / "out" / "demo.png",
        weights: pathlib.Path | None = WEIGHTS, progress=True) -> dict:
    torch.manual_seed(seed)
    case = pick_move(seed, dx, dy)
    pipe = demo_pipeline(weights, progress)
    caption = case.source.caption()
    src = torch.from_numpy(case.source_image)[None]
    t0 = time.time()
    z = pipe.encode_image(src)
    traj = pipe.invert(z, caption, steps=steps, exact_iters=exact_iters)
    t_inv = time.time() - t0
    task = make_task(MoveSpec(torch.from_numpy(case.source_mask.astype(np.float32)), case.dx, case.dy), z,
                     pixels_per_latent=pipe.pixels_per_latent)
    stats = EditStats()
    t1 = time.time()
    edited = pipe.edit(traj, task, caption, cfg=TASK_DEFAULTS["move"]["cfg"],
                       schedule=preset_schedule(preset, "move"), seed=seed, stats=stats)
    t_edit = time.time() - t1
    result = pipe.decode(edited)[0].numpy()
    to_png([case.source_image, result, case.truth_image], pathlib.Path(out))
    obj = case.truth.objects[case.truth_index]
    dets = [d for d in detect(result) if d["color"] == obj.color]
    err = min((float(np.hypot(d["centroid"][0] - obj.cx, d["centroid"][1] - obj.cy)) for d in dets),
              default=float("nan"))
    keep = ~case.edit_region
    report = {"caption": caption, "dx": case.dx, "dy": case.dy, "object": obj.phrase(),
              "centroid_err_px": err, "bg_psnr": psnr(result, case.source_image, keep),
              "gt_psnr": psnr(result, case.truth_image), "seconds_inversion": t_inv, "seconds_edit": t_edit,
              **stats.as_dict(), "png": str(out)}
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dx", type=float, default=None, help="pixels (64x64 scene); random when omitted")
    ap.add_argument("--dy", type=float, default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--preset", default="DiffEditor", choices=["DiffEditor", "DragonDiffusion"])
    ap.add_argument("--exact-iters", type=int, default=0, help="fixed-point refinements per inversion step")
    ap.add_argument("--out", default=str(ROOT / "out" / "demo.png"))
    ap.add_argument("--random-weights", action="store_true", help="untrained model (plumbing check only)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo model is tiny)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    rep = run(a.seed, a.dx, a.dy, a.steps, a.preset, a.exact_iters, a.out,
              None if a.random_weights else WEIGHTS)
    for k, v in rep.items():
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
