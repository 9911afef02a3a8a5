"""Which DiT blocks make the default feature levels: feature correspondence under a known shift.

    python bench/dit_levels.py --out bench/results/dit_levels.json

The energies (move, drag, appearance, paste, content) compare features of the edited latent with the source's
at corresponding positions, so the feature levels should be the blocks whose image-token features best
*find the same content again after it moved*. Measurement, per model and block:

1. an image of ``(S + shift)`` px is cut twice, at ``(0, 0)`` and at ``(dy, dx)``: two ``S x S`` views of the
   same content, the second shifted by a known whole number of tokens (``16 px`` = 1 token for the 8x
   latent stride and 2x2 patches). Images: a rendered benchmark scene (``bench/scenes.py``, objects on a
   smooth background) and a random texture (smooth multi-scale noise), 4 of each;
2. each view becomes a 4-channel latent by a fixed pseudo-encoder (8x8 average pooling, a fixed 3 -> 4 linear
   map, standardised; the tiny test models have no VAE), and is noised to ``sigma`` with its *own* noise
   draw (``x = (1 - sigma) x0 + sigma eps``; shared noise would let any translation-equivariant network match
   the noise instead of the content);
3. the image-token output of every block (``DiTHost.features``, the engine's own feature path) is taken for
   both latents; each source token's nearest neighbour (cosine) among the shifted view's tokens is compared
   with the true position; tokens whose content left the view are not counted;
4. reported per block: the fraction of correctly matched tokens (``acc``) and the mean error in tokens
   (``err``), averaged over images, 2 noise draws and sigmas 0.1 / 0.3 / 0.5 / 0.7 (also per sigma and per image kind),
   with the noisy latent's own patches as the ``input`` baseline, and ``update_ratio``, how much each block
   changes the image tokens (``|f_l - f_(l-1)| / |f_(l-1)|``).

``--trained [DIR]`` runs it on the tiny Flux (2 + 4) and SD3 (6) DiTs that ``bench/train_tiny_dit.py`` trains for
minutes on the benchmark scenes (``/tmp/tiny_dit``, not committed): the images through the demo VAE they were
trained with (a token is ``8 px``, so ``--tokens 8``: their 8 x 8 training grid, scenes rendered at 88 px as the
training data, seeds held out of it), each scene's caption (or ``--prompt empty``) through the demo text
encoder; result in ``bench/results/dit_levels_trained.json``:

    python bench/train_tiny_dit.py --family flux --minutes 13
    python bench/train_tiny_dit.py --family sd3 --minutes 10
    python bench/dit_levels.py --trained --tokens 8 --images 16 --out bench/results/dit_levels_trained.json

``--pretrained DIR`` runs the same measurement on trained weights from a local diffusers folder (its VAE
encodes the images; ``--device cuda --dtype bfloat16`` on a GPU). Default models: the seeded tiny random Flux (2 double + 2 single blocks) and SD3 (3 joint blocks) of the default test
tier, and deeper random variants (Flux 4 + 8, SD3 12) to see the trend over the depth fraction. **Random
weights are the limit of this measurement**: it measures what the architecture (residual stream, attention
mixing, RoPE vs SD3's absolute position embedding) does to locality, not the learned semantics of trained
Flux / SD3 blocks; no weights are downloaded here. The result and what it changed are in the json's
``decision``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    __package__ = "diffeditor.bench"
sys.path.insert(0, str(ROOT / "tests"))

from ..adapters.diffusers_dit import DiTHost, FlowDenoiser  # noqa: E402
from ..samplers.dit import DIT_LEVEL_FRACTIONS, default_dit_levels  # noqa: E402
from . import scenes  # noqa: E402

TOKEN_PX = 16  # 8 px per latent cell x 2x2 patches
SIGMAS = (0.1, 0.3, 0.5, 0.7)
SHIFTS = ((2, 1), (1, 3))  # (dy, dx) in tokens


def models():
    """name -> (make the transformer, (hidden, pooled) text, image -> latent): the random test models."""
    from tiny_models import dit_text, make_tiny_flux, make_tiny_sd3

    return {
        "tiny-flux (2+2)": (lambda: make_tiny_flux(0), dit_text("flux", 1), pseudo_latent),
        "tiny-sd3 (3)": (lambda: make_tiny_sd3(0), dit_text("sd3", 1), pseudo_latent),
        "deep-flux (4+8)": (lambda: make_tiny_flux(0, num_layers=4, num_single_layers=8), dit_text("flux", 1),
                            pseudo_latent),
        "deep-sd3 (12)": (lambda: make_tiny_sd3(0, num_layers=12), dit_text("sd3", 1), pseudo_latent),
    }


def pretrained(path: str, device: str = "cpu", dtype: str = "float32", text: str | None = None):
    """The same entry for a local diffusers Flux / SD3 folder (``transformer/`` and ``vae/``; nothing is
    downloaded): its VAE encodes the images (``(mean - shift_factor) * scaling_factor``); the text is a file
    saved with ``torch.save((hidden, pooled), f)`` or else zeros (a null prompt: features of the image alone)."""
    import diffusers

    root = pathlib.Path(path)
    cls_name = json.loads((root / "transformer" / "config.json").read_text())["_class_name"]
    if cls_name not in ("FluxTransformer2DModel", "SD3Transformer2DModel"):
        raise ValueError(f"{path}: expected a Flux or SD3 transformer, found {cls_name}")
    dt = getattr(torch, dtype)
    model = getattr(diffusers, cls_name).from_pretrained(root, subfolder="transformer", torch_dtype=dt,
                                                         local_files_only=True).to(device).eval()
    vae = diffusers.AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True).to(device).eval()
    scale = float(vae.config.scaling_factor or 1.0)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    if text is not None:
        hidden, pooled = torch.load(text)
    else:
        hidden = torch.zeros(1, 8, model.config.joint_attention_dim)
        pooled = torch.zeros(1, model.config.pooled_projection_dim)

    @torch.no_grad()
    def encode(img):
        t = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None].to(device) * 2 - 1
        return ((vae.encode(t).latent_dist.mean.float() - shift) * scale).cpu()

    return {f"pretrained {root.name} ({cls_name})": (lambda: model, (hidden.to(device), pooled.to(device)), encode)}


def trained(path: str = "/tmp/tiny_dit", prompt_mode: str = "caption"):
    """The tiny DiTs trained by ``bench/train_tiny_dit.py`` (``<path>/flux``, ``<path>/sd3``: those present) with
    the encoders they were trained with: the demo VAE (``4x`` down, so a token is ``8 px``) and the demo text
    encoder (hidden states, their mean pooled). ``prompt_mode``: ``caption`` (a scene's own caption; the empty
    prompt for a texture) or ``empty``. Returns ``name -> (make, text, encode, options)``."""
    import diffusers

    from . import train_tiny_dit as T

    vae, te, tok = T.load_demo_encoders()
    null = T.encode_text(te, tok, [""])

    def encode(img):
        return T.encode_images(vae, img[None])

    def prompt(kind, seed):
        if prompt_mode == "empty" or kind != "scene":
            return null
        return T.encode_text(te, tok, [scene_caption(seed, _TRAINED_SIZE[0])])

    out = {}
    for family, cls in (("flux", "FluxTransformer2DModel"), ("sd3", "SD3Transformer2DModel")):
        d = pathlib.Path(path) / family / "transformer"
        if not d.exists():
            continue
        model = getattr(diffusers, cls).from_pretrained(d, local_files_only=True).eval()
        info = json.loads((pathlib.Path(path) / family / "train.json").read_text())
        name = (f"trained tiny-{family} ({model.config.num_layers}"
                + (f"+{model.config.num_single_layers}" if family == "flux" else "") + ")")
        out[name] = (lambda m=model: m, null, encode,
                     {"token_px": 8, "prompt": prompt, "train": {k: info[k] for k in (
                         "parameters", "scenes", "batch", "lr", "steps", "wall_s", "threads", "loss_first",
                         "loss_last")}})
    if not out:
        raise FileNotFoundError(f"no trained tiny DiT under {path}: run bench/train_tiny_dit.py first")
    return out


_TRAINED_SIZE = [0]  # the scene canvas of the trained measurement (set by main)


def scene_caption(seed: int, size: int) -> str:
    return scenes.make_scene(seed, size=size).caption()


# ---------------------------------------------------------------------------------------------- images
def texture(seed: int, size: int) -> np.ndarray:
    """Smooth multi-scale random colour texture ``[size, size, 3]`` in 0..1."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, size, size)
    for cells, w in ((4, 1.0), (8, 0.8), (16, 0.7), (32, 0.6)):
        n = torch.randn(1, 3, cells + 1, cells + 1, generator=g)
        img += w * F.interpolate(n, size=(size, size), mode="bicubic", align_corners=True)
    img = (img - img.mean()) / img.std() * 0.2 + 0.5
    return img[0].permute(1, 2, 0).clamp(0, 1).numpy()


