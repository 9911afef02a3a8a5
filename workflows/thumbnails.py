"""Render each example workflow's thumbnail (``workflows/<name>.jpg``) on the pack's demo model.

    python workflows/build.py --thumbnails          # ~5-15 min on 2 CPU cores

ComfyUI's template browser shows ``<name>.jpg`` beside each workflow. Each thumbnail is the workflow's own edit
run headless on the demo latent diffusion model (models/demo/weights, 64x64 images) on the same scene as the
workflow's assets (``workflows/assets``, rendered at 512x512 by the same generator), with the workflow's
pixel parameters scaled by 64/512: the panels are the inputs and the result, upscaled 4x. The demo model is
small and weak (see its model card), so these show what the graph does, not SD1.5 quality. The image-prompt
workflow needs weights no test machine has; its thumbnail says so and shows the move without the image prompt.
The Flux and SD3 workflows need models no test machine has either, and the demo model is not a DiT: their
thumbnails are honest previews, the workflow's own DiffEditor Canvas preview of the edit on the scene (what the
edit starts from, drawn by the node's preview code, no model run), labelled with the model family and "preview".
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
ZOOM = 4
SIZE = 64
K = SIZE / 512  # workflow pixels -> demo pixels
STEPS = 50


def _pack():
    sys.path.insert(0, str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    sys.path.insert(0, str(HERE))
    import build

    return build


def scenes_of_the_assets():
    """The assets' scene and reference scene (workflows/build.py write_assets) at the demo model's 64x64."""
    from diffeditor.bench import scenes

    s = SIZE / scenes.CANVAS
    src = scenes.Scene(scenes.render_background("sand", np.random.default_rng(1), SIZE, SIZE),
                       (scenes.Obj("circle", "red", 19 * s, 22 * s, 9 * s),
                        scenes.Obj("square", "blue", 44 * s, 44 * s, 8 * s),
                        scenes.Obj("triangle", "green", 46 * s, 16 * s, 8 * s)), "sand", 1)
    ref = scenes.Scene(scenes.render_background("sky", np.random.default_rng(2), SIZE, SIZE),
                       (scenes.Obj("diamond", "yellow", 24 * s, 14 * s, 8 * s),), "sky", 2)
    return src, ref


class Demo:
    def __init__(self):
        from diffeditor.adapters.pipeline import DiffEditorPipeline
        from diffeditor.models.demo.load import load_demo

        self.vae, self.unet, self.te, self.tok, ac = load_demo(ROOT / "models" / "demo" / "weights")
        self.pipe = DiffEditorPipeline(self.unet, vae=self.vae, encode_text=self.encode, alphas_cumprod=ac)
        self.src, self.ref = scenes_of_the_assets()
        self._inv = {}

    def encode(self, prompts):
        with torch.no_grad():
            return self.te(self.tok(list(prompts)))

    def invert(self, scene):
        key = id(scene)
        if key not in self._inv:
            z = self.pipe.encode_image(torch.from_numpy(scene.image())[None])
            self._inv[key] = (z, self.pipe.invert(z, scene.caption(), steps=STEPS))
        return self._inv[key]

    def image(self, latent) -> np.ndarray:
        return self.pipe.decode(latent)[0].numpy()

    def edit(self, spec, task: str, reference=None, preset: str = "DiffEditor+"):
        z, traj = self.invert(self.src)
        ref = None if reference is None else self.invert(reference)[1]
        return self.image(self.edit_latent(z, traj, spec, task, ref, preset))

    def edit_latent(self, z, traj, spec, task: str, ref=None, preset: str = "DiffEditor+"):
        """One edit as the workflows run it: the pack's preset (the Edit nodes' default) or a published one."""
        from diffeditor.guidance.official import TASK_DEFAULTS
        from diffeditor.guidance.tasks import make_task
        from diffeditor.samplers.edit import preset_schedule

        t = make_task(spec, z, reference=ref, pixels_per_latent=self.pipe.pixels_per_latent)
        cfg = TASK_DEFAULTS[task]["cfg"]
        if preset == "DiffEditor+":
            return self.pipe.edit_pack(traj, t, spec, self.src.caption(), cfg=cfg, seed=42)
        return self.pipe.edit(traj, t, self.src.caption(), cfg=cfg, schedule=preset_schedule(preset, task), seed=42)

    def chain(self, specs):
        """Edits of one image in turns, each on the previous result inverted again (the multi-turn workflow)."""
        z, traj = self.invert(self.src)
        images = []
        for spec in specs:
            z = self.edit_latent(z, traj, spec, "move")
            images.append(self.image(z))
            traj = self.pipe.invert(z, self.src.caption(), steps=STEPS)
        return images


def _mask(arr) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def render(demo: Demo | None, build, names=None):
    """Yield ``(workflow, [(label, image)])`` from the workflows' own parameters (build.graphs())."""
    from diffeditor.guidance.geometry import paste_reference
    from diffeditor.guidance.specs import AppearanceSpec, DragSpec, MoveSpec, PasteSpec

    g = build.graphs()
    src, ref = (demo.src, demo.ref) if demo is not None else scenes_of_the_assets()
    src_img, ref_img = src.image(), ref.image()
    obj, ref_obj = _mask(src.masks()[0]), _mask(ref.masks()[0])
    drawn = json.loads(g["drag"]["canvas"][1]["editor"])  # the points drawn on DiffEditor Canvas
    pairs = [((a * K, b * K), (c * K, d * K)) for a, b, c, d in drawn["points"]]
    region = np.zeros((SIZE, SIZE), np.float32)
    region[12:32, 12:40] = 1  # workflows/assets/diffeditor_drag_region.png at 64x64
    moved = {}

    def move(name):
        p = g[name]["canvas"][1]  # dx, dy, scale of DiffEditor Canvas
        if name not in moved:
            moved[name] = demo.edit(MoveSpec(obj, p["dx"] * K, p["dy"] * K, scale=p["scale"]), "move")
        return moved[name]

    def published_move():
        p = g["move"]["canvas"][1]
        return demo.edit(MoveSpec(obj, p["dx"] * K, p["dy"] * K), "move", preset="DiffEditor")

    def chain():
        from diffeditor.guidance.canvas_state import parse_state, rasterise

        specs = []
        for t in (1, 2, 3):
            p = g["multi_turn"][f"canvas{t}"][1]
            drawn = rasterise(parse_state(p["editor"], "editor").object, (512, 512))
            m = drawn.view(SIZE, 512 // SIZE, SIZE, 512 // SIZE).float().mean((1, 3)) > 0.5  # at 64x64
            specs.append(MoveSpec(m.float(), p["dx"] * K, p["dy"] * K, scale=p["scale"]))
        return [("source", src_img)] + [(f"turn {i}", im) for i, im in enumerate(demo.chain(specs), 1)]

    def paste():
        p = g["paste"]["canvas"][1]
        scale = g["paste"]["paste_ref"][1]["scale"]
        img, m = paste_reference(torch.from_numpy(ref_img)[None], ref_obj, scale, channels_last=True)
        ref_scene = demo.ref if scale == 1.0 else _Scene(img[0].numpy(), demo.ref.caption())
        return [("source", src_img), ("reference", ref_img),
                ("pasted", demo.edit(PasteSpec(m.float(), p["dx"] * K, p["dy"] * K), "paste", ref_scene))]

    jobs = {
        "inversion_reconstruction": lambda: [("source", src_img), ("reconstruction", demo.image(
            demo.pipe.reconstruct(demo.invert(demo.src)[1], demo.src.caption())))],
        "move": lambda: [("source", src_img), ("moved", move("move"))],
        "resize": lambda: [("source", src_img), ("resized", move("resize"))],
        "drag": lambda: [("source + points", _arrows(src_img, pairs)),
                         ("dragged", demo.edit(DragSpec(pairs, mask=_mask(region)), "drag"))],
        "appearance_replace": lambda: [("source", src_img), ("reference", ref_img),
                                       ("result", demo.edit(AppearanceSpec(obj, ref_obj), "appearance", demo.ref))],
        "paste": paste,
        "drag_loss": lambda: [("source + points", _arrows(src_img, pairs)),
                              ("drag loss", _drag_loss(demo, pairs, region, g["drag_loss"]["drag"][1]))],
        "image_prompt_move": lambda: [("source", src_img), ("moved (DiffEditor)", published_move()),
                                      ("needs ViT-H + ip_sd15_64", _banner(src_img))],
        "warp_inpaint": lambda: [("source", src_img), ("warp & inpaint", _warp(demo, obj, g["warp_inpaint"]))],
        "multi_turn": chain,
        **{name: (lambda name=name: _dit_preview(build, g, name)) for name in build.DIT_WORKFLOWS},
        "erase_concept": lambda: _erase(demo, g["erase_concept"]["erase"][1]["concepts"]),
        "safe_guidance": lambda: _sld(demo, g["safe_guidance"]["safety"][1]["text"]),
    }
    assert set(jobs) == set(g), "a workflow without a thumbnail recipe"
    for name, job in jobs.items():
        if names is None or name in names:
            yield name, job()


class _Scene:
    """A pre-rendered image with a caption, invertible like a scene (the rescaled paste reference)."""

    def __init__(self, image: np.ndarray, caption: str):
        self._image, self._caption = image, caption

    def image(self):
        return self._image

    def caption(self):
        return self._caption


def _dit_preview(build, g, name: str):
    """A Flux / SD3 workflow's thumbnail: its DiffEditor Canvas preview on the 512x512 scene asset, computed by
    the node's own preview code (guidance/canvas_preview.py) from the workflow's editor state; no model runs."""
    from PIL import Image

    from diffeditor.guidance.canvas_preview import preview_drag, preview_move
    from diffeditor.guidance.canvas_state import resolve

    family = "Flux.1 dev" if name.startswith("flux") else "SD3.5 medium"
    c = g[name]["canvas"][1]
    with Image.open(HERE / "assets" / g[name]["image"][1]["image"]) as im:
        img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255)
    H, W = img.shape[:2]
    r = resolve(c["task"], c["editor"], (W, H), dx=c["dx"], dy=c["dy"], scale=c["scale"])
    if c["task"] == "drag":
        prev = preview_drag(img, r.points, r.mask)
    else:
        prev = preview_move(img, r.mask, r.dx, r.dy, r.scale)
    note = ["PREVIEW ONLY, not a " + family.split()[0] + " result:",
            "the canvas shows what the edit starts from;", f"the edit itself runs on {family}"]
    return [("source", img.numpy()), (f"{family}: {c['task']} (canvas preview)", prev.numpy(), note)]


