"""Seconds per edit through the ComfyUI nodes on a thin SD15-detected checkpoint (CPU, in-process).

    COMFYUI_ROOT=/path/to/ComfyUI python bench/perf_comfy.py --size 256 --steps 50 --out bench/results/perf_comfy_cpu.json

Builds the host tier's thin checkpoint (320 channels, 3 levels, random weights; CLIP and VAE are not
needed: conditioning is random), loads it through ``comfy.sd.load_diffusion_model`` (the UNETLoader path),
and times DiffEditor Invert (K,V bank on every step) and DiffEditor Edit for move, drag, appearance and
paste with the DiffEditor preset, counting UNet forwards with a ``model_function_wrapper``-free forward
hook on the diffusion model.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    import comfy_bootstrap

    comfy_bootstrap.setup()
    sys.path.append(str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    import comfy.sd
    import thin_checkpoint as tc
    import torch

    from diffeditor.nodes.edit import (DiffEditorAppearanceSpec, DiffEditorDragSpec, DiffEditorEdit,
                                       DiffEditorMoveSpec, DiffEditorPasteSpec)
    from diffeditor.nodes.inversion import DiffEditorInvert

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        ck = tc.write_thin_checkpoint(pathlib.Path(d) / "thin.safetensors", levels=3)
        import safetensors.torch

        sd = {k[len("model.diffusion_model."):]: v for k, v in safetensors.torch.load_file(str(ck)).items()
              if k.startswith("model.diffusion_model.")}
        with torch.inference_mode():
            model = comfy.sd.load_diffusion_model_state_dict(sd)
    calls = []
    model.model.diffusion_model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    g = torch.Generator().manual_seed(10)
    with torch.inference_mode():
        pos, neg = ([[torch.randn(1, 77, 768, generator=g) * sc, {"pooled_output": torch.randn(1, 768, generator=g)}]]
                    for sc in (1.0, 0.5))
    h = w = a.size // 8
    latent = {"samples": torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(0))}
    ref_latent = {"samples": torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(1))}

    def run(node, **kw):
        with torch.inference_mode():
            return node.execute(**kw).result

    def invert(lat):
        calls.clear()
        t = time.perf_counter()
        traj = run(DiffEditorInvert, model=model, positive=pos, negative=neg, latent=lat, steps=a.steps,
                   scheduler="ddim_uniform", cfg=1.0, exact=False, exact_iters=10, record_kv_bank=True,
                   bank_start=0.0, bank_end=1.0, kv_budget_mb=16384.0)[0]
        return traj, time.perf_counter() - t, len(calls)

    traj, inv_s, inv_calls = invert(latent)
    ref, _, _ = invert(ref_latent)
    S = a.size
    m = torch.zeros(1, S, S)
    m[:, S // 3:S // 3 + S // 4, S // 6:S // 6 + S // 4] = 1
    cx, cy, dx = S // 6 + S // 8, S // 3 + S // 8, 8 * max(1, S // 48)
    specs = {
        "move": run(DiffEditorMoveSpec, mask=m, dx=dx, dy=0, scale=1.0)[0],
        "drag": run(DiffEditorDragSpec, points=f"{cx},{cy}->{cx + dx},{cy}")[0],
        "appearance": run(DiffEditorAppearanceSpec, mask=m, reference=ref, ref_mask=m)[0],
        "paste": run(DiffEditorPasteSpec, reference=ref, mask=m, dx=dx, dy=0)[0],
    }
    knobs = dict(preset="DiffEditor", seed=42, guidance_strength=1.0, keep_background=False)  # official preset
    res = {"checkpoint": "thin SD15-detected (320 ch, 3 levels, random)", "size": S, "steps": a.steps,
           "threads": a.threads, "torch": torch.__version__, "inversion_s": inv_s, "inversion_unet_calls": inv_calls,
           "kv_bank_bytes": traj.bank.nbytes, "tasks": {}}
    for name, spec in specs.items():
        calls.clear()
        t = time.perf_counter()
        run(DiffEditorEdit, model=model, positive=pos, negative=neg, trajectory=traj, spec=spec, cfg=-1.0, **knobs)
        res["tasks"][name] = {"edit_s": time.perf_counter() - t, "unet_forwards": len(calls),
                              "cfg_forwards_batch2": sum(1 for b in calls if b == 2),
                              "single_forwards": sum(1 for b in calls if b == 1)}
        print(name, res["tasks"][name], flush=True)
    p = pathlib.Path(a.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
