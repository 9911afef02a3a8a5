"""Performance benchmark: NFE, wall time (inversion / edit), UNet share, K,V bank size, peak memory.

    python bench/perf.py --out bench/results/perf_cpu.json              # CPU: demo model + thin SD1.5-like UNet
    python bench/perf.py --device cuda --gpu-archs --out bench/results/perf_gpu.json   # + SD1.5 512² / SDXL 1024² fp16

Methodology. For each model and task (move, drag, appearance, paste; DiffEditor preset) it inverts a
random latent (with a K,V bank on every step), runs the edit, and counts model calls by purpose
(``EditStats``). "UNet time" is the sum over calls of the measured unit cost of that kind of call (CFG
forward at batch 2, feature forward + two backward passes, single conditional forward), each unit timed
separately in the same process; ``overhead = wall / unet_time`` is then the engine's cost beyond the
network itself. A plain deterministic sampling run of the same steps and CFG is timed for the ratio.
Timings do not depend on the weight values, so random weights are used (fixed seeds).
"""
from __future__ import annotations

import argparse
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
from ..guidance.energies import TASK_DEFAULTS  # noqa: E402
from ..guidance.tasks import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, make_task  # noqa: E402
from ..samplers.edit import EditStats, preset_schedule, sample_edit  # noqa: E402
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
        unet = UNet2DConditionModel(**CONFIGS[name])
    return unet.to(device=device, dtype=dtype).eval()


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


def bench_model(name: str, device, dtype, steps: int, tasks, reps: int, hw=None) -> dict:
    unet = build_unet(name, device, dtype)
    lat_hw = hw or (int(unet.config.sample_size),) * 2  # the demo: its latent size (16x16); SD: the config's
    ctx_len, ctx_dim = (16, unet.config.cross_attention_dim) if name == "demo" else CONTEXT[name]
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, ctx_len, ctx_dim, generator=g).to(device, dtype)
    uncond = torch.randn(1, ctx_len, ctx_dim, generator=g).to(device, dtype)
    added = None
    if name == "sdxl":
        added = {"text_embeds": torch.zeros(1, 1280, device=device, dtype=dtype),
                 "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], device=device, dtype=dtype)}
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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = peak_rss_mb()

    # plain sampling of the same model and steps (deterministic DDIM, CFG) for the ratio
    sync(device)
    t = time.perf_counter()
    sample_diffeditor(den, x0 * float(sig[0]), sig, disable=True)
    sync(device)
    out["plain_sampling_s"] = time.perf_counter() - t

    sync(device)
    t = time.perf_counter()
    traj = invert(inv, x0, sig, model_id=model_id(unet), hooks=hooks, bank=KVBank(steps=range(steps)), disable=True)
    sync(device)
    out["inversion_s"] = time.perf_counter() - t
    out["inversion_nfe"] = traj.model_calls
    out["kv_bank_bytes"] = traj.bank.nbytes
    ref = invert(inv, x0r, sig, model_id=model_id(unet), hooks=hooks, bank=KVBank(steps=range(steps)), disable=True)

    units = unit_costs(unet, den, host, x0 * float(sig[steps // 2]), sig[steps // 2:steps // 2 + 1].expand(1),
                       levels, device, reps)
    out["unit_seconds"] = units
    specs = make_specs(*lat_hw)
    out["tasks"] = {}
    for task_name in tasks:
        reference = ref if task_name in ("appearance", "paste") else None
        task = make_task(specs[task_name], x0, reference=reference)
        stats = EditStats()
        sched = preset_schedule("DiffEditor", task_name)
        sync(device)
        t = time.perf_counter()
        sample_edit(den, x0, sig, host=host, hooks=hooks, trajectory=traj, task=task, schedule=sched, seed=42,
                    model_id=model_id(unet), stats=stats, disable=True)
        sync(device)
        wall = time.perf_counter() - t
        unet_s = (stats.cfg_forwards * units["cfg_forward"] + stats.guidance_evals * units["guidance_eval"]
                  + stats.reference_forwards * units["feature_forward"]
                  + stats.renoise_forwards * units["cond_forward"])
        out["tasks"][task_name] = {
            "edit_s": wall, "unet_s_est": unet_s, "overhead": wall / unet_s if unet_s else None,
            "edit_over_plain": wall / out["plain_sampling_s"], **stats.as_dict(),
            "nfe_forward": stats.cfg_forwards + stats.feature_forwards + stats.reference_forwards
            + stats.renoise_forwards, "cfg_default_official": TASK_DEFAULTS[task_name]["cfg"]}
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_rss_growth_mb"] = out["peak_rss_mb"] - rss0
    if device.type == "cuda":
        out["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--models", default="demo,thin_sd15")
    ap.add_argument("--gpu-archs", action="store_true", help="also SD1.5 512² and SDXL 1024² in fp16 (GPU)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    tasks = [t for t in a.tasks.split(",") if t]
    runs = [(m, torch.float32) for m in a.models.split(",") if m]
    if a.gpu_archs:
        runs += [("sd15", torch.float16), ("sdxl", torch.float16)]
    res = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": []}
    for name, dtype in runs:
        print(f"[perf] {name} {dtype} ...", flush=True)
        res["results"].append(bench_model(name, device, dtype, a.steps, tasks, a.reps))
    p = pathlib.Path(a.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res, indent=1))
    for r in res["results"]:
        print(f"{r['model']:>10}: inversion {r['inversion_s']:.2f}s, plain {r['plain_sampling_s']:.2f}s, "
              f"bank {r['kv_bank_bytes'] / 2**20:.1f} MiB, peak RSS {r['peak_rss_mb']:.0f} MB")
        for t, v in r["tasks"].items():
            print(f"{'':>12}{t:>10}: edit {v['edit_s']:.2f}s ({v['edit_over_plain']:.1f}x plain), "
                  f"overhead {v['overhead']:.2f}, cfg {v['cfg_forwards']}, guidance {v['guidance_evals']}")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