def _drag_loss(demo: Demo, pairs, region, params) -> np.ndarray:
    from diffeditor.adapters.diffusers_adapter import DiffusersHost
    from diffeditor.samplers.drag import optimize_drag, strength_step
    from diffeditor.samplers.sampling import sample_diffeditor

    _, traj = demo.invert(demo.src)
    k = strength_step(traj.steps, params["strength"])
    den = demo.pipe.denoiser(demo.src.caption(), None, 1.0)
    sig = traj.sigmas
    x, _, _ = optimize_drag(DiffusersHost(den), traj.at(k), sig[k], sig[k + 1], [h for h, _ in pairs],
                            [t for _, t in pairs], mask=_mask(region), steps=params["steps"], lr=params["lr"],
                            r_m=params["r_m"], r_p=params["r_p"], lam=params["lam"], image_size=(SIZE, SIZE))
    return demo.image(sample_diffeditor(den, x, sig[k:], disable=True))


def _warp(demo: Demo, obj, g) -> np.ndarray:
    """DiffEditor Warp & Inpaint's engine (samplers/inpaint.py) on the demo model with the workflow's values."""
    from diffeditor.guidance.specs import MoveSpec
    from diffeditor.guidance.warp import warp_for_spec
    from diffeditor.samplers.inpaint import sample_warp_inpaint

    p, w = g["spec"][1], g["warp"][1]
    _, traj = demo.invert(demo.src)
    spec = MoveSpec(obj, p["dx"] * K, p["dy"] * K, scale=p["scale"])
    warp = warp_for_spec(spec, tuple(traj.shape[-2:]), demo.pipe.pixels_per_latent)
    den = demo.pipe.denoiser(demo.src.caption(), None, w["cfg"])
    with den.installed(), torch.no_grad():
        out = sample_warp_inpaint(den, traj.z_T, traj.sigmas, trajectory=traj, warp=warp, strength=w["strength"],
                                  seed=w["seed"], grow=w["grow"])
    return demo.image(out)


