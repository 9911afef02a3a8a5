"""Performance benchmark: NFE, wall time (inversion / edit), UNet share, K,V bank size, peak memory.

    python bench/perf.py --out bench/results/perf_cpu.json              # CPU: demo model + thin SD1.5-like UNet
    python bench/perf.py --device cuda --gpu-archs --out bench/results/perf_gpu.json   # + SD1.5 512² / SDXL 1024² fp16
    python bench/perf.py --models thin_flux_dev,thin_sd35_medium --steps 20 --out bench/results/perf_cpu_dit.json
    python bench/perf.py --device cuda --models "" --dit-archs --steps 28 --out bench/results/perf_gpu_dit.json  # bf16 1024²

Methodology. For each model and task (move, drag, appearance, paste; DiffEditor preset) it inverts a
random latent (with a K,V bank on every step), runs the edit, and counts model calls by purpose
(``EditStats``). "UNet time" is the sum over calls of the measured unit cost of that kind of call (CFG
forward at batch 2, feature forward + two backward passes, single conditional forward), each unit timed
separately in the same process; ``overhead = wall / unet_time`` is then the engine's cost beyond the
network itself. A plain deterministic sampling run of the same steps and CFG is timed for the ratio.
Timings do not depend on the weight values, so random weights are used (fixed seeds).

Flow DiTs (Flux.1-dev, SD3.5-medium; diffusers transformers through ``adapters/diffusers_dit.py``) are timed the
same way; "DiT calls" replace UNet calls. ``thin_*`` keep the real head size, text and pooled widths and the
block kinds but four heads and a few blocks, on a 32x32 latent (a 256² image), so a CPU can run them; the
full architectures (``--dit-archs``) need a GPU (bf16, 1024²). Flux-dev is guidance-distilled: cfg 1, one DiT
call per step; SD3.5 uses true CFG (batch 2).
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import platform
import resource
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    __package__ = "diffeditor.bench"

from ..adapters.diffusers_adapter import DiffusersDenoiser, DiffusersHost, model_id  # noqa: E402
from ..guidance.official import TASK_DEFAULTS  # noqa: E402
from ..guidance.tasks import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, make_task  # noqa: E402
from ..guidance.regional import loss_scale_for  # noqa: E402
from ..samplers.edit import EditStats, energy_gradient, preset_schedule, sample_edit  # noqa: E402
from ..samplers.hooks import EditHooks, KVBank, default_feature_levels  # noqa: E402
from ..samplers.inversion import invert  # noqa: E402
from ..samplers.sampling import sample_diffeditor  # noqa: E402
from ..samplers.schedule import ddim_sigmas  # noqa: E402

TASKS = ("move", "drag", "appearance", "paste")

# UNet configs (diffusers). "thin_sd15": SD1.5's widths, heads and context, one res block per level and
# three levels, so a 50-step edit fits a CPU budget. The GPU configs are the real architectures.
CONFIGS = {
    "thin_sd15": dict(sample_size=16, block_out_channels=(320, 640, 1280), layers_per_block=1,
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                      cross_attention_dim=768, attention_head_dim=8),
    "sd15": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sdxl": dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                 cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}
CONTEXT = {"thin_sd15": (77, 768), "sd15": (77, 768), "sdxl": (77, 2048)}

# Flow DiTs: (family, diffusers config, latent hw, text tokens, pooled width). Flux: 16 latent channels packed
# 2x2 into 64; SD3.5-medium: MMDiT-X (a second, image-only attention in the first 13 blocks), q/k RMS norm.
DIT_CONFIGS = {
    "thin_flux_dev": ("flux", dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                   attention_head_dim=128, num_attention_heads=4, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
                      (32, 32), 128, 768),
    "thin_sd35_medium": ("sd3", dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=4,
                                     attention_head_dim=64, num_attention_heads=4, joint_attention_dim=4096,
                                     caption_projection_dim=256, pooled_projection_dim=2048, pos_embed_max_size=96,
                                     qk_norm="rms_norm", dual_attention_layers=(0, 1)),
                         (32, 32), 154, 2048),
    "flux_dev": ("flux", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                              attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                              pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
                 (128, 128), 512, 768),
    "sd35_medium": ("sd3", dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                                qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
                    (128, 128), 333, 2048),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_unet(name: str, device, dtype):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if name == "demo":
        from ..models.demo.load import build_random

        unet = build_random(0)[1]
    else:
        with torch.device(device):  # initialised where it will run (an SDXL UNet's CPU init takes minutes)
            unet = UNet2DConditionModel(**CONFIGS[name])
    return unet.to(device=device, dtype=dtype).eval()


def conditioning(name: str, unet, device, dtype, g: torch.Generator | None = None):
    """Random (cond, uncond, added_cond_kwargs) of the model's context shape (drawn from ``g``, default seed 0)."""
    ctx_len, ctx_dim = (16, unet.config.cross_attention_dim) if name == "demo" else CONTEXT[name]
    g = torch.Generator().manual_seed(0) if g is None else g
    cond = torch.randn(1, ctx_len, ctx_dim, generator=g).to(device, dtype)
    uncond = torch.randn(1, ctx_len, ctx_dim, generator=g).to(device, dtype)
    added = None
    if name == "sdxl":
        added = {"text_embeds": torch.zeros(1, 1280, device=device, dtype=dtype),
                 "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], device=device, dtype=dtype)}
    return cond, uncond, added


def guidance_gradient(unet, cond, added, x_src, x, sigma, task, loss_scale: float, alphas_cumprod=None):
    """The DiffEditor guidance gradient (regional energies, fp32 result) of ``unet`` at ``x``, ``sigma``,
    with reference features of ``x_src`` (the source latent at the same sigma)."""
    den = DiffusersDenoiser(unet, cond, hooks=EditHooks(), added_cond_kwargs=added, alphas_cumprod=alphas_cumprod)
    host = DiffusersHost(den)
    levels = default_feature_levels(host.num_up_blocks)
    with torch.no_grad():
        ref = {k: v.detach().float() for k, v in host.features(x_src, sigma, levels).items()}
    grad, _ = energy_gradient(host, task, x, sigma, levels, ref, None, True, None, loss_scale)
    return grad


def gradient_precision(name: str, unet32, device, dtypes=(torch.float16, torch.bfloat16), steps: int = 50) -> dict:
    """Relative L2 error (and share of exact zeros) of the half-precision guidance gradient against fp32 on
    the same weights, with the pack's loss scale and without it (the pre-fix behaviour), at three steps."""
    lat_hw = (int(unet32.config.sample_size),) * 2
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, *lat_hw, generator=g).to(device)
    noise = torch.randn(1, 4, *lat_hw, generator=g).to(device)
    sig = ddim_sigmas(steps).to(device)
    task = make_task(make_specs(*lat_hw)["move"], x0)
    sched = preset_schedule("DiffEditor", "move")
    ls = loss_scale_for(sched.kappa * sched.energy_scale)
    out = {"loss_scale": ls, "task": "move", "steps": {}}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    try:
        halves = {dt: copy.deepcopy(unet32).to(dtype=dt) for dt in dtypes}
        for i in (5, steps // 2, int(steps * 0.8)):
            s = sig[i:i + 1]
            xs, xe = x0 * s, x0 * s + 0.3 * s * noise
            row = {}
            c32, _, a32 = conditioning(name, unet32, device, torch.float32)
            ref = guidance_gradient(unet32, c32, a32, xs, xe, s, task, ls)
            row["fp32_abs_mean"] = float(ref.abs().mean())
            for dt, u in halves.items():
                c, _, a = conditioning(name, u, device, dt)
                for tag, scale in (("scaled", ls), ("unscaled", 1.0)):
                    gh = guidance_gradient(u, c, a, xs, xe, s, task, scale)
                    key = f"{str(dt).replace('torch.', '')}_{tag}"
                    row[key] = {"rel_l2": float((gh - ref).norm() / ref.norm()),
                                "zero_frac": float((gh == 0).float().mean()),
                                "cos": float(torch.nn.functional.cosine_similarity(gh.flatten(), ref.flatten(), 0))}
            out["steps"][str(i)] = row
        del halves
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def make_specs(h: int, w: int):
    """Masks and points on an image of ``8h x 8w`` pixels: an object in the left third, moved right."""
    H, W = 8 * h, 8 * w
    obj = torch.zeros(H, W)
    y0, y1, x0, x1 = H // 3, H // 3 + H // 4, W // 6, W // 6 + W // 4
    obj[y0:y1, x0:x1] = 1
    dx = 8 * max(1, w // 6)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    return {
        "move": MoveSpec(obj, dx=dx, dy=0),
        "drag": DragSpec([((cx, cy), (cx + dx, cy))]),
        "appearance": AppearanceSpec(obj, obj),
        "paste": PasteSpec(obj, dx=dx, dy=0),
    }


def unit_costs(unet, den: DiffusersDenoiser, host: DiffusersHost, x, sigma, levels, device, reps: int):
    """Seconds of one CFG forward (batch 2), one feature forward + 2 backward, one conditional forward."""
    def timed(fn):
        fn()
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - t) / reps

    def grad_pass():
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            f = host.features(xg, sigma, levels)
            e1 = sum(v.float().square().mean() for v in f.values())
            torch.autograd.grad(e1, xg, retain_graph=True)
            torch.autograd.grad(e1 * 2, xg)

    with torch.no_grad():
        cfg = timed(lambda: den(x, sigma))
        single = timed(lambda: den.denoise_cond(x, sigma))
        feat = timed(lambda: host.features(x, sigma, levels))
    grad = timed(grad_pass)
    return {"cfg_forward": cfg, "cond_forward": single, "feature_forward": feat, "guidance_eval": grad}


