"""Text-to-image quality of the demo model, scored by the analytic detector.

    python bench/demo_quality.py --n 200 --out bench/results/demo_quality.json

For N captions of held-out generated scenes, samples one image each (DDIM, classifier-free guidance) from
the demo model and asks the colour detector (with its shape guess) which captioned objects it finds.
A captioned object counts as *found* when an unused detection has its colour and the detector's shape
guess is its shape (greedy, nearest centroid first among candidates); ``color_rate`` relaxes the shape.
Writes PATH (rates, per object count), PATH with ``.png`` (the first 32 samples beside their source scene:
the caption's "truth" is one of many valid layouts, so only colour/shape/count are scored, not placement).
"""
from __future__ import annotations

import argparse
import json
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
from ..samplers.sampling import sample_diffeditor  # noqa: E402
from ..samplers.schedule import ddim_sigmas  # noqa: E402
from . import scenes  # noqa: E402
from .detector import detect  # noqa: E402

HELDOUT_SEED0 = 7_000_000  # caption scenes: seeds far from anything a test or the edit benchmark uses


@torch.no_grad()
def sample_captions(vae, unet, text_encoder, tokenizer, alphas_cumprod, captions, steps: int = 50,
                    cfg: float = 5.0, seed: int = 0, batch: int = 50) -> np.ndarray:
    """``[N, H, W, 3]`` images in 0..1 sampled from the demo model for ``captions`` (DDIM, eta 0)."""
    sig = ddim_sigmas(steps, alphas_cumprod)
    size = int(unet.config.sample_size)
    chans = int(unet.config.in_channels)
    device = next(unet.parameters()).device
    gen = torch.Generator().manual_seed(seed)  # the noise is drawn on the CPU whatever the device
    sf = float(vae.config.scaling_factor)
    out = []
    for i in range(0, len(captions), batch):
        caps = list(captions[i:i + batch])
        cond = text_encoder(tokenizer(caps).to(device))
        uncond = text_encoder(tokenizer([""]).to(device))
        den = DiffusersDenoiser(unet, cond, uncond, cfg=cfg, alphas_cumprod=alphas_cumprod)
        x = (torch.randn(len(caps), chans, size, size, generator=gen) * sig[0]).to(device)
        with den.installed():
            z = sample_diffeditor(den, x, sig.to(device), disable=True)
        img = vae.decode(z / sf).sample
        out.append(((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def score(image: np.ndarray, scene: scenes.Scene) -> dict:
    """How many of the scene's captioned objects the detector finds in ``image`` (colour+shape, colour)."""
    dets = detect(image, shapes=True)
    found = color_found = 0
    used: set[int] = set()
    used_c: set[int] = set()
    for o in scene.objects:
        cands = [j for j, d in enumerate(dets) if d["color"] == o.color and j not in used_c]
        if cands:
            used_c.add(cands[0])
            color_found += 1
        cands = [j for j, d in enumerate(dets) if d["color"] == o.color and d["shape_guess"] == o.shape
                 and j not in used]
        if cands:
            used.add(cands[0])
            found += 1
    n = len(scene.objects)
    return {"objects": n, "found": found, "color_found": color_found, "detections": len(dets),
            "count_ok": float(len(dets) == n)}


def evaluate(model, n: int = 200, steps: int = 50, cfg: float = 5.0, seed: int = 0, batch: int = 50) -> tuple[dict, list, np.ndarray]:
    vae, unet, te, tok, ac = model
    scs = [scenes.make_scene(HELDOUT_SEED0 + seed * 100_000 + i) for i in range(n)]
    t0 = time.time()
    imgs = sample_captions(vae, unet, te, tok, ac, [s.caption() for s in scs], steps, cfg, seed, batch)
    secs = time.time() - t0
    rows = [dict(score(im, s), caption=s.caption()) for im, s in zip(imgs, scs)]
    objs = sum(r["objects"] for r in rows)
    by_count = {}
    for k in (1, 2, 3):
        sel = [r for r in rows if r["objects"] == k]
        if sel:
            m = sum(r["objects"] for r in sel)
            by_count[str(k)] = {"scenes": len(sel), "found_rate": sum(r["found"] for r in sel) / m,
                                "color_rate": sum(r["color_found"] for r in sel) / m}
    summary = {"n": n, "steps": steps, "cfg": cfg, "seed": seed, "objects": objs,
               "found_rate": sum(r["found"] for r in rows) / objs,
               "color_rate": sum(r["color_found"] for r in rows) / objs,
               "count_rate": float(np.mean([r["count_ok"] for r in rows])),
               "by_object_count": by_count, "seconds": secs}
    return summary, rows, imgs


def save_grid(path: pathlib.Path, imgs: np.ndarray, scs: list, cols: int = 8, zoom: int = 2) -> None:
    """Pairs (source scene of the caption | sample), ``cols`` pairs a row."""
    from PIL import Image

    tiles = [np.concatenate([s.image(), np.ones((s.height, 1, 3), np.float32), im], 1) for im, s in zip(imgs, scs)]
    tiles = [np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=1) for t in tiles]
    while len(tiles) % cols:
        tiles.append(np.ones_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    grid = np.concatenate(rows, 0)
    img = Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8))
    img.resize((img.width * zoom, img.height * zoom), Image.NEAREST).save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=str(ROOT / "models" / "demo" / "weights"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ..models.demo.load import load_demo

    summary, rows, imgs = evaluate(load_demo(a.weights, device=a.device), a.n, a.steps, a.cfg, a.seed)
    summary["weights"] = pathlib.Path(a.weights).name
    summary["device"] = a.device
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    out.with_suffix(".scenes.json").write_text(json.dumps(rows, indent=1))
    k = min(32, len(imgs))
    save_grid(out.with_suffix(".png"), imgs[:k],
              [scenes.make_scene(HELDOUT_SEED0 + a.seed * 100_000 + i) for i in range(k)])
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