def _concept_sample(demo: Demo, caption: str, den=None, patch=None, seed: int = 3) -> np.ndarray:
    from diffeditor.samplers.sampling import sample_diffeditor
    from diffeditor.samplers.schedule import ddim_sigmas

    sig = ddim_sigmas(STEPS, demo.pipe.alphas_cumprod)
    x = torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(seed)) * float(sig[0])
    den = den or demo.pipe.denoiser(caption, None, 4.0)
    if patch is None:
        return demo.image(sample_diffeditor(den, x, sig, disable=True))
    from diffeditor.adapters.diffusers_erasure import patched

    with patched(demo.unet, patch):
        return demo.image(sample_diffeditor(den, x, sig, disable=True))


def _erase(demo: Demo, concept: str):
    """UCE (the workflow erases its concept with the colours of the scene preserved) on the demo model."""
    from diffeditor.adapters.diffusers_erasure import uce_patch
    from diffeditor.guidance.uce import concept_embedding

    def emb(words):
        with torch.no_grad():
            hs = demo.te(demo.tok([words]))
        return concept_embedding(hs, len(demo.tok.words(words)) + 2).reshape(-1)

    caption = demo.src.caption()
    keep = sorted({o.color for o in demo.src.objects} - {concept})
    deltas = uce_patch(demo.unet, torch.stack([emb(concept)]), torch.stack([emb("")]),
                       torch.stack([emb(c) for c in keep]))
    return [("original", _concept_sample(demo, caption)), (f"'{concept}' erased",
                                                           _concept_sample(demo, caption, patch=deltas))]


