"""Ground-truth editing benchmark on the demo model.

    python bench/editbench.py --seed 0 --n 32 --out bench/results/editbench.json

For each of N generated scenes and each task, the exact truth is rendered analytically (``bench/scenes``),
every method edits the source on the demo model, and the colour detector (``bench/detector``) scores
the result. Writes PATH (means), PATH with ``.scenes.json`` (per-scene values), ``.md`` (table) and
``.png`` (source | truth | each method, first scene of each task).

Tasks: move, resize, drag (rigid drags: every handle moves by the same vector, so the truth is exact),
appearance, paste, erase. Methods: ``baseline`` (latent copy-paste at the clean level + SDEdit
harmonisation at strength 0.5, locked to the source trajectory outside the edit mask), ``dragondiffusion``,
``diffeditor`` and its ablations ``diffeditor_no_sde``, ``diffeditor_no_timetravel``,
``diffeditor_global_guidance``, ``diffeditor_no_kv``, ``diffeditor_anchored`` (the preset with the
pack's trajectory-anchored blending outside the edit mask, the lock the baseline gets too), and
``warp_inpaint`` (move/resize/drag/paste: the object warped on the latent grid, only the uncovered hole
painted, ``samplers/inpaint.py``); drag adds ``dragloss`` (DragDiffusion) and ``aldd`` (GoodDrag's
alternating drag and denoising) when the drag optimiser is available. Erase compares ``baseline`` (regenerate from the
inverted z_T with the concept dropped from the prompt), ``uce`` (closed-form erasure of the colour word)
and ``sld`` (safe guidance away from it). The demo model has no image encoder, so DiffEditor's image
prompt is off in every method.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    __package__ = "diffeditor.bench"

from ..adapters.diffusers_adapter import DiffusersDenoiser  # noqa: E402
from ..adapters.diffusers_erasure import patched, uce_patch  # noqa: E402
from ..adapters.pipeline import DiffEditorPipeline  # noqa: E402
from ..guidance.official import TASK_DEFAULTS  # noqa: E402
from ..guidance.sld import SLDState, sld_guidance_sigma, sld_preset  # noqa: E402
from ..guidance.tasks import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, make_task  # noqa: E402
from ..guidance.uce import concept_embedding  # noqa: E402
from ..samplers.blend import TrajectoryAnchor  # noqa: E402
from ..samplers.edit import EditStats, preset_schedule  # noqa: E402
from ..samplers.sampling import NoiseSource, sample_diffeditor  # noqa: E402
from ..samplers.trajectory import EditTrajectory  # noqa: E402
from . import scenes  # noqa: E402
from .detector import detect  # noqa: E402

TASKS = ("move", "resize", "drag", "appearance", "paste", "erase")
EDIT_METHODS = ("baseline", "dragondiffusion", "diffeditor", "diffeditor_no_sde", "diffeditor_no_timetravel",
                "diffeditor_global_guidance", "diffeditor_no_kv", "diffeditor_anchored", "warp_inpaint", "pack")
#: methods that only apply to some tasks (the others run on every edit task)
METHOD_TASKS = {"warp_inpaint": ("move", "resize", "drag", "paste"), "aldd": ("drag",)}
#: warp_inpaint: the share of the schedule it samples (the hole is painted from this level down)
WARP_STRENGTH = 0.5
ERASE_METHODS = ("baseline", "uce", "sld")
SCHEDULE_TASK = {"move": "move", "resize": "move", "drag": "drag", "appearance": "appearance", "paste": "paste"}
CASE_KIND = {"move": "move", "resize": "resize", "drag": "drag_move", "appearance": "appearance",
             "paste": "paste"}
ABLATION = {"diffeditor_no_sde": dict(sde=None), "diffeditor_no_timetravel": dict(time_travel=None),
            "diffeditor_global_guidance": dict(regional=False), "diffeditor_no_kv": dict(kv_mode=None)}


def dragloss_available() -> bool:
    try:
        from ..samplers import drag  # noqa: F401
        return hasattr(drag, "optimize_drag")
    except ImportError:
        return False


# ------------------------------------------------------------------------------------------- metrics
def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(d[mask].mean()) if mask is not None and mask.any() else float(d.mean())
    return 99.0 if mse <= 1e-10 else 10 * math.log10(1.0 / mse)


def _object_detection(image, color, cx, cy):
    dets = [d for d in detect(image, shapes=False) if d["color"] == color]
    if not dets:
        return None
    return min(dets, key=lambda d: math.hypot(d["centroid"][0] - cx, d["centroid"][1] - cy))


def object_metrics(result: np.ndarray, case: scenes.EditCase) -> dict:
    obj = case.truth.objects[case.truth_index]
    truth_mask = case.target_mask
    det = _object_detection(result, obj.color, obj.cx, obj.cy)
    out = {"bg_psnr": psnr(result, case.source_image, ~case.edit_region),
           "gt_psnr": psnr(result, case.truth_image)}
    if det is None:  # the object vanished: worst-case geometry
        out.update(centroid_err_px=float(math.hypot(*result.shape[:2])), iou=0.0)
    else:
        m = det["mask"]
        out.update(centroid_err_px=float(math.hypot(det["centroid"][0] - obj.cx, det["centroid"][1] - obj.cy)),
                   iou=float((m & truth_mask).sum() / max(1, (m | truth_mask).sum())))
    if case.kind == "drag_move":
        src = case.source.objects[case.index]
        if det is None:
            out["point_err_px"] = out["centroid_err_px"]
        else:  # rigid drag: every handle moves with the object
            moved = np.array(det["centroid"]) - np.array([src.cx, src.cy])
            out["point_err_px"] = float(np.linalg.norm(moved - np.array([case.dx, case.dy])))
    if case.kind == "appearance":
        out["color_err"] = float(np.linalg.norm(result[truth_mask] - case.truth_image[truth_mask], axis=-1).mean())
    return out


def erase_metrics(result: np.ndarray, case: scenes.EditCase) -> dict:
    still = any(d["color"] == case.concept for d in detect(result, shapes=False))
    keep = [m for k, m in enumerate(case.source.masks()) if k not in case.params["removed"]]
    coll = float(np.mean([np.linalg.norm(result[m] - case.source_image[m], axis=-1).mean() for m in keep])) \
        if keep else 0.0
    return {"concept_rate": float(still), "collateral": coll, "gt_psnr": psnr(result, case.truth_image)}


# ------------------------------------------------------------------------------------------- methods
def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def make_spec(case: scenes.EditCase):
    t = lambda m: torch.from_numpy(np.asarray(m, np.float32))  # noqa: E731
    if case.kind == "move":
        return MoveSpec(t(case.source_mask), case.dx, case.dy)
    if case.kind == "resize":
        return MoveSpec(t(case.source_mask), 0.0, 0.0, scale=case.scale)
    if case.kind == "drag_move":
        pts = [(tuple(map(float, h)), tuple(map(float, g))) for h, g in zip(case.handles, case.targets)]
        return DragSpec(pts, mask=t(_dilate(case.edit_region, 4)))
    if case.kind == "appearance":
        return AppearanceSpec(t(case.source_mask), t(case.ref_mask))
    if case.kind == "paste":
        return PasteSpec(t(case.ref_mask), case.dx, case.dy)
    raise ValueError(case.kind)


def sliced(traj: EditTrajectory, start: int) -> EditTrajectory:
    return dataclasses.replace(traj, latents=traj.latents[start:], sigmas=traj.sigmas[start:], bank=None)


def run_baseline(pipe, traj, task, prompt, cfg, seed) -> tuple[torch.Tensor, int]:
    """Copy-paste in latent space at the clean level, then SDEdit from strength 0.5, masked."""
    start = traj.steps // 2
    z0 = traj.x0
    ref0 = None if task.reference is None else task.reference.x0
    init = task.init_latent(z0, ref0)
    sig = traj.sigmas.to(z0.device)
    x = init + float(sig[start]) * NoiseSource(seed)(init)
    part = sliced(traj, start)
    den = pipe.denoiser(prompt, None, cfg)
    out = sample_diffeditor(den, x, sig[start:], blend=TrajectoryAnchor(part, task.edited_region), disable=True)
    return out, den.calls


def run_guided(pipe, traj, task, prompt, cfg, method, task_name, seed) -> tuple[torch.Tensor, int]:
    preset = "DragonDiffusion" if method == "dragondiffusion" else "DiffEditor"
    sched = preset_schedule(preset, SCHEDULE_TASK[task_name], **ABLATION.get(method, {}))
    stats = EditStats()
    blend = TrajectoryAnchor(traj, task.edited_region) if method == "diffeditor_anchored" else None
    out = pipe.edit(traj, task, prompt, cfg=cfg, schedule=sched, seed=seed, stats=stats, blend=blend)
    nfe = stats.cfg_forwards + stats.feature_forwards + stats.reference_forwards + stats.renoise_forwards
    return out, nfe


def _object_mask(case):
    """The region a user paints for a drag's warp: the object grown by 2 px (None for other tasks)."""
    if case.kind != "drag_move":
        return None
    return torch.from_numpy(_dilate(case.source_mask, 2).astype(np.float32))


