"""Multi-turn editing: five chained moves of one object, with and without stability tracking.

    python bench/multiturn.py --n 8 --turns 5 --out bench/results/multiturn.json

Every turn inverts the previous turn's latent (its caption as the prompt), moves the object by the next
offset of a fixed cycle and hands the edited latent on; the object's position is tracked analytically.
After the last turn the image is compared with the *original* outside every region any turn was allowed to
edit (the object's old and new footprints, grown by one latent cell): that is drift the user never asked
for. Methods: ``diffeditor`` (the published preset, as every turn's edit), ``tracked`` (the same edit
inside :meth:`DiffEditorPipeline.stable_edit`, threshold ``--threshold`` dB), and ``warp_inpaint`` (the
fast path, for reference). Writes the mean/median outside PSNR per method and each run's tracking levels.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    __package__ = "diffeditor.bench"

from ..guidance.tasks import MoveSpec, make_task  # noqa: E402
from ..guidance.warp import warp_for_spec  # noqa: E402
from ..samplers.edit import preset_schedule  # noqa: E402
from ..samplers.inpaint import sample_warp_inpaint  # noqa: E402
from .editbench import _dilate, load_pipeline, psnr  # noqa: E402
from .scenes import make_scene  # noqa: E402

CYCLE = ((8, 0), (0, 8), (-8, 0), (0, -8), (8, 4))  # pixels; each a whole number of demo latent cells
METHODS = ("diffeditor", "tracked", "warp_inpaint")


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    ys, xs = ys + dy, xs + dx
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[ok], xs[ok]] = True
    return out


def chain(pipe, scene, method: str, turns: int, steps: int, threshold: float, seed: int):
    """Run ``turns`` chained moves; returns (final image, allowed region, tracking levels)."""
    mask = scene.masks()[0]
    allowed = np.zeros_like(mask)
    z = pipe.encode_image(torch.from_numpy(scene.image()[None]))
    cap = scene.caption()
    levels = []
    for t in range(turns):
        dx, dy = CYCLE[t % len(CYCLE)]
        target = _shift(mask, dx, dy)
        allowed |= _dilate(mask | target, pipe.pixels_per_latent)
        spec = MoveSpec(torch.from_numpy(mask.astype(np.float32)), float(dx), float(dy))
        traj = pipe.invert(z, cap, steps=steps, bank_window=None) if method == "warp_inpaint" else \
            pipe.invert(z, cap, steps=steps)
        if method == "warp_inpaint":
            warp = warp_for_spec(spec, tuple(z.shape[-2:]), pipe.pixels_per_latent)
            den = pipe.denoiser(cap, None, 4.0)
            with den.installed():
                z = sample_warp_inpaint(den, traj.x0, traj.sigmas, trajectory=traj, warp=warp, strength=0.5,
                                        seed=seed + t, disable=True)
        else:
            task = make_task(spec, z, pixels_per_latent=pipe.pixels_per_latent)
            sched = preset_schedule("DiffEditor", "move")
            if method == "tracked":
                z, rep = pipe.stable_edit(traj, task, cap, cfg=4.0, schedule=sched, seed=seed + t,
                                          threshold_db=threshold)
                levels.append(rep.accepted["level"])
            else:
                z = pipe.edit(traj, task, cap, cfg=4.0, schedule=sched, seed=seed + t)
        mask = target
    return pipe.decode(z)[0].numpy(), allowed, levels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=35.0, help="stability threshold, dB (latent PSNR)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe, _, _ = load_pipeline(ROOT / "models" / "demo" / "weights", False)
    methods = [m for m in a.methods.split(",") if m]
    rows = {m: [] for m in methods}
    for i in range(a.n):
        scene = make_scene(5_000_000 + a.seed * 10_000 + i, n_objects=1)
        src = scene.image()
        for m in methods:
            img, allowed, levels = chain(pipe, scene, m, a.turns, a.steps, a.threshold, a.seed * 1000 + i)
            rows[m].append({"scene": i, "outside_psnr": psnr(img, src, ~allowed), "levels": levels})
            print(f"[multiturn] scene {i} {m}: outside PSNR {rows[m][-1]['outside_psnr']:.2f} dB {levels}",
                  flush=True)
    summary = {"n": a.n, "turns": a.turns, "steps": a.steps, "seed": a.seed, "threshold_db": a.threshold,
               "cycle_px": CYCLE, "methods": {
                   m: {"outside_psnr": float(np.mean([r["outside_psnr"] for r in rs])),
                       "outside_psnr_median": float(np.median([r["outside_psnr"] for r in rs]))}
                   for m, rs in rows.items()}, "scenes": rows}
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["methods"], indent=1))


if __name__ == "__main__":
    main()