def _sld(demo: Demo, concept: str):
    from diffeditor.bench.editbench import SLDDenoiser
    from diffeditor.guidance.sld import sld_preset

    caption = demo.src.caption()
    den = SLDDenoiser(demo.pipe, caption, concept, 4.0, sld_preset("medium"))
    return [("plain", _concept_sample(demo, caption)), (f"away from '{concept}'",
                                                       _concept_sample(demo, caption, den=den))]


# ------------------------------------------------------------------------------------------- drawing
def _arrows(img: np.ndarray, pairs) -> np.ndarray:
    """The image with each handle -> target drawn (red handle dot, blue target dot, white line), at 1x."""
    from PIL import Image, ImageDraw

    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((SIZE * ZOOM,) * 2, Image.NEAREST)
    d = ImageDraw.Draw(im)
    for (hx, hy), (tx, ty) in pairs:
        h, t = (hx * ZOOM, hy * ZOOM), (tx * ZOOM, ty * ZOOM)
        d.line([h, t], fill=(255, 255, 255), width=3)
        d.ellipse([h[0] - 6, h[1] - 6, h[0] + 6, h[1] + 6], fill=(230, 30, 30))
        d.ellipse([t[0] - 6, t[1] - 6, t[0] + 6, t[1] + 6], fill=(30, 90, 230))
    return np.asarray(im, dtype=np.float32) / 255


def _banner(img: np.ndarray) -> np.ndarray:
    return np.full_like(img, 0.15)


def compose(panels: list[tuple[str, np.ndarray]], path: pathlib.Path) -> None:
    from PIL import Image, ImageDraw

    side, gap, top = SIZE * ZOOM, 8, 26
    W = len(panels) * side + (len(panels) + 1) * gap
    canvas = Image.new("RGB", (W, side + top + gap), (24, 24, 28))
    d = ImageDraw.Draw(canvas)
    for i, (label, img, *caption) in enumerate(panels):
        im = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
        if im.width != side:
            im = im.resize((side, side), Image.NEAREST if im.width < side else Image.LANCZOS)
        x = gap + i * (side + gap)
        canvas.paste(im, (x, top))
        d.text((x + 4, 7), label, fill=(235, 235, 235))
        for lines in caption:  # a dark band at the bottom of the panel
            y0 = top + side - 16 * len(lines) - 8
            d.rectangle([x, y0, x + side - 1, top + side - 1], fill=(16, 16, 20))
            for j, line in enumerate(lines):
                d.text((x + 6, y0 + 4 + 16 * j), line, fill=(255, 220, 120))
        if label.startswith("needs"):
            d.text((x + 16, top + side // 2 - 20), "image prompt not run here:", fill=(235, 235, 235))
            d.text((x + 16, top + side // 2), "needs CLIP ViT-H/14 and", fill=(235, 235, 235))
            d.text((x + 16, top + side // 2 + 20), "DiffEditor's ip_sd15_64 weights", fill=(235, 235, 235))
    canvas.save(path, "JPEG", quality=88, optimize=True)


def main(names=None, missing_only: bool = False) -> None:
    build = _pack()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if missing_only:
        names = [n for n in build.NAMES if not (HERE / f"{build.NAMES[n]}.jpg").exists()]
    demo = Demo() if names is None or set(names) - set(build.DIT_WORKFLOWS) else None  # DiT previews need none
    for name, panels in render(demo, build, names):
        path = HERE / f"{build.NAMES[name]}.jpg"
        compose(panels, path)
        print(f"wrote {path.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args or None, missing_only="--missing" in sys.argv)