def run_warp_inpaint(pipe, traj, task, case, prompt, cfg, seed) -> tuple[torch.Tensor, int]:
    """The fast path: warp the object on the latent grid, paint only the uncovered hole (no guidance). For a
    drag the region that moves is the object as the user would paint it (its mask grown by 2 px)."""
    from ..guidance.warp import warp_for_spec
    from ..samplers.inpaint import sample_warp_inpaint

    warp = warp_for_spec(make_spec(case), tuple(traj.shape[-2:]), pipe.pixels_per_latent,
                         object_mask=_object_mask(case))
    den = pipe.denoiser(prompt, None, cfg)
    with den.installed():
        out = sample_warp_inpaint(den, traj.x0, traj.sigmas.to(traj.x0.device), trajectory=traj, warp=warp,
                                  strength=WARP_STRENGTH, reference=task.reference, seed=seed, disable=True)
    return out, den.calls


def run_pack(pipe, traj, task, case, prompt, cfg, seed) -> tuple[torch.Tensor, int]:
    """The pack's DiffEditor+ preset (samplers/pack.py) through the headless pipeline."""
    out = pipe.edit_pack(traj, task, make_spec(case), prompt, cfg=cfg, seed=seed, object_mask=_object_mask(case))
    return out, pipe.last_calls