def memory_start(model, device):
    """``(rss0, vram_base)`` before a model's run: this model's weights + working memory are what is counted
    (other models held by the run excluded)."""
    vram_base = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        vram_base = torch.cuda.memory_allocated() - sum(t.numel() * t.element_size()
                                                         for t in list(model.parameters()) + list(model.buffers()))
    return peak_rss_mb(), vram_base


def memory_end(out: dict, rss0: float, vram_base, device) -> None:
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_rss_growth_mb"] = out["peak_rss_mb"] - rss0
    if device.type == "cuda":
        out["peak_vram_mb"] = (torch.cuda.max_memory_allocated() - vram_base) / 2 ** 20


def time_edits(out: dict, den, host, hooks, traj, ref, x0, sig, tasks, units: dict, device, mid: str,
               **schedule_overrides) -> None:
    """Each task's DiffEditor edit timed into ``out["tasks"]``: wall time, the network time estimated from the
    unit costs and the counted calls by purpose (``EditStats``), and the ratios to it and to plain sampling."""
    specs = make_specs(*x0.shape[-2:])
    out["tasks"] = {}
    for task_name in tasks:
        reference = ref if task_name in ("appearance", "paste") else None
        task = make_task(specs[task_name], x0, reference=reference)
        stats = EditStats()
        sched = preset_schedule("DiffEditor", task_name, **schedule_overrides)
        sync(device)
        t = time.perf_counter()
        with den.installed():
            sample_edit(den, x0, sig, host=host, hooks=hooks, trajectory=traj, task=task, schedule=sched, seed=42,
                        model_id=mid, stats=stats, disable=True)
        sync(device)
        wall = time.perf_counter() - t
        net_s = (stats.cfg_forwards * units["cfg_forward"] + stats.guidance_evals * units["guidance_eval"]
                 + stats.reference_forwards * units["feature_forward"]
                 + stats.renoise_forwards * units["cond_forward"])
        out["tasks"][task_name] = {
            "edit_s": wall, "unet_s_est": net_s, "overhead": wall / net_s if net_s else None,
            "edit_over_plain": wall / out["plain_sampling_s"], **stats.as_dict(),
            "nfe_forward": stats.cfg_forwards + stats.feature_forwards + stats.reference_forwards
            + stats.renoise_forwards, "cfg_default_official": TASK_DEFAULTS[task_name]["cfg"]}


