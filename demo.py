"""The embedded demo: move an object on the project's own demo model.

    python demo.py                       # writes out/demo.png: source | result | truth
    python demo.py --compare             # source | DiffEditor (published) | DiffEditor+ | truth
    python demo.py --seed 7 --dx 12 --dy -8 --steps 50 --preset DragonDiffusion

It generates a benchmark scene (its exact "truth" is rendered analytically), inverts it with the demo
latent diffusion model (models/demo/weights, trained by models/demo/train.py), moves one object with
the chosen preset (default: the pack's ``DiffEditor+``, which for a move warps the object and paints the
uncovered area; ``DiffEditor`` / ``DragonDiffusion`` are the published guided edits), decodes, and reports
how far the detected object landed from the truth.
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
from diffeditor.samplers.edit import PRESETS, EditStats, preset_schedule  # noqa: E402
from diffeditor.samplers.pack import PACK_PRESET  # noqa: E402

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


def edit_with(pipe, preset: str, traj, task, spec, caption: str, seed: int) -> tuple[torch.Tensor, dict]:
    """One move with ``preset`` (the pack's ``DiffEditor+`` or a published preset): the latent and its calls."""
    stats = EditStats()
    cfg = TASK_DEFAULTS["move"]["cfg"]
    if preset == PACK_PRESET:
        out = pipe.edit_pack(traj, task, spec, caption, cfg=cfg, seed=seed, stats=stats)
        return out, {"unet_calls": pipe.last_calls}
    out = pipe.edit(traj, task, caption, cfg=cfg, schedule=preset_schedule(preset, "move"), seed=seed, stats=stats)
    return out, stats.as_dict()


def object_error(result: np.ndarray, case) -> float:
    """Distance (px) from the truth's object to the nearest detected object of its colour (NaN: none found)."""
    obj = case.truth.objects[case.truth_index]
    dets = [d for d in detect(result) if d["color"] == obj.color]
    return min((float(np.hypot(d["centroid"][0] - obj.cx, d["centroid"][1] - obj.cy)) for d in dets),
               default=float("nan"))


def run(seed=0, dx=None, dy=None, steps=50, preset=PACK_PRESET, exact_iters=0, out=ROOT / "out" / "demo.png",
        weights: pathlib.Path | None = WEIGHTS, progress=True, compare=False) -> dict:
    """Move one object of a scene with ``preset``; ``compare``: also the published DiffEditor preset, side by
    side in the picture and the report (``diffeditor_*`` keys)."""
    torch.manual_seed(seed)
    case = pick_move(seed, dx, dy)
    pipe = demo_pipeline(weights, progress)
    caption = case.source.caption()
    src = torch.from_numpy(case.source_image)[None]
    t0 = time.time()
    z = pipe.encode_image(src)
    traj = pipe.invert(z, caption, steps=steps, exact_iters=exact_iters)
    t_inv = time.time() - t0
    spec = MoveSpec(torch.from_numpy(case.source_mask.astype(np.float32)), case.dx, case.dy)
    task = make_task(spec, z, pixels_per_latent=pipe.pixels_per_latent)
    keep = ~case.edit_region
    report = {"caption": caption, "dx": case.dx, "dy": case.dy, "object": case.truth.objects[case.truth_index].phrase(),
              "preset": preset, "seconds_inversion": t_inv}
    panels = [case.source_image]
    runs = [("diffeditor_", "DiffEditor")] if compare and preset != "DiffEditor" else []
    for prefix, name in runs + [("", preset)]:
        t1 = time.time()
        edited, calls = edit_with(pipe, name, traj, task, spec, caption, seed)
        t_edit = time.time() - t1
        result = pipe.decode(edited)[0].numpy()
        panels.append(result)
        report.update({f"{prefix}centroid_err_px": object_error(result, case),
                       f"{prefix}bg_psnr": psnr(result, case.source_image, keep),
                       f"{prefix}gt_psnr": psnr(result, case.truth_image), f"{prefix}seconds_edit": t_edit,
                       **{f"{prefix}{k}": v for k, v in calls.items()}})
    to_png(panels + [case.truth_image], pathlib.Path(out))
    report["png"] = str(out)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dx", type=float, default=None, help="pixels (64x64 scene); random when omitted")
    ap.add_argument("--dy", type=float, default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--preset", default=PACK_PRESET, choices=[PACK_PRESET, *PRESETS],
                    help=f"{PACK_PRESET} (the pack's preset, default) or a published preset")
    ap.add_argument("--compare", action="store_true", help="also run the published DiffEditor preset, side by side")
    ap.add_argument("--exact-iters", type=int, default=0, help="fixed-point refinements per inversion step")
    ap.add_argument("--out", default=str(ROOT / "out" / "demo.png"))
    ap.add_argument("--random-weights", action="store_true", help="untrained model (plumbing check only)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo model is tiny)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    rep = run(a.seed, a.dx, a.dy, a.steps, a.preset, a.exact_iters, a.out,
              None if a.random_weights else WEIGHTS, compare=a.compare)
    for k, v in rep.items():
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