def run_dragloss(pipe, traj, task, case, prompt, seed) -> tuple[torch.Tensor, int]:
    from ..adapters.diffusers_adapter import DiffusersHost
    from ..samplers.drag import optimize_drag

    n = traj.steps
    k = n - int(round(0.7 * n))  # inversion strength 0.7: optimise at step 15 of 50
    sig = traj.sigmas.to(traj.x0.device)
    den = pipe.denoiser(prompt, None, 1.0)
    host = DiffusersHost(den)
    h, w = case.source.height, case.source.width
    handles = [tuple(map(float, p)) for p in case.handles]
    targets = [tuple(map(float, p)) for p in case.targets]
    x_opt, _, info = optimize_drag(host, traj.at(k), sig[k], sig[k + 1], handles, targets,
                                   mask=torch.from_numpy(_dilate(case.edit_region, 4).astype(np.float32)),
                                   image_size=(h, w))
    part = sliced(traj, k)
    out = sample_diffeditor(den, x_opt, sig[k:], disable=True, seed=seed)
    del part
    return out, den.calls


def run_aldd(pipe, traj, case, prompt, seed) -> tuple[torch.Tensor, int]:
    """GoodDrag's alternating drag and denoising from strength 0.75, its radii and step scaled from its
    512-px setting to the image (at least one cell), then plain conditional DDIM (cfg 1, as GoodDrag)."""
    from ..adapters.diffusers_adapter import DiffusersHost
    from ..samplers.drag import ALDD_DEFAULTS, alternating_drag, strength_step

    n = traj.steps
    h, w = case.source.height, case.source.width
    k = strength_step(n, ALDD_DEFAULTS["strength"])
    sig = traj.sigmas.to(traj.x0.device)
    den = pipe.denoiser(prompt, None, 1.0)
    f = w / 512
    opts = {k_: v for k_, v in ALDD_DEFAULTS.items() if k_ != "strength"}
    opts.update(r_m=max(1, round(4 * f)), r_p=max(1, round(12 * f)), beta=max(1.0, 4 * f))
    with den.installed():
        x, step, _, _ = alternating_drag(
            DiffusersHost(den), traj, sig, k, [tuple(map(float, p)) for p in case.handles],
            [tuple(map(float, p)) for p in case.targets],
            mask=torch.from_numpy(_dilate(case.edit_region, 4).astype(np.float32)), image_size=(h, w), **opts)
        out = sample_diffeditor(den, x, sig[step:], disable=True, seed=seed)
    return out, den.calls


