"""Sweep of the warp-and-inpaint settings behind the DiffEditor+ plan (``samplers/pack.py``).

    python bench/pack_sweep.py --first 100 --n 12 --out bench/results/pack_sweep_warp.json
    python bench/pack_sweep.py --first 100 --n 12 --appearance --out bench/results/pack_sweep_appearance.json

On scenes that are *not* the edit benchmark's (default 100-111, so the preset is not tuned on the scenes it
is scored on), every (strength, grown margin) pair of :data:`VARIANTS` edits the move / resize / drag /
paste case of each scene; the per-scene metrics are written, and the median and mean error, failure rate
and PSNRs printed per task and setting.
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

from ..guidance.warp import warp_for_spec  # noqa: E402
from ..samplers.inpaint import sample_warp_inpaint  # noqa: E402
from . import editbench as E  # noqa: E402

VARIANTS = ((0.5, 0), (0.5, 1), (0.7, 0), (0.7, 1), (0.3, 1))  # (strength, grow)
TASKS = ("move", "resize", "drag", "paste")


def sweep(pipe, first: int, n: int, steps: int = 50, log=print) -> dict:
    res: dict = {}
    for task in TASKS:
        for i in range(n):
            case = E.make_case(task, first + i)
            z = pipe.encode_image(torch.from_numpy(case.source_image[None]))
            cap = case.source.caption()
            traj = pipe.invert(z, cap, steps=steps, bank_window=None)
            ref = None
            if task == "paste":
                zr = pipe.encode_image(torch.from_numpy(case.ref_image[None]))
                ref = pipe.invert(zr, cap, steps=steps, bank_window=None)
            warp = warp_for_spec(E.make_spec(case), tuple(z.shape[-2:]), pipe.pixels_per_latent,
                                 object_mask=E._object_mask(case))
            for strength, grow in VARIANTS:
                den = pipe.denoiser(case.prompt, None, 4.0)
                with den.installed():
                    out = sample_warp_inpaint(den, traj.x0, traj.sigmas, trajectory=traj, warp=warp,
                                              strength=strength, reference=ref, seed=first + i, grow=grow,
                                              disable=True)
                m = E.object_metrics(pipe.decode(out)[0].numpy(), case)
                res.setdefault(task, {}).setdefault(f"s{strength}_g{grow}", []).append(m)
        k = E.PRIMARY_ERROR[task]
        for v, rows in res[task].items():
            log(f"{task} {v}: error median {np.median([r[k] for r in rows]):.2f} mean {np.mean([r[k] for r in rows]):.2f}"
                f", fail {np.mean([E.failed(r, task) for r in rows]):.2f}, bg {np.mean([r['bg_psnr'] for r in rows]):.2f}"
                f" dB, gt {np.mean([r['gt_psnr'] for r in rows]):.2f} dB, IoU {np.mean([r['iou'] for r in rows]):.3f}")
    return res


#: anchored DiffEditor variants for appearance: the preset and each mechanism switched off
APPEARANCE_VARIANTS = {"anchored": {}, "anchored_no_sde": {"sde": None}, "anchored_no_timetravel": {"time_travel": None},
                       "anchored_global_guidance": {"regional": False}, "anchored_no_kv": {"kv_mode": None}}


def sweep_appearance(pipe, first: int, n: int, steps: int = 50, log=print) -> dict:
    from ..guidance.tasks import make_task
    from ..samplers.blend import TrajectoryAnchor
    from ..samplers.edit import preset_schedule

    res: dict = {}
    for i in range(n):
        case = E.make_case("appearance", first + i)
        z = pipe.encode_image(torch.from_numpy(case.source_image[None]))
        cap = case.source.caption()
        traj = pipe.invert(z, cap, steps=steps)
        ref = pipe.invert(pipe.encode_image(torch.from_numpy(case.ref_image[None])), cap, steps=steps)
        task = make_task(E.make_spec(case), z, reference=ref, pixels_per_latent=pipe.pixels_per_latent)
        for name, over in APPEARANCE_VARIANTS.items():
            sched = preset_schedule("DiffEditor", "appearance", **over)
            out = pipe.edit(traj, task, case.prompt, cfg=5.0, schedule=sched, seed=first + i,
                            blend=TrajectoryAnchor(traj, task.edited_region))
            res.setdefault(name, []).append(E.object_metrics(pipe.decode(out)[0].numpy(), case))
    for name, rows in res.items():
        log(f"appearance {name}: colour error median {np.median([r['color_err'] for r in rows]):.3f} mean "
            f"{np.mean([r['color_err'] for r in rows]):.3f}, fail {np.mean([E.failed(r, 'appearance') for r in rows]):.2f}"
            f", bg {np.mean([r['bg_psnr'] for r in rows]):.2f} dB, centroid median "
            f"{np.median([r['centroid_err_px'] for r in rows]):.2f} px")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=100)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--appearance", action="store_true", help="sweep the anchored guided variants of appearance")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe, _, _ = E.load_pipeline(ROOT / "models" / "demo" / "weights", False)
    res = sweep_appearance(pipe, a.first, a.n, a.steps) if a.appearance else sweep(pipe, a.first, a.n, a.steps)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = list(APPEARANCE_VARIANTS) if a.appearance else VARIANTS
    out.write_text(json.dumps({"first": a.first, "n": a.n, "steps": a.steps, "variants": variants, "rows": res},
                              indent=1))


if __name__ == "__main__":
    main()