def scene(seed: int, size: int) -> np.ndarray:
    return scenes.make_scene(seed, size=size).image()


_ENC = torch.tensor([[0.6, 0.3, 0.1], [-0.4, 0.5, -0.1], [0.2, -0.3, 0.5], [0.3, 0.3, -0.6]])


def pseudo_latent(img: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` -> ``[1, 4, H/8, W/8]``: 8x8 mean, a fixed linear map, standardised."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None]
    z = torch.einsum("oc,bchw->bohw", _ENC, F.avg_pool2d(t, 8))
    return (z - z.mean(dim=(2, 3), keepdim=True)) / z.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


# ---------------------------------------------------------------------------------------------- metric
def match(fa: torch.Tensor, fb: torch.Tensor, shift) -> tuple[float, float, int]:
    """Nearest-neighbour (cosine) match of every token of ``fa`` among ``fb``'s (``[C, h, w]``); the content of
    ``fa`` at (r, c) is at (r - dy, c - dx) in ``fb``. Returns (correct fraction, mean error in tokens, count)."""
    C, h, w = fa.shape
    dy, dx = shift
    a = F.normalize(fa.reshape(C, -1).T.double(), dim=1)
    b = F.normalize(fb.reshape(C, -1).T.double(), dim=1)
    nn = (a @ b.T).argmax(dim=1)
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    tr, tc = rr.flatten() - dy, cc.flatten() - dx
    valid = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
    pr, pc = nn // w, nn % w
    err = torch.sqrt(((pr - tr) ** 2 + (pc - tc) ** 2).double())[valid]
    return float((err == 0).double().mean()), float(err.mean()), int(valid.sum())


def measure(name, make, text, tokens: int, images, encode=None, noise_seeds=(0, 1), device="cpu",
            token_px: int = TOKEN_PX, prompt=None):
    """``prompt(kind, seed) -> (hidden, pooled)`` or None: the text per image (else ``text`` for every image)."""
    encode = pseudo_latent if encode is None else encode
    model = make()
    den = FlowDenoiser(model, *text)
    host = DiTHost(den)
    n = host.num_blocks
    levels = list(range(n))
    size = tokens * token_px
    keys = ["input"] + levels
    acc, err = {l: [] for l in keys}, {l: [] for l in keys}
    by_sigma = {l: {s: [] for s in SIGMAS} for l in keys}
    by_kind = {l: {"scene": [], "texture": []} for l in keys}
    update = {l: [] for l in levels}  # ||f_l - f_{l-1}|| / ||f_{l-1}||: how much block l changes the image tokens
    for kind, seed, img in images:
        if prompt is not None:
            den.cond, den.pooled = (t.to(device) for t in prompt(kind, seed))
        for shift in SHIFTS:
            dy, dx = shift
            za = encode(img[:size, :size])
            zb = encode(img[dy * token_px:dy * token_px + size, dx * token_px:dx * token_px + size])
            for s in SIGMAS:
                for ns in noise_seeds:
                    g = torch.Generator().manual_seed(1000 * seed + 10 * ns + 1)
                    xa = (1 - s) * za + s * torch.randn(za.shape, generator=g)
                    xb = (1 - s) * zb + s * torch.randn(zb.shape, generator=g)
                    sig = torch.tensor([s], device=device)
                    with torch.no_grad():
                        fa = {k: v.float().cpu() for k, v in host.features(xa.to(device), sig, levels).items()}
                        fb = {k: v.float().cpu() for k, v in host.features(xb.to(device), sig, levels).items()}
                    for l in levels[1:]:
                        update[l].append(float((fa[l] - fa[l - 1]).norm() / fa[l - 1].norm()))
                    fa["input"] = F.pixel_unshuffle(xa, 2)  # the patches the transformer sees
                    fb["input"] = F.pixel_unshuffle(xb, 2)
                    for l in acc:
                        a, e, _ = match(fa[l][0], fb[l][0], shift)
                        acc[l].append(a)
                        err[l].append(e)
                        by_sigma[l][s].append(a)
                        by_kind[l][kind].append(a)
    rows = []
    for l in acc:
        rows.append({"block": l, "depth_fraction": None if l == "input" else round((l + 1) / n, 3),
                     "acc": round(float(np.mean(acc[l])), 4), "err_tokens": round(float(np.mean(err[l])), 3),
                     "acc_se": round(float(np.std(acc[l]) / np.sqrt(len(acc[l]))), 4),
                     "acc_by_sigma": {str(s): round(float(np.mean(v)), 4) for s, v in by_sigma[l].items()},
                     "acc_by_image": {k: round(float(np.mean(v)), 4) for k, v in by_kind[l].items()},
                     "update_ratio": round(float(np.mean(update[l])), 4) if update.get(l) else None})
    # paired against the best block (the same images, shifts, sigmas and noise draws): mean and standard error
    best = max(levels, key=lambda l: (np.mean(acc[l]), -l))
    for row in rows:
        d = np.asarray(acc[row["block"]]) - np.asarray(acc[best])
        row["acc_vs_best"] = [round(float(d.mean()), 4), round(float(d.std() / np.sqrt(len(d))), 4)]
    cfg = model.config
    return {"model": name, "blocks": n, "double": host.n_double, "single": host.n_single,
            "heads": cfg.num_attention_heads, "head_dim": cfg.attention_head_dim,
            "default_levels_now": list(default_dit_levels(host.n_double, host.n_single)), "rows": rows}


def best_fractions(results, keep: int = 2) -> dict:
    """Per model the ``keep`` best blocks by accuracy (ties: shallower), as depth fractions."""
    out = {}
    for r in results:
        blocks = [row for row in r["rows"] if row["block"] != "input"]
        top = sorted(blocks, key=lambda row: (-row["acc"], row["block"]))[:keep]
        out[r["model"]] = sorted(row["depth_fraction"] for row in top)
    return out


def best_fractions_by(results, field: str, keep: int = 2) -> dict:
    """Per model and per key of ``row[field]`` (a sigma, an image kind): the ``keep`` best depth fractions."""
    out = {}
    for r in results:
        blocks = [row for row in r["rows"] if row["block"] != "input"]
        out[r["model"]] = {k: sorted(row["depth_fraction"] for row in
                                     sorted(blocks, key=lambda row: (-row[field][k], row["block"]))[:keep])
                           for k in blocks[0][field]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dit_levels.json"))
    ap.add_argument("--tokens", type=int, default=16, help="token grid side (latent side / 2)")
    ap.add_argument("--images", type=int, default=4, help="images of each kind (scene, texture)")
    ap.add_argument("--pretrained", help="a local diffusers Flux / SD3 folder (transformer/, vae/): measure trained "
                    "weights instead of the random test models (nothing is downloaded)")
    ap.add_argument("--text", help="with --pretrained: torch.save'd (hidden_states, pooled) of a prompt (else zeros)")
    ap.add_argument("--trained", nargs="?", const="/tmp/tiny_dit", default=None, metavar="DIR",
                    help="measure the tiny DiTs trained by bench/train_tiny_dit.py (DIR, default /tmp/tiny_dit) "
                    "with the demo VAE and text encoder; use --tokens 8 (their training grid)")
    ap.add_argument("--prompt", choices=("caption", "empty"), default="caption",
                    help="with --trained: a scene's own caption or the empty prompt")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    t0 = time.time()
    token_px = 8 if args.trained else TOKEN_PX
    size = args.tokens * token_px + max(max(s) for s in SHIFTS) * token_px
    _TRAINED_SIZE[0] = size
    images = [("scene", i, scene(i, size)) for i in range(args.images)] + \
             [("texture", 100 + i, texture(100 + i, size)) for i in range(args.images)]
    results = []
    if args.trained:
        entries = trained(args.trained, args.prompt)
    elif args.pretrained is not None:
        entries = pretrained(args.pretrained, args.device, args.dtype, args.text)
    else:
        entries = models()
    for name, (make, text, encode, *opt) in entries.items():
        opt = opt[0] if opt else {}
        t = time.time()
        r = measure(name, make, text, args.tokens, images, encode, device=args.device,
                    token_px=opt.get("token_px", TOKEN_PX), prompt=opt.get("prompt"))
        if "train" in opt:
            r["train"] = opt["train"]
        r["seconds"] = round(time.time() - t, 1)
        results.append(r)
        print(f"{name}: " + ", ".join(f"{row['block']}: {row['acc']:.3f}/{row['err_tokens']:.2f}"
                                       for row in r["rows"]), flush=True)
    if args.trained:
        limit = ("tiny DiTs trained by bench/train_tiny_dit.py (minutes on one CPU thread, on 64 px benchmark scenes "
                 "through the demo VAE): learned features, but a tiny model trained minutes on synthetic scenes, "
                 "not Flux / SD3")
        encoder = "the demo VAE (models/demo/weights: posterior mean x scaling factor, 4x down; a token is 8 px)"
        text = (f"the demo text encoder: {'each scene its own caption, ' if args.prompt == 'caption' else ''}"
                "the empty prompt" + (" for textures" if args.prompt == "caption" else "") + " (pooled: mean)")
        scene_note = f"scenes rendered at {size} px (as the training data), seeds 0.. (held out of training)"
    elif args.pretrained is not None:
        limit = f"trained weights from {args.pretrained} ({args.dtype}, {args.device})"
        encoder = "the model's VAE (posterior mean, shift and scale)"
        text = args.text or "zeros (null prompt)"
        scene_note = None
    else:
        limit = ("random weights: the tiny seeded test models and deeper random variants; this measures what the "
                 "architecture does to locality, not the learned features of trained Flux / SD3 blocks")
        encoder = "8x8 mean pooling + fixed 3->4 linear map, standardised (no VAE)"
        text = "seeded random (hidden, pooled)"
        scene_note = None
    out = {
        "what": "nearest-neighbour feature correspondence under a known shift, per DiT block (bench/dit_levels.py)",
        "limit": limit,
        "setup": {"token_grid": [args.tokens, args.tokens], "latent": [2 * args.tokens, 2 * args.tokens],
                  "token_px": token_px, "image_px": size,
                  "shifts_tokens_dy_dx": [list(s) for s in SHIFTS], "sigmas": list(SIGMAS), "noise_draws": 2,
                  "images": {"scene": args.images, "texture": args.images},
                  **({"scenes": scene_note} if scene_note else {}),
                  "encoder": encoder,
                  "text": text,
                  "metric": "acc = fraction of source tokens whose cosine nearest neighbour in the shifted view is "
                            "the true token; err = mean distance (tokens) to the true token; tokens whose "
                            "content left the view are not counted; 'input' = the noisy latent's 2x2 patches"},
        "fractions_before": list(DIT_LEVEL_FRACTIONS),
        "best_two_by_model": best_fractions(results),
        "best_two_by_sigma": best_fractions_by(results, "acc_by_sigma"),
        "best_two_by_image": best_fractions_by(results, "acc_by_image"),
        "results": results,
        "seconds": round(time.time() - t0, 1),
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
                     "threads": torch.get_num_threads()},
    }
    p = pathlib.Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists():  # keep a decision written by hand
        old = json.loads(p.read_text())
        if "decision" in old:
            out["decision"] = old["decision"]
    p.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {p} in {out['seconds']} s")
    return out


if __name__ == "__main__":
    main()