class SLDDenoiser:
    """CFG with Safe Latent Diffusion on the diffusers adapter (3 conditional passes per step)."""

    def __init__(self, pipe, prompt, safety, cfg, config):
        self.c = pipe.denoiser(prompt, None, 1.0)
        self.u = pipe.denoiser("", None, 1.0)
        self.s = pipe.denoiser(safety, None, 1.0)
        self.cfg, self.config, self.state, self.calls = cfg, config, SLDState(), 0

    def __call__(self, x, sigma, **kw):
        dc, du, ds = self.c(x, sigma), self.u(x, sigma), self.s(x, sigma)
        self.calls += 3
        noise = sld_guidance_sigma(x, sigma, dc, du, ds, self.cfg, self.config, self.state)
        return x - noise


def run_erase(pipe, tok, te, traj, case, method, cfg, seed) -> tuple[torch.Tensor, int]:
    src_prompt, truth_prompt = case.source.caption(), case.truth.caption()
    if method == "baseline":
        den = pipe.denoiser(truth_prompt, None, cfg)
        return sample_diffeditor(den, traj.z_T, traj.sigmas.to(traj.z_T.device), disable=True), den.calls
    if method == "sld":
        den = SLDDenoiser(pipe, src_prompt, case.concept, cfg, sld_preset("strong"))
        return sample_diffeditor(den, traj.z_T, traj.sigmas.to(traj.z_T.device), disable=True), den.calls

    def emb(words):
        with torch.no_grad():
            hs = te(tok([words]))
        return concept_embedding(hs, len(tok.words(words)) + 2).reshape(-1)

    others = sorted({o.color for o in case.source.objects} - {case.concept})
    deltas = uce_patch(pipe.unet, torch.stack([emb(case.concept)]), torch.stack([emb("")]),
                       torch.stack([emb(c) for c in others]) if others else None)
    den = pipe.denoiser(src_prompt, None, cfg)
    with patched(pipe.unet, deltas):
        out = sample_diffeditor(den, traj.z_T, traj.sigmas.to(traj.z_T.device), disable=True)
    return out, den.calls


# ---------------------------------------------------------------------------------------------- driver
#: the tasks each scene family is scored on (``plain``: the original benchmark)
FAMILY_TASKS = {"plain": TASKS, "shadow": ("move", "resize", "drag", "paste"),
                "light": ("move", "resize", "drag", "paste"), "stripes": ("move", "resize", "drag", "paste"),
                "occlusion": ("move",)}