def build_dit(name: str, device, dtype):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    family, cfg = DIT_CONFIGS[name][:2]
    torch.manual_seed(0)
    with torch.device(device):
        m = (FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel)(**cfg)
    with torch.no_grad():  # a live but tame output projection (diffusers initialises some to zero)
        w = m.proj_out.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)).to(w.device) * 0.3
                / w.shape[1] ** 0.5)
    return m.to(device=device, dtype=dtype).eval()


def bench_model(name: str, device, dtype, steps: int, tasks, reps: int, hw=None, unet=None) -> dict:
    if name in DIT_CONFIGS:
        return bench_dit(name, device, dtype, steps, tasks, reps, model=unet)
    unet = build_unet(name, device, dtype) if unet is None else unet
    lat_hw = hw or (int(unet.config.sample_size),) * 2  # the demo: its latent size (16x16); SD: the config's
    g = torch.Generator().manual_seed(0)
    cond, uncond, added = conditioning(name, unet, device, dtype, g)
    x0 = torch.randn(1, 4, *lat_hw, generator=g).to(device)
    x0r = torch.randn(1, 4, *lat_hw, generator=g).to(device)
    sig = ddim_sigmas(steps).to(device)
    hooks = EditHooks()
    inv = DiffusersDenoiser(unet, cond, hooks=hooks, added_cond_kwargs=added)
    cfg_scale = 4.0
    den = DiffusersDenoiser(unet, cond, uncond, cfg=cfg_scale, hooks=hooks, added_cond_kwargs=added)
    host = DiffusersHost(den)
    levels = default_feature_levels(host.num_up_blocks)
    out = {"model": name, "params_M": sum(p.numel() for p in unet.parameters()) / 1e6,
           "latent": list(lat_hw), "dtype": str(dtype).replace("torch.", ""), "steps": steps, "cfg": cfg_scale}
    rss0, vram_base = memory_start(unet, device)

    # plain sampling of the same model and steps (deterministic DDIM, CFG) for the ratio
    sync(device)
    t = time.perf_counter()
    with den.installed():
        sample_diffeditor(den, x0 * float(sig[0]), sig, disable=True)
    sync(device)
    out["plain_sampling_s"] = time.perf_counter() - t

    sync(device)
    t = time.perf_counter()
    with inv.installed():
        traj = invert(inv, x0, sig, model_id=model_id(unet), hooks=hooks, bank=KVBank(steps=range(steps)),
                      disable=True)
    sync(device)
    out["inversion_s"] = time.perf_counter() - t
    out["inversion_nfe"] = traj.model_calls
    out["kv_bank_bytes"] = traj.bank.nbytes
    ref = invert(inv, x0r, sig, model_id=model_id(unet), hooks=hooks, bank=KVBank(steps=range(steps)), disable=True)

    with den.installed():
        units = unit_costs(unet, den, host, x0 * float(sig[steps // 2]), sig[steps // 2:steps // 2 + 1].expand(1),
                           levels, device, reps)
    out["unit_seconds"] = units
    time_edits(out, den, host, hooks, traj, ref, x0, sig, tasks, units, device, model_id(unet))
    memory_end(out, rss0, vram_base, device)
    return out


def bench_dit(name: str, device, dtype, steps: int, tasks, reps: int, model=None) -> dict:
    """:func:`bench_model` for a flow DiT: the same phases and accounting, DiT calls instead of UNet calls."""
    from ..adapters.diffusers_dit import DiTHost, FlowDenoiser, flow_sigmas
    from ..adapters.diffusers_dit import model_id as dit_model_id
    from ..samplers.param import FLOW

    family, _, lat_hw, tokens, pooled_dim = DIT_CONFIGS[name]
    model = build_dit(name, device, dtype) if model is None else model
    g = torch.Generator().manual_seed(0)
    ctx_dim = int(model.config.joint_attention_dim)
    cond, uncond = (torch.randn(1, tokens, ctx_dim, generator=g).to(device, dtype) for _ in range(2))
    pooled, upooled = (torch.randn(1, pooled_dim, generator=g).to(device, dtype) for _ in range(2))
    ch = 16
    x0 = torch.randn(1, ch, *lat_hw, generator=g).to(device)
    x0r = torch.randn(1, ch, *lat_hw, generator=g).to(device)
    sig = flow_sigmas(steps, 3.0).to(device)
    hooks = EditHooks()
    distilled = family == "flux"
    cfg_scale = 1.0 if distilled else 4.0
    inv = FlowDenoiser(model, cond, pooled, hooks=hooks)
    den = FlowDenoiser(model, cond, pooled, None if distilled else uncond, None if distilled else upooled,
                       cfg=cfg_scale, hooks=hooks)
    host = DiTHost(den)
    levels = host.default_levels()
    mid = dit_model_id(model)
    out = {"model": name, "family": family, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "blocks": [host.n_double, host.n_single], "feature_levels": list(levels),
           "latent": list(lat_hw), "text_tokens": tokens, "dtype": str(dtype).replace("torch.", ""),
           "steps": steps, "cfg": cfg_scale, "guidance_distilled": distilled}
    rss0, vram_base = memory_start(model, device)
    sync(device)
    t = time.perf_counter()
    with den.installed():
        sample_diffeditor(den, x0, sig, disable=True, param=FLOW)  # from noise (x at sigma 1 is the noise)
    sync(device)
    out["plain_sampling_s"] = time.perf_counter() - t
    out["plain_sampling_dit_calls"] = steps
    # a full-size DiT's bank does not fit in host RAM on every step (Flux-dev 1024²: ~2.9 GB a step, two
    # trajectories): there one step is recorded to measure its size and the edits run without the bank
    full = not name.startswith("thin_")
    bank_steps = [steps // 2] if full else range(steps)
    sync(device)
    t = time.perf_counter()
    with inv.installed():
        traj = invert(inv, x0, sig, model_id=mid, hooks=hooks, bank=KVBank(steps=bank_steps), disable=True,
                      param=FLOW)
    sync(device)
    out["inversion_s"] = time.perf_counter() - t
    out["inversion_nfe"] = traj.model_calls
    out["kv_bank_bytes"] = traj.bank.nbytes
    out["kv_bank_bytes_per_step"] = traj.bank.nbytes / len(traj.bank.recorded_steps())
    out["kv_bank_layers"] = len(traj.bank.recorded_layers())
    out["kv_in_edits"] = not full
    ref = invert(inv, x0r, sig, model_id=mid, hooks=hooks, bank=KVBank(steps=bank_steps), disable=True,
                 param=FLOW)
    mid_i = steps // 2
    with den.installed():
        units = unit_costs(model, den, host, FLOW.noised(x0, torch.randn_like(x0), float(sig[mid_i])),
                           sig[mid_i:mid_i + 1].expand(1), levels, device, reps)
    out["unit_seconds"] = units
    time_edits(out, den, host, hooks, traj, ref, x0, sig, tasks, units, device, mid,
               **({"kv_mode": None, "kv": None} if full else {}))
    memory_end(out, rss0, vram_base, device)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--models", default="demo,thin_sd15", help="models timed in fp32")
    ap.add_argument("--gpu-archs", action="store_true",
                    help="also SD1.5 512² and SDXL 1024² in each of --gpu-dtypes, with --precision (GPU)")
    ap.add_argument("--gpu-dtypes", default="fp16,bf16")
    ap.add_argument("--dit-archs", action="store_true",
                    help="also Flux.1-dev and SD3.5-medium at 1024² in bf16 (random weights; GPU)")
    ap.add_argument("--precision", action="store_true",
                    help="guidance gradient of fp16/bf16 copies against fp32 on the same weights")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="start no new model run after this many seconds (the rest is listed as skipped)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    device = torch.device(a.device)
    tasks = [t for t in a.tasks.split(",") if t]
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}
    runs = [(m, [torch.float32]) for m in a.models.split(",") if m]
    if a.gpu_archs:
        runs += [(m, [half[d] for d in a.gpu_dtypes.split(",") if d]) for m in ("sd15", "sdxl")]
    if a.dit_archs:
        runs += [(m, [torch.bfloat16]) for m in ("flux_dev", "sd35_medium")]
    res = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": [], "precision": [], "skipped": []}
    p = pathlib.Path(a.out)
    p.parent.mkdir(parents=True, exist_ok=True)

    def over_budget() -> bool:
        return a.max_seconds is not None and time.perf_counter() - t_start > a.max_seconds

    for name, dtypes in runs:
        if over_budget():
            res["skipped"] += [f"{name} {d}" for d in dtypes]
            continue
        print(f"[perf] {name}: building ...", flush=True)
        if name in DIT_CONFIGS:  # built directly in the timed dtype (a full DiT in fp32 would not fit twice)
            for dtype in dtypes:
                print(f"[perf] {name} {dtype} ...", flush=True)
                res["results"].append(bench_model(name, device, dtype, a.steps, tasks, a.reps))
                p.write_text(json.dumps(res, indent=1))
            continue
        unet32 = build_unet(name, device, torch.float32)
        if a.precision or (a.gpu_archs and name in ("sd15", "sdxl")):
            print(f"[perf] {name}: guidance gradient precision ...", flush=True)
            res["precision"].append({"model": name, **gradient_precision(name, unet32, device, steps=a.steps)})
            p.write_text(json.dumps(res, indent=1))
        for dtype in dtypes:
            if over_budget():
                res["skipped"].append(f"{name} {dtype}")
                continue
            print(f"[perf] {name} {dtype} ...", flush=True)
            unet = unet32 if dtype == torch.float32 else copy.deepcopy(unet32).to(dtype=dtype)
            res["results"].append(bench_model(name, device, dtype, a.steps, tasks, a.reps, unet=unet))
            del unet
            p.write_text(json.dumps(res, indent=1))  # after every run: a stopped run keeps what it measured
        del unet32
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res["total_s"] = time.perf_counter() - t_start
    p.write_text(json.dumps(res, indent=1))
    for pr in res["precision"]:
        for i, row in pr["steps"].items():
            print(f"{pr['model']:>10} step {i}: " + ", ".join(
                f"{k} rel {v['rel_l2']:.2e} zeros {v['zero_frac']:.2f}" for k, v in row.items() if isinstance(v, dict)))
    for r in res["results"]:
        print(f"{r['model']:>10}: inversion {r['inversion_s']:.2f}s, plain {r['plain_sampling_s']:.2f}s, "
              f"bank {r['kv_bank_bytes'] / 2**20:.1f} MiB, peak RSS {r['peak_rss_mb']:.0f} MB")
        for t, v in r["tasks"].items():
            print(f"{'':>12}{t:>10}: edit {v['edit_s']:.2f}s ({v['edit_over_plain']:.1f}x plain), "
                  f"overhead {v['overhead']:.2f}, cfg {v['cfg_forwards']}, guidance {v['guidance_evals']}")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