def make_case(task: str, seed: int, family: str = "plain"):
    """The benchmark's edit ``task`` on scene ``seed``. ``family`` (``scenes.FAMILIES``) adds shadows, a light
    gradient or background stripes to the same scenes and edits (drawn from a separate generator), or makes
    the move an occluding one (the object ends partly behind or in front of another)."""
    if task not in FAMILY_TASKS.get(family, ()):
        raise ValueError(f"family {family!r} has no {task!r} case; its tasks are {FAMILY_TASKS.get(family)}")
    rng = np.random.default_rng(10_000 + seed)
    frng = np.random.default_rng(20_000 + seed)
    effects = scenes.family_effects(family, frng)
    for s in range(seed * 101, seed * 101 + 100):
        if family == "occlusion":
            scene = scenes.make_scene(s, n_objects=2)
            case = scenes.occlude(scene, 0, 1, behind=bool(frng.integers(2)), rng=frng)
            if case is not None:
                return case
            continue
        scene = scenes.with_effects(scenes.make_scene(s), effects)
        if task == "erase":
            return scenes.remove(scene, scene.objects[int(rng.integers(len(scene.objects)))].color)
        ref = scenes.with_effects(scenes.make_scene(s + 50_000), effects) if task in ("paste", "appearance") else None
        case = scenes.random_edit(scene, CASE_KIND[task], rng, ref=ref)
        if case is not None:
            return case
    raise RuntimeError(f"no valid {task} case for seed {seed} (family {family})")


def load_pipeline(weights, random_weights: bool):
    from ..models.demo.load import build_random, load_demo

    vae, unet, te, tok, ac = build_random(0) if random_weights else load_demo(weights)

    def encode_text(prompts):
        with torch.no_grad():
            return te(tok(list(prompts)))

    return DiffEditorPipeline(unet, vae=vae, encode_text=encode_text, alphas_cumprod=ac), te, tok


def reconstruction_psnr(pipe, case, steps: int, z=None, traj=None) -> dict:
    """PSNR of the source after inversion + reconstruction: plain DDIM and exact (5 fixed-point iterations)."""
    cap = case.source.caption()
    if z is None:
        z = pipe.encode_image(torch.from_numpy(case.source_image)[None])
    if traj is None:
        traj = pipe.invert(z, cap, steps=steps, bank_window=None)
    ex = pipe.invert(z, cap, steps=steps, exact_iters=5, bank_window=None)
    return {"ddim": psnr(pipe.decode(pipe.reconstruct(traj, cap))[0].numpy(), case.source_image),
            "exact": psnr(pipe.decode(pipe.reconstruct(ex, cap))[0].numpy(), case.source_image)}


def run_scenes(indices, seed=0, steps=50, tasks=TASKS, methods=None, weights=ROOT / "models" / "demo" / "weights",
               random_weights=False, recon_n=8, log=print, checkpoint=None,
               family: str = "plain") -> tuple[dict, dict, dict]:
    """Score the scenes ``seed + i`` for ``i`` in ``indices``: (per-scene rows, reconstruction PSNRs, grids).

    Rows are ``{task: {method: [metrics, ...]}}`` in the order of ``indices`` (each with its ``scene``
    index); the grid row of a task is that of its first scene in ``indices``. ``checkpoint``: a path that
    gets one JSON line per finished scene (its rows), so a long run that is stopped keeps what it scored.
    """
    pipe, te, tok = load_pipeline(weights, random_weights)
    per: dict = {t: {} for t in tasks}
    grids: dict = {}
    recon = {"ddim": [], "exact": []}
    for i in indices:
        for task in tasks:
            case = make_case(task, seed + i, family)
            src = torch.from_numpy(case.source_image)[None]
            z = pipe.encode_image(src)
            t0 = time.time()
            traj = pipe.invert(z, case.source.caption(), steps=steps)
            inv_s = time.time() - t0
            if task == "move" and i < recon_n:
                for k, v in reconstruction_psnr(pipe, case, steps, z, traj).items():
                    recon[k].append(v)
            row = {"source": case.source_image, "truth": case.truth_image}
            if task == "erase":
                names = [m for m in ERASE_METHODS if methods is None or m in methods]
            else:
                names = [m for m in EDIT_METHODS if (methods is None or m in methods)
                         and task in METHOD_TASKS.get(m, (task,))]
                if task == "drag" and dragloss_available():
                    names += [m for m in ("dragloss", "aldd") if methods is None or m in methods]
                ref_traj = None
                if task in ("appearance", "paste"):
                    zr = pipe.encode_image(torch.from_numpy(case.ref_image)[None])
                    ref_traj = pipe.invert(zr, case.source.caption(), steps=steps)
                edit_task = make_task(make_spec(case), z, reference=ref_traj,
                                      pixels_per_latent=pipe.pixels_per_latent)
            cfg = TASK_DEFAULTS[SCHEDULE_TASK.get(task, "move")]["cfg"]
            for m in names:
                t1 = time.time()
                if task == "erase":
                    out, nfe = run_erase(pipe, tok, te, traj, case, m, cfg, seed + i)
                elif m == "baseline":
                    out, nfe = run_baseline(pipe, traj, edit_task, case.prompt, cfg, seed + i)
                elif m == "dragloss":
                    out, nfe = run_dragloss(pipe, traj, edit_task, case, case.prompt, seed + i)
                elif m == "aldd":
                    out, nfe = run_aldd(pipe, traj, case, case.prompt, seed + i)
                elif m == "pack":
                    out, nfe = run_pack(pipe, traj, edit_task, case, case.prompt, cfg, seed + i)
                elif m == "warp_inpaint":
                    out, nfe = run_warp_inpaint(pipe, traj, edit_task, case, case.prompt, cfg, seed + i)
                else:
                    out, nfe = run_guided(pipe, traj, edit_task, case.prompt, cfg, m, task, seed + i)
                secs = time.time() - t1
                img = pipe.decode(out)[0].numpy()
                met = erase_metrics(img, case) if task == "erase" else object_metrics(img, case)
                met.update(seconds=secs, nfe=float(nfe), inversion_seconds=inv_s, scene=int(i))
                per[task].setdefault(m, []).append(met)
                row[m] = img
            if task not in grids:
                grids[task] = row
            if checkpoint is not None:
                with open(checkpoint, "a") as f:
                    f.write(json.dumps({"scene": int(i), "task": task,
                                        "rows": {m: per[task][m][-1] for m in names}}) + "\n")
            log(f"[editbench] scene {i + 1} {task}: " + ", ".join(
                f"{m} {per[task][m][-1].get('centroid_err_px', per[task][m][-1].get('concept_rate', 0)):.2f}"
                for m in names))
    return per, recon, grids


def _worker(args):
    indices, kw, threads, checkpoint = args
    torch.set_num_threads(threads)
    return run_scenes(indices, checkpoint=checkpoint, **kw)


def _model_name(weights, random_weights: bool) -> str:
    return "demo (random weights)" if random_weights else f"demo ({pathlib.Path(weights).name})"


#: an edit *fails* when its object is not found or its error (point error for drag, centroid error for the
#: other object tasks) exceeds this many pixels: a quarter of the 64-px canvas, i.e. the object is elsewhere
FAIL_PX = 16.0
PRIMARY_ERROR = {"move": "centroid_err_px", "resize": "centroid_err_px", "drag": "point_err_px",
                 "appearance": "centroid_err_px", "paste": "centroid_err_px"}


def failed(row: dict, task: str) -> bool:
    """Object lost (scored with the image diagonal as its error) or its error above :data:`FAIL_PX`."""
    return float(row[PRIMARY_ERROR[task]]) > FAIL_PX


def task_stats(rows: list[dict], task: str) -> dict:
    """Mean and median of every metric over the scenes (``<metric>_median``), and the failure rate (object
    tasks): one lost object moves a mean by metres but a median by nothing, so rankings read all three."""
    keys = [k for k in rows[0] if k != "scene"]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out.update({f"{k}_median": float(np.median([r[k] for r in rows])) for k in keys})
    if task in PRIMARY_ERROR:
        out["fail_rate"] = float(np.mean([failed(r, task) for r in rows]))
    return out


def summarize(per: dict, recon: dict, seed: int, n: int, steps: int, model: str) -> dict:
    stats = {t: {m: task_stats(rows, t) for m, rows in ms.items()} for t, ms in per.items()}
    return {"model": model, "seed": seed, "n": n, "steps": steps, "fail_px": FAIL_PX,
            "reconstruction": {k: {"psnr": float(np.mean(v)) if v else None, "scenes": len(v)}
                               for k, v in recon.items()},
            "tasks": stats}


def run(seed=0, n=32, steps=50, tasks=TASKS, methods=None, weights=ROOT / "models" / "demo" / "weights",
        random_weights=False, recon_n=8, log=print, jobs=1, threads=1, checkpoint=None,
        family: str = "plain") -> tuple[dict, dict, dict]:
    """Every task x method on N scenes; ``jobs`` > 1 splits the scenes over that many processes (the
    per-scene values do not depend on the split: each scene is seeded by its own index)."""
    kw = dict(seed=seed, steps=steps, tasks=tasks, methods=methods, weights=weights,
              random_weights=random_weights, recon_n=recon_n, family=family)
    if jobs <= 1:
        per, recon, grids = run_scenes(range(n), log=log, checkpoint=checkpoint, **kw)
    else:
        import multiprocessing as mp

        shards = [list(range(k, n, jobs)) for k in range(jobs) if k < n]
        with mp.get_context("spawn").Pool(len(shards)) as pool:
            parts = pool.map(_worker, [(s, kw, threads, None if checkpoint is None else f"{checkpoint}.{k}")
                                       for k, s in enumerate(shards)])
        per = {t: {} for t in tasks}
        recon = {"ddim": [], "exact": []}
        for p_per, p_recon, _ in parts:
            for t, ms in p_per.items():
                for m, rows in ms.items():
                    per[t].setdefault(m, []).extend(rows)
            for k in recon:
                recon[k].extend(p_recon[k])
        for ms in per.values():
            for rows in ms.values():
                rows.sort(key=lambda r: r["scene"])
        grids = parts[0][2]  # shard 0 holds scene 0
    model = _model_name(weights, random_weights)
    summary = summarize(per, recon, seed, n, steps, model)
    summary["family"] = family
    return summary, per, grids


def from_checkpoints(paths, seed=0, steps=50, tasks=TASKS, weights=ROOT / "models" / "demo" / "weights",
                     random_weights=False, recon_n=8, log=print, family: str = "plain") -> tuple[dict, dict, dict]:
    """Rebuild a run from ``--checkpoint`` JSONL files (e.g. of a run that was stopped, or runs of the same
    scenes with different ``--methods``, whose rows are merged): the scenes that finished every task count (N = their number), the reconstruction PSNR is measured anew on the first
    ``recon_n`` of them; no picture grid."""
    done: dict = {}
    for path in paths:
        for line in pathlib.Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                # rows of one scene and task from several runs (e.g. other ``--methods``) are merged
                done.setdefault(int(r["scene"]), {}).setdefault(r["task"], {}).update(r["rows"])
    scenes_ok = sorted(i for i, ts in done.items() if all(t in ts for t in tasks))
    if not scenes_ok:
        raise SystemExit(f"no scene finished every task in {list(paths)}")
    per: dict = {t: {} for t in tasks}
    for i in scenes_ok:
        for t in tasks:
            for m, row in done[i][t].items():
                per[t].setdefault(m, []).append(row)
    pipe, _, _ = load_pipeline(weights, random_weights)
    recon = {"ddim": [], "exact": []}
    for i in scenes_ok[:recon_n]:
        for k, v in reconstruction_psnr(pipe, make_case("move", seed + i, family), steps).items():
            recon[k].append(v)
    model = _model_name(weights, random_weights)
    summary = summarize(per, recon, seed, len(scenes_ok), steps, model)
    summary["scenes"] = scenes_ok
    summary["family"] = family
    log(f"[editbench] {len(scenes_ok)} complete scenes from {len(paths)} checkpoint file(s)")
    return summary, per, {}


def write_outputs(out: pathlib.Path, summary: dict, per: dict, grids: dict) -> None:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    out.with_suffix(".scenes.json").write_text(json.dumps(per, indent=1))
    keys = ("centroid_err_px", "iou", "point_err_px", "color_err", "bg_psnr", "gt_psnr", "concept_rate",
            "collateral", "seconds", "nfe")
    fam = summary.get("family", "plain")
    lines = [f"Edit benchmark — model {summary['model']}, "
             + ("" if fam == "plain" else f"scene family {fam}, ") + f"seed {summary['seed']}, N={summary['n']}, "
             f"{summary['steps']} steps. Reconstruction PSNR: DDIM {summary['reconstruction']['ddim']['psnr']}, "
             f"exact {summary['reconstruction']['exact']['psnr']}.", ""]
    lines += ["Each cell: mean (median) over the scenes; fail_rate: object lost or error above "
              f"{summary.get('fail_px', FAIL_PX):g} px.", ""]
    for task, ms in summary["tasks"].items():
        cols = [k for k in keys if any(k in v for v in ms.values())]
        cols += ["fail_rate"] if any("fail_rate" in v for v in ms.values()) else []

        def cell(v, k):
            if k not in v:
                return ""
            med = v.get(f"{k}_median")
            return f"{v[k]:.3f}" if med is None or k in ("seconds", "nfe") else f"{v[k]:.3f} ({med:.3f})"
        lines += [f"### {task}", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m, v in ms.items():
            lines.append(f"| {m} | " + " | ".join(cell(v, k) for k in cols) + " |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    if not grids:
        return
    rows = []
    width = max(len(r) for r in grids.values())
    for task, r in grids.items():
        panels = list(r.values()) + [np.ones_like(r["source"])] * (width - len(r))
        rows.append(np.concatenate([np.pad(p, ((1, 1), (1, 1), (0, 0)), constant_values=1) for p in panels], 1))
    grid = np.concatenate(rows, 0)
    Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out.with_suffix(".png"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="", help="comma list (default: every task of the family)")
    ap.add_argument("--family", default="plain", choices=scenes.FAMILIES,
                    help="scene family: shadows, a light gradient, background stripes or occluding moves")
    ap.add_argument("--methods", default="", help="comma list (default: all)")
    ap.add_argument("--weights", default=str(ROOT / "models" / "demo" / "weights"))
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="processes the scenes are split over")
    ap.add_argument("--checkpoint", default=None, help="append each finished scene's rows to this JSONL "
                    "(one file per job: PATH.K)")
    ap.add_argument("--from-checkpoints", default="", help="comma list of checkpoint files: summarise them "
                    "instead of running (the scenes that finished every task)")
    ap.add_argument("--resummarize", default="", help="an earlier run's PATH.json: recompute its statistics "
                    "from PATH.scenes.json (no model calls; its picture grid is kept) and write them to --out")
    a = ap.parse_args(argv)
    if a.resummarize:
        old = json.loads(pathlib.Path(a.resummarize).read_text())
        per = json.loads(pathlib.Path(a.resummarize).with_suffix(".scenes.json").read_text())
        recon = {k: [v["psnr"]] * v["scenes"] if v["psnr"] is not None else [] for k, v in old["reconstruction"].items()}
        summary = summarize(per, recon, old["seed"], old["n"], old["steps"], old["model"])
        write_outputs(pathlib.Path(a.out), summary, per, {})
        print(pathlib.Path(a.out).with_suffix(".md").read_text())
        return
    torch.set_num_threads(a.threads)
    tasks = tuple(t for t in a.tasks.split(",") if t) or FAMILY_TASKS[a.family]
    bad = sorted(set(tasks) - set(FAMILY_TASKS[a.family]))
    if bad:
        raise SystemExit(f"--tasks: {bad} not available; the {a.family} family has {FAMILY_TASKS[a.family]}")
    methods = tuple(m for m in a.methods.split(",") if m) or None
    if a.from_checkpoints:
        summary, per, grids = from_checkpoints([c for c in a.from_checkpoints.split(",") if c], a.seed, a.steps,
                                               tasks, pathlib.Path(a.weights), a.random_weights,
                                               family=a.family)
    else:
        summary, per, grids = run(a.seed, a.n, a.steps, tasks, methods, pathlib.Path(a.weights),
                                  a.random_weights, jobs=a.jobs, threads=a.threads, checkpoint=a.checkpoint,
                                  family=a.family)
    write_outputs(pathlib.Path(a.out), summary, per, grids)
    print(pathlib.Path(a.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
