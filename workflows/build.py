"""Build the example workflows (UI format + API twins), their image assets and the schema snapshot.

    COMFYUI_ROOT=/path/to/ComfyUI python workflows/build.py     # refresh schema/schema_snapshot.json from live nodes
    python workflows/build.py                                   # rebuild the JSON from the committed snapshot
    python workflows/build.py --thumbnails                      # re-render <name>.jpg on the demo model
    python workflows/build.py --migrate old.json [new.json]     # update a workflow of the first Edit interface

Each workflow is described once (nodes, widget values by input name, links) and written as

* the UI format the ComfyUI front end loads: ``workflows/<name>.json`` (drag it onto the canvas; ComfyUI also
  lists this folder in its template browser, where the file name is the title and ``<name>.jpg`` the
  thumbnail, rendered by ``workflows/thumbnails.py`` on the demo model), and
* the API format ``/prompt`` accepts: ``workflows/api/<name>.json``.

Widget order, socket types and links come from ``schema/schema_snapshot.json`` (node inputs/outputs as ComfyUI's
/object_info reports them). The default test tier validates the workflows against it; the host tier checks it
against the live schemas, so it cannot go stale. The snapshot sits in a sub-folder on purpose: ComfyUI lists
every ``workflows/*.json`` as a template.

UI-format widget values follow the front end (comfyui-frontend-package 1.27): the widgets in input order
(required, then optional); an INT/COMBO with ``control_after_generate`` is followed by its mode (``"fixed"``;
a COMBO also by an empty filter string); a required ``image_upload`` combo adds an ``upload`` button widget,
which is not in /object_info's ``input_order``, so the front end creates it last and saves it as ``"image"``.
"""
from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SNAPSHOT = HERE / "schema" / "schema_snapshot.json"
ASSETS = HERE / "assets"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CORE_NODES = ("CheckpointLoaderSimple", "CLIPTextEncode", "LoadImage", "LoadImageMask", "VAEEncode", "VAEDecode",
              "SaveImage", "PreviewImage", "EmptyLatentImage", "KSampler", "DisableNoise", "CFGGuider",
              "SamplerCustomAdvanced", "CLIPVisionLoader", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader",
              "VAELoader", "FluxGuidance")
# Pack nodes that workflows/migrate.py writes into migrated workflows of the first interface (the spec nodes
# the canvas workflows no longer show): in the snapshot so migrated workflows validate against it.
MIGRATED_NODES = ("DiffEditorMoveSpec", "DiffEditorDragSpec", "DiffEditorPasteSpec", "DiffEditorPasteReference",
                  "DiffEditorEditOptions")
# Front-end-only node types (no Python class, never in the API format).
FRONTEND_ONLY = ("MarkdownNote",)
# Workflows that need weights no test machine has (a CLIP ViT-H image encoder, the released image-prompt
# weights): validated against the schemas, not run in the CPU server test.
NEEDS_USER_WEIGHTS = ("image_prompt_move",)
# Flux / SD3 workflows: their text encoders (T5-XXL, 4.7B parameters at a fixed size) cannot be built on a test
# machine, so the CPU server test does not run them; tests/host/test_dit_nodes.py runs their graphs in-process
# on tiny Flux / SD3 MODELs with the loaders' outputs substituted.
DIT_WORKFLOWS = ("flux_move", "flux_drag", "sd3_move")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# listed from the user's model folders: install-specific
FILE_COMBOS = ("ckpt_name", "clip_name", "weights", "unet_name", "vae_name", "clip_name1", "clip_name2", "clip_name3")

# ------------------------------------------------------------------------------------------- graphs
# A graph is {key: (node type, {input name: widget value | (source key, output index)})}, in execution order.
PROMPT = "a red circle, a blue square and a green triangle on a sand background"
# Official DiffEditor presets: 50 DDIM steps on the ddim_uniform schedule, inversion without CFG.
INVERT = dict(steps=50, scheduler="ddim_uniform", cfg=1.0, exact=False, exact_iters=10, record_kv_bank=True,
              bank_start=0.0, bank_end=1.0, kv_budget_mb=4096.0)
KNOBS = dict(preset="DiffEditor+", seed=42, guidance_strength=1.0, keep_background=False)
# The workflow that shows the paper's image prompt keeps the published preset (its guided edit is what the
# image prompt steers); every other edit uses the pack's preset, the Edit nodes' default.
PUBLISHED_PRESET = ("image_prompt_move",)
# Node types whose required widgets may be left to their schema defaults: DiffEditor Edit Options' defaults
# are the official values (guidance/official.py), so a graph shows them without restating a number.
DEFAULTS_ARE_OFFICIAL = ("DiffEditorEditOptions",)
# The edit's classifier-free guidance, written out (not -1 = auto) so artists see it: the official value per
# task (guidance.official.TASK_DEFAULTS; tests/test_workflows.py keeps the two in sync).
EDIT_TASK = {"move": "move", "resize": "move", "drag": "drag", "appearance_replace": "appearance",
             "paste": "paste", "image_prompt_move": "move", "flux_move": "move", "flux_drag": "drag",
             "sd3_move": "move"}
TASK_CFG = {"move": 4.0, "drag": 4.0, "appearance": 5.0, "paste": 4.0}

# Flux.1 dev and SD3.5 medium, loaded the way their users load them (the files of their model cards / ComfyUI's
# examples). Flow models invert on the 'simple' schedule (what BasicScheduler 'simple' gives on the MODEL) with
# about 28 steps; no K,V bank (the pack's preset warps moves and drags and needs none).
FLUX_UNET, FLUX_VAE = "flux1-dev.safetensors", "ae.safetensors"
CLIP_L, CLIP_G, T5XXL = "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"
SD3_CKPT = "sd3.5_medium.safetensors"
DIT_INVERT = dict(INVERT, steps=28, scheduler="simple", record_kv_bank=False)
FLUX_GUIDANCE = 3.5
#: the cfg of the Edit on a guidance-distilled model (Flux dev/schnell): 1, the guidance is FluxGuidance's
DISTILLED = ("flux_move", "flux_drag")

# The file name is the title ComfyUI's template browser shows: one human title per workflow.
NAMES = {"inversion_reconstruction": "DiffEditor - Invert and reconstruct", "move": "DiffEditor - Move an object",
         "resize": "DiffEditor - Resize an object", "drag": "DiffEditor - Drag points",
         "appearance_replace": "DiffEditor - Replace an appearance", "paste": "DiffEditor - Paste an object",
         "drag_loss": "DiffEditor - Drag with the drag loss",
         "image_prompt_move": "DiffEditor - Move with an image prompt",
         "erase_concept": "DiffEditor - Erase a concept (UCE)", "safe_guidance": "DiffEditor - Safe guidance (SLD)",
         "warp_inpaint": "DiffEditor - Fast move (Warp and Inpaint)",
         "multi_turn": "DiffEditor - Three chained edits (stability tracking)",
         "flux_move": "DiffEditor - Flux - move an object", "flux_drag": "DiffEditor - Flux - drag points",
         "sd3_move": "DiffEditor - SD3 - move an object"}
# (no ':' in a title: the file name is the title, and Windows checkouts cannot hold a ':' in a file name)

TITLES = {
    "ckpt": "Load Checkpoint (SD1.5)", "pos": "Prompt (describe the image)", "neg": "Negative prompt",
    "image": "Source image", "encode": "VAE Encode (source)", "invert": "DiffEditor Invert (DDIM, K,V bank)",
    "reconstruct": "DiffEditor Reconstruct", "object": "Object mask (white = object)",
    "region": "Editable region (white = may change)", "ref_image": "Reference image",
    "ref_encode": "VAE Encode (reference)", "ref_invert": "DiffEditor Invert (reference)",
    "ref_object": "Reference object mask (white = object)", "edit": "DiffEditor Edit", "decode": "VAE Decode",
    "save": "Save Image", "drag": "DiffEditor Drag Optimize", "preview": "Preview (no model run)",
    "noise": "Disable Noise (deterministic)",
    "guider": "CFG Guider", "sampler": "DiffEditor Sampler (DDIM)", "sample": "Sample the rest",
    "clip_vision": "CLIP Vision (ViT-H/14)", "ip_weights": "DiffEditor Load Image Prompt",
    "image_prompt": "DiffEditor Image Prompt", "erase": "DiffEditor Erase Concept (UCE)",
    "safety": "Unsafe concept (prompt)", "safe": "DiffEditor Safe Guidance (SLD)", "empty": "Empty Latent 512x512",
    "options": "DiffEditor Edit Options (optional; defaults = official)",
    "paste_ref": "DiffEditor Paste Reference (scale the object)",
    "warp": "DiffEditor Warp & Inpaint (no guidance)",
    "stable1": "Turn 1: DiffEditor Stable Edit", "stable2": "Turn 2: DiffEditor Stable Edit",
    "stable3": "Turn 3: DiffEditor Stable Edit", "decode1": "VAE Decode (turn 1)", "decode2": "VAE Decode (turn 2)",
    "invert2": "DiffEditor Invert (turn 1's result)", "invert3": "DiffEditor Invert (turn 2's result)",
    "preview1": "Preview (turn 1)", "preview2": "Preview (turn 2)",
}
# Titles of the Flux / SD3 workflows' own nodes (their loaders, FluxGuidance, the flow-schedule inversion).
DIT_TITLES = {
    "flux": {"unet": "Load Diffusion Model (Flux.1 dev)", "clip": "DualCLIPLoader (CLIP-L + T5-XXL, flux)",
             "vae": "Load VAE (Flux ae)", "text": "Prompt (describe the image)",
             "pos": f"FluxGuidance {FLUX_GUIDANCE:g} (Flux's guidance)", "neg": "Negative prompt (unused at cfg 1)",
             "invert": "DiffEditor Invert (28 steps, simple)", "edit": "DiffEditor Edit (cfg 1)"},
    "sd3": {"ckpt": "Load Checkpoint (SD3.5 medium)", "clip": "TripleCLIPLoader (CLIP-L, CLIP-G, T5-XXL)",
            "invert": "DiffEditor Invert (28 steps, simple)"},
}
SPEC_TITLES = {"appearance_replace": "Appearance spec", "image_prompt_move": "Move spec (dx, dy in pixels)",
               "warp_inpaint": "Move spec (dx, dy in pixels)"}
CANVAS_TITLES = {"canvas1": "Turn 1 canvas: move the circle", "canvas2": "Turn 2 canvas: move the square",
                 "canvas3": "Turn 3 canvas: shrink the triangle",
                 "move": "Canvas: draw the object, drag it", "resize": "Canvas: draw the object, wheel to resize",
                 "drag": "Canvas: click handle, then target", "paste": "Canvas: place the reference object",
                 "flux_move": "Canvas: draw the object, drag it", "sd3_move": "Canvas: draw the object, drag it",
                 "flux_drag": "Canvas: click handle, then target"}

_SD15 = ("Checkpoint: any SD1.5 checkpoint in `ComfyUI/models/checkpoints/`; this workflow names "
         "`v1-5-pruned-emaonly.safetensors` from https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 "
         "(pick yours in Load Checkpoint).")
_IMAGES = ("Images: copy `workflows/assets/*.png` of ComfyUI-DiffEditor into `ComfyUI/input/` "
           "(masks: white = 1).\n\n" + _SD15)
_EDIT = ("Invert the source once (DDIM, 50 steps, K,V bank on), describe the edit with a spec node, and "
         "DiffEditor Edit samples it (`preset`: DiffEditor+, the pack's default, or the published DiffEditor and "
         "DragonDiffusion). `guidance_strength` pushes harder or softer; "
         "connect a DiffEditor Edit Options node to change anything else.")
_CANVAS = ("Invert the source once (DDIM, 50 steps, K,V bank on), draw the edit on the **DiffEditor Canvas** node "
           "(or in the large editor: *open canvas editor*), and DiffEditor Edit runs it with the pack's preset "
           "DiffEditor+ (for a move, resize, drag or paste: the object warped and only the uncovered area painted; "
           "pick `DiffEditor` or `DragonDiffusion` for the published guided edits). "
           "The preview shows what the edit starts from without running the model. `guidance_strength` pushes "
           "harder or softer; connect a DiffEditor Edit Options node to change anything else.")
_CANVAS_DIT = ("The same nodes as on SD1.5 (the model family is read from the MODEL): invert the source once, draw "
               "the edit on the **DiffEditor Canvas** node, and DiffEditor Edit runs it with the pack's preset "
               "DiffEditor+ (the object warped, only the uncovered area painted: no K,V bank, no guidance "
               "gradients). The preview shows what the edit starts from without running the model.")
_FLUX = ("**Models** (as Flux users load them): `flux1-dev.safetensors` from "
         "https://huggingface.co/black-forest-labs/FLUX.1-dev in `ComfyUI/models/diffusion_models/` (Load Diffusion "
         "Model), `ae.safetensors` from the same repository in `ComfyUI/models/vae/` (Load VAE), `clip_l.safetensors` "
         "and `t5xxl_fp16.safetensors` (or `t5xxl_fp8_e4m3fn.safetensors`) from "
         "https://huggingface.co/comfyanonymous/flux_text_encoders in `ComfyUI/models/text_encoders/` "
         "(DualCLIPLoader, type flux).\n\n**Settings**: Flux dev and schnell are guidance-distilled: cfg 1 on every "
         "DiffEditor node (the Edit's -1 means 1, above 1 is refused) and the guidance on the prompt with "
         f"FluxGuidance ({FLUX_GUIDANCE:g}). Flow models invert on the `simple` schedule (what BasicScheduler "
         "'simple' gives on the MODEL) with about 28 steps; Flux's native size is 1024x1024 (it works from 512; "
         "the canvas scales its drawing to the image).")
_SD3 = ("**Models** (as SD3 users load them): `sd3.5_medium.safetensors` from "
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium in `ComfyUI/models/checkpoints/` (Load "
        "Checkpoint: the MMDiT and its VAE), and `clip_l.safetensors`, `clip_g.safetensors` and "
        "`t5xxl_fp16.safetensors` from that repository's `text_encoders/` folder in `ComfyUI/models/text_encoders/` "
        "(TripleCLIPLoader). SD3 medium and SD3.5 large load the same way.\n\n**Settings**: SD3 samples with true "
        "classifier-free guidance, so the Edit's cfg is the task's official value (move 4). Flow models invert on "
        "the `simple` schedule (what BasicScheduler 'simple' gives on the MODEL) with about 28 steps; the native "
        "size is 1024x1024 (it works from 512).")
_DIT_IMAGES = ("\n\nImages: copy `workflows/assets/*.png` of ComfyUI-DiffEditor into `ComfyUI/input/` (512x512). "
               "UCE, SLD and DiffEditor's image prompt are SD-UNet only and refuse a Flux/SD3 MODEL.")
NOTES = {
    "inversion_reconstruction": "## Inversion / reconstruction\n\nDDIM-invert the source (50 steps, "
                                "ddim_uniform) and sample it back: the output should match the input.\n\n" + _IMAGES,
    "move": "## Move an object\n\n" + _CANVAS + " Paint or box the object (Brush / Box), then drag it with Move; "
            "dx, dy follow (pixels, whole latent cells).\n\n" + _IMAGES,
    "resize": "## Resize an object\n\n" + _CANVAS + " Paint or box the object, then use the wheel or the corner "
              "handle in Move: it scales about the object's centre.\n\n" + _IMAGES,
    "drag": "## Drag points\n\n" + _CANVAS + " Click a handle, then its target (numbered arrows); drag a point to "
            "adjust it, right-click to delete it. A region box marks what moves with the points (DiffEditor+; "
            "the published presets: what may change). The Edit Options node "
            "shows every mechanism at its official value.\n\n" + _IMAGES,
    "appearance_replace": "## Replace appearance\n\n" + _EDIT + " The reference image is inverted the same way; "
                          "the masked object takes the appearance of the reference object.\n\n" + _IMAGES,
    "paste": "## Paste an object\n\n" + _CANVAS + " The object of the reference image (its mask file here; paint "
             "or box it on the canvas instead) is pasted into the source: drag it into place with Move. To resize "
             "it, set `scale` on DiffEditor Paste Reference, which rescales the reference image and its mask "
             "before the reference is encoded and inverted (the canvas keeps a pasted object's size).\n\n"
             + _IMAGES,
    "drag_loss": "## Drag with the drag loss\n\nOptimise the latent at the strength step (DragDiffusion-style "
                 "motion supervision), then sample the rest with any sampler (here deterministic DDIM).\n\n"
                 + _IMAGES,
    "image_prompt_move": "## Move with DiffEditor's image prompt\n\nNeeds the CLIP ViT-H/14 image encoder: "
                         "`models/image_encoder/model.safetensors` of https://huggingface.co/h94/IP-Adapter, saved as "
                         "`ComfyUI/models/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`; and DiffEditor's "
                         "image-prompt weights `ip_sd15_64.bin` from https://huggingface.co/Adapter/DragonDiffusion, "
                         "converted once with `guidance.ip_weights.convert_to_safetensors` to "
                         "`ComfyUI/models/diffeditor/ip_sd15_64.safetensors`.\n\n" + _EDIT + " This workflow uses "
                         "the published DiffEditor preset: the image prompt steers its guided edit.\n\n" + _IMAGES,
    "warp_inpaint": "## Fast move (Warp & Inpaint)\n\nInvert the source once (no K,V bank needed); DiffEditor Warp & "
                    "Inpaint moves the masked object on the latent grid and paints only the area it uncovered, "
                    "over the last `strength` of the schedule: no guidance, no gradients, a fraction of an edit's "
                    "model calls. Its `start` output previews the warp before any model call. The same spec "
                    "nodes work (move/resize, drag, paste).\n\n" + _IMAGES,
    "multi_turn": "## Three chained edits with stability tracking\n\nEach turn edits the previous turn's result: "
                  "it is inverted again (no VAE round trip: the latent goes straight into DiffEditor Invert), the "
                  "edit is drawn on a Canvas that shows that result (queue once to see turns 2 and 3's images), "
                  "and **DiffEditor Stable Edit** runs it: it measures how much the edit changed the image outside "
                  "the edited region and, below `threshold_db`, runs it again less aggressively (gentler "
                  "guidance and SDE, then the background locked, then the input kept outside), up to "
                  "`max_level`. Its `report` output says what each turn did (wire it to core's *Preview Any* "
                  "to read it). With the published presets the "
                  "background drifts a little more every turn; the tracking stops that.\n\n" + _IMAGES,
    "erase_concept": "## Erase a concept (UCE)\n\nEdits the cross-attention projections so the concepts are no "
                     "longer drawn (one per line); `preserve` lists concepts to keep. SD1.x/SD2.x/SDXL only: "
                     "Flux and SD3 have no cross-attention for the closed form to edit.\n\n" + _SD15,
    "safe_guidance": "## Safe latent diffusion (SLD)\n\nSteers sampling away from the concept in the "
                     "`Unsafe concept` prompt.\n\n" + _SD15,
    "flux_move": "## Flux: move an object\n\n" + _CANVAS_DIT + " Paint or box the object (Brush / Box), then drag "
                 "it with Move.\n\n" + _FLUX + _DIT_IMAGES,
    "flux_drag": "## Flux: drag points\n\n" + _CANVAS_DIT + " Click a handle, then its target (numbered arrows); a "
                 "region box marks what moves with the points.\n\n" + _FLUX + _DIT_IMAGES,
    "sd3_move": "## SD3: move an object\n\n" + _CANVAS_DIT + " Paint or box the object (Brush / Box), then drag it "
                "with Move.\n\n" + _SD3 + _DIT_IMAGES,
}


# The red circle of diffeditor_scene.png, painted with one brush dab on the canvas (centre 152,176, radius 72:
# exactly the pixels of workflows/assets/diffeditor_object_mask.png).
BRUSH_CIRCLE = {"paint": [[152, 176]], "r": 72}


def canvas_state(**layers) -> str:
    """The DiffEditor Canvas editor text, as the front end writes it (compact JSON, fixed key order)."""
    state = {"version": 1, "size": [512, 512]}
    state.update({k: layers[k] for k in ("points", "object", "region") if layers.get(k)})
    return json.dumps(state, separators=(",", ":"))


def _base(image="diffeditor_scene.png", prompt=PROMPT):
    return {
        "ckpt": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
        "pos": ("CLIPTextEncode", {"text": prompt, "clip": ("ckpt", 1)}),
        "neg": ("CLIPTextEncode", {"text": "", "clip": ("ckpt", 1)}),
        "image": ("LoadImage", {"image": image}),
        "encode": ("VAEEncode", {"pixels": ("image", 0), "vae": ("ckpt", 2)}),
        "invert": ("DiffEditorInvert", dict(INVERT, model=("ckpt", 0), positive=("pos", 0), negative=("neg", 0),
                                            latent=("encode", 0))),
    }


def _finish(g, latent_src, prefix, vae=("ckpt", 2)):
    g["decode"] = ("VAEDecode", {"samples": (latent_src, 0), "vae": vae})
    g["save"] = ("SaveImage", {"filename_prefix": f"DiffEditor/{prefix}", "images": ("decode", 0)})
    return g


def _edit(g, name, spec="spec", model=("ckpt", 0), **over):
    knobs = dict(KNOBS, preset="DiffEditor") if name in PUBLISHED_PRESET else KNOBS
    cfg = 1.0 if name in DISTILLED else TASK_CFG[EDIT_TASK[name]]
    g["edit"] = ("DiffEditorEdit", dict(knobs, **dict(dict(cfg=cfg, model=model,
                                                           positive=("pos", 0), negative=("neg", 0),
                                                           trajectory=("invert", 0), spec=(spec, 0)), **over)))
    return g


def _flux_base(image="diffeditor_scene.png", prompt=PROMPT):
    """Flux.1 dev as its users load it: UNETLoader + DualCLIPLoader (flux) + VAELoader, FluxGuidance on the prompt."""
    return {
        "unet": ("UNETLoader", {"unet_name": FLUX_UNET, "weight_dtype": "default"}),
        "clip": ("DualCLIPLoader", {"clip_name1": CLIP_L, "clip_name2": T5XXL, "type": "flux", "device": "default"}),
        "vae": ("VAELoader", {"vae_name": FLUX_VAE}),
        "text": ("CLIPTextEncode", {"text": prompt, "clip": ("clip", 0)}),
        "pos": ("FluxGuidance", {"conditioning": ("text", 0), "guidance": FLUX_GUIDANCE}),
        "neg": ("CLIPTextEncode", {"text": "", "clip": ("clip", 0)}),
        "image": ("LoadImage", {"image": image}),
        "encode": ("VAEEncode", {"pixels": ("image", 0), "vae": ("vae", 0)}),
        "invert": ("DiffEditorInvert", dict(DIT_INVERT, model=("unet", 0), positive=("pos", 0), negative=("neg", 0),
                                            latent=("encode", 0))),
    }


def _sd3_base(image="diffeditor_scene.png", prompt=PROMPT):
    """SD3.5 medium as its users load it: the checkpoint (MMDiT + VAE) and TripleCLIPLoader for the encoders."""
    return {
        "ckpt": ("CheckpointLoaderSimple", {"ckpt_name": SD3_CKPT}),
        "clip": ("TripleCLIPLoader", {"clip_name1": CLIP_L, "clip_name2": CLIP_G, "clip_name3": T5XXL}),
        "pos": ("CLIPTextEncode", {"text": prompt, "clip": ("clip", 0)}),
        "neg": ("CLIPTextEncode", {"text": "", "clip": ("clip", 0)}),
        "image": ("LoadImage", {"image": image}),
        "encode": ("VAEEncode", {"pixels": ("image", 0), "vae": ("ckpt", 2)}),
        "invert": ("DiffEditorInvert", dict(DIT_INVERT, model=("ckpt", 0), positive=("pos", 0), negative=("neg", 0),
                                            latent=("encode", 0))),
    }


def _dit_graphs() -> dict[str, dict]:
    """The Flux and SD3 workflows: the move and drag canvases of the SD1.5 ones on the flow models."""
    out = {}
    move = dict(task="move", dx=96, dy=32, scale=1.0, editor=canvas_state(object=[BRUSH_CIRCLE]))
    drag = dict(task="drag", dx=0, dy=0, scale=1.0, editor=canvas_state(points=[[152, 176, 216, 176]],
                                                                        region=[{"box": [96, 96, 320, 256]}]))
    for name, base, canvas, model, vae in (("flux_move", _flux_base, move, ("unet", 0), ("vae", 0)),
                                           ("flux_drag", _flux_base, drag, ("unet", 0), ("vae", 0)),
                                           ("sd3_move", _sd3_base, move, ("ckpt", 0), ("ckpt", 2))):
        g = base()
        g["canvas"] = ("DiffEditorCanvas", dict(canvas, image=("image", 0)))
        g["preview"] = ("PreviewImage", {"images": ("canvas", 1)})
        out[name] = _finish(_edit(g, name, spec="canvas", model=model), "edit", name, vae=vae)
    return out


def _mask(name, file):
    return {name: ("LoadImageMask", {"image": file, "channel": "red"})}


def _reference(g, image="diffeditor_reference.png", scale=None):
    """The reference image, encoded and inverted; with ``scale``, first rescaled by DiffEditor Paste Reference
    about the object of ``g["ref_object"]``."""
    g["ref_image"] = ("LoadImage", {"image": image})
    pixels = ("ref_image", 0)
    if scale is not None:
        g["paste_ref"] = ("DiffEditorPasteReference", {"image": ("ref_image", 0), "mask": ("ref_object", 0),
                                                       "scale": scale})
        pixels = ("paste_ref", 0)
    g["ref_encode"] = ("VAEEncode", {"pixels": pixels, "vae": ("ckpt", 2)})
    g["ref_invert"] = ("DiffEditorInvert", dict(INVERT, model=("ckpt", 0), positive=("pos", 0),
                                                negative=("neg", 0), latent=("ref_encode", 0)))
    return g


def graphs() -> dict[str, dict]:
    out = {}
    g = _base()
    g["invert"][1]["record_kv_bank"] = False
    g["reconstruct"] = ("DiffEditorReconstruct", {"model": ("ckpt", 0), "positive": ("pos", 0),
                                                  "negative": ("neg", 0), "trajectory": ("invert", 0), "cfg": 1.0})
    out["inversion_reconstruction"] = _finish(g, "reconstruct", "reconstruction")

    g = _base()
    g["canvas"] = ("DiffEditorCanvas", {"image": ("image", 0), "task": "move", "dx": 96, "dy": 32, "scale": 1.0,
                                        "editor": canvas_state(object=[BRUSH_CIRCLE])})
    g["preview"] = ("PreviewImage", {"images": ("canvas", 1)})
    out["move"] = _finish(_edit(g, "move", spec="canvas"), "edit", "move")

    g = _base()
    g["canvas"] = ("DiffEditorCanvas", {"image": ("image", 0), "task": "move", "dx": 0, "dy": 0, "scale": 1.3,
                                        "editor": canvas_state(object=[BRUSH_CIRCLE])})
    g["preview"] = ("PreviewImage", {"images": ("canvas", 1)})
    out["resize"] = _finish(_edit(g, "resize", spec="canvas"), "edit", "resize")

    g = _base()
    g["canvas"] = ("DiffEditorCanvas", {"image": ("image", 0), "task": "drag", "dx": 0, "dy": 0, "scale": 1.0,
                                        "editor": canvas_state(points=[[152, 176, 216, 176]],
                                                               region=[{"box": [96, 96, 320, 256]}])})
    g["preview"] = ("PreviewImage", {"images": ("canvas", 1)})
    g["options"] = ("DiffEditorEditOptions", {})  # every option at its official default
    out["drag"] = _finish(_edit(g, "drag", spec="canvas", options=("options", 0)), "edit", "drag")

    g = _reference({**_base(), **_mask("object", "diffeditor_object_mask.png"),
                    **_mask("ref_object", "diffeditor_reference_mask.png")})
    g["spec"] = ("DiffEditorAppearanceSpec", {"mask": ("object", 0), "reference": ("ref_invert", 0),
                                              "ref_mask": ("ref_object", 0)})
    out["appearance_replace"] = _finish(_edit(g, "appearance_replace"), "edit", "appearance")

    g = _reference({**_base(), **_mask("ref_object", "diffeditor_reference_mask.png")}, scale=1.0)
    g["canvas"] = ("DiffEditorCanvas", {"image": ("image", 0), "task": "paste", "dx": 0, "dy": 160, "scale": 1.0,
                                        "editor": "", "mask": ("paste_ref", 1), "reference_image": ("paste_ref", 0),
                                        "reference": ("ref_invert", 0)})
    g["preview"] = ("PreviewImage", {"images": ("canvas", 1)})
    out["paste"] = _finish(_edit(g, "paste", spec="canvas"), "edit", "paste")

    g = {**_base(), **_mask("region", "diffeditor_drag_region.png")}
    g["invert"][1]["record_kv_bank"] = False
    g["drag"] = ("DiffEditorDragOptimize", {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0),
                                            "trajectory": ("invert", 0), "points": "152,176->216,176",
                                            "strength": 0.7, "steps": 80, "lr": 0.01, "r_m": 1, "r_p": 3,
                                            "lam": 0.1, "method": "DragDiffusion", "mask": ("region", 0)})
    g["noise"] = ("DisableNoise", {})
    g["guider"] = ("CFGGuider", {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "cfg": 1.0})
    g["sampler"] = ("DiffEditorSampler", {"eta": 0.0, "eta_outside": 0.0, "eta_start": 0.0, "eta_end": 1.0})
    g["sample"] = ("SamplerCustomAdvanced", {"noise": ("noise", 0), "guider": ("guider", 0),
                                             "sampler": ("sampler", 0), "sigmas": ("drag", 1),
                                             "latent_image": ("drag", 0)})
    out["drag_loss"] = _finish(g, "sample", "drag_loss")

    g = {**_base(), **_mask("object", "diffeditor_object_mask.png")}
    g["clip_vision"] = ("CLIPVisionLoader", {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"})
    g["ip_weights"] = ("DiffEditorLoadImagePrompt", {"weights": "ip_sd15_64.safetensors"})
    g["image_prompt"] = ("DiffEditorImagePrompt", {"model": ("ckpt", 0), "clip_vision": ("clip_vision", 0),
                                                   "image": ("image", 0), "image_prompt": ("ip_weights", 0),
                                                   "scale": 0.1, "start": 0.2, "end": 0.4})
    g["spec"] = ("DiffEditorMoveSpec", {"mask": ("object", 0), "dx": 96, "dy": 32, "scale": 1.0})
    out["image_prompt_move"] = _finish(_edit(g, "image_prompt_move", model=("image_prompt", 0)), "edit",
                                       "image_prompt_move")

    g = {**_base(), **_mask("object", "diffeditor_object_mask.png")}
    g["invert"][1]["record_kv_bank"] = False
    g["spec"] = ("DiffEditorMoveSpec", {"mask": ("object", 0), "dx": 96, "dy": 32, "scale": 1.0})
    g["warp"] = ("DiffEditorWarpInpaint", {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0),
                                           "trajectory": ("invert", 0), "spec": ("spec", 0), "strength": 0.5,
                                           "cfg": 4.0, "seed": 42, "grow": 0})
    out["warp_inpaint"] = _finish(g, "warp", "warp_inpaint")

    # three chained edits: each turn inverts the previous result and edits it with stability tracking
    g = _base()
    turns = [dict(task="move", dx=0, dy=160, scale=1.0, editor=canvas_state(object=[BRUSH_CIRCLE])),
             dict(task="move", dx=64, dy=0, scale=1.0, editor=canvas_state(object=[{"box": [296, 296, 408, 408]}])),
             dict(task="move", dx=0, dy=0, scale=0.7, editor=canvas_state(object=[{"box": [304, 52, 432, 168]}]))]
    image, traj = ("image", 0), ("invert", 0)
    for t, canvas in enumerate(turns, 1):
        g[f"canvas{t}"] = ("DiffEditorCanvas", dict(canvas, image=image))
        g[f"stable{t}"] = ("DiffEditorStableEdit", dict(KNOBS, cfg=-1.0, threshold_db=35.0, max_level=3,
                                                         model=("ckpt", 0), positive=("pos", 0),
                                                         negative=("neg", 0), trajectory=traj,
                                                         spec=(f"canvas{t}", 0)))
        if t < len(turns):
            g[f"decode{t}"] = ("VAEDecode", {"samples": (f"stable{t}", 0), "vae": ("ckpt", 2)})
            g[f"preview{t}"] = ("PreviewImage", {"images": (f"decode{t}", 0)})
            g[f"invert{t + 1}"] = ("DiffEditorInvert", dict(INVERT, model=("ckpt", 0), positive=("pos", 0),
                                                              negative=("neg", 0), latent=(f"stable{t}", 0)))
            image, traj = (f"decode{t}", 0), (f"invert{t + 1}", 0)
    out["multi_turn"] = _finish(g, "stable3", "multi_turn")

    def generate(model_src, prefix, extra):
        g = {"ckpt": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
             "pos": ("CLIPTextEncode", {"text": "a photo of a red car on a street", "clip": ("ckpt", 1)}),
             "neg": ("CLIPTextEncode", {"text": "", "clip": ("ckpt", 1)}), **extra,
             "empty": ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
             "sample": ("KSampler", {"model": model_src, "positive": ("pos", 0), "negative": ("neg", 0),
                                     "latent_image": ("empty", 0), "seed": 42, "steps": 30, "cfg": 7.5,
                                     "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0})}
        return _finish(g, "sample", prefix)

    out["erase_concept"] = generate(("erase", 0), "erase", {
        "erase": ("DiffEditorEraseConcept", {"model": ("ckpt", 0), "clip": ("ckpt", 1), "concepts": "red",
                                             "guide": "", "preserve": "car\nstreet", "erase_scale": 1.0,
                                             "preserve_scale": 1.0, "lam": 0.5})})
    out["safe_guidance"] = generate(("safe", 0), "safe", {
        "safety": ("CLIPTextEncode", {"text": "red", "clip": ("ckpt", 1)}),
        "safe": ("DiffEditorSafeGuidance", {"model": ("ckpt", 0), "safety": ("safety", 0), "preset": "medium",
                                            "warmup_steps": 10, "guidance_scale": 1000.0, "threshold": 0.01,
                                            "momentum_scale": 0.3, "momentum_beta": 0.4})})
    out.update(_dit_graphs())
    return out


def title(workflow: str, key: str, node_type: str) -> str:
    family = workflow.split("_")[0] if workflow in DIT_WORKFLOWS else None
    if family and key in DIT_TITLES[family]:
        return DIT_TITLES[family][key]
    if key == "canvas":
        return CANVAS_TITLES[workflow]
    if key in CANVAS_TITLES:
        return CANVAS_TITLES[key]
    if key == "spec":
        return SPEC_TITLES.get(workflow, node_type)
    if key == "sample" and node_type == "KSampler":
        return "KSampler (ddim, ddim_uniform)"
    return TITLES.get(key, node_type)


# ------------------------------------------------------------------------------------------ snapshot
def _norm_input(name, spec, required):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    entry = {"name": name, "required": required}
    if isinstance(kind, (list, tuple)):
        entry.update(type="COMBO", options=list(kind))
    else:
        entry["type"] = str(kind)
        if entry["type"] == "COMBO":
            entry["options"] = list(opts.get("options", []))
    for k in ("default", "min", "max", "step", "control_after_generate", "image_upload"):
        if k in opts:
            entry[k] = opts[k]
    if entry["type"] == "COMBO" and (opts.get("image_upload") or name in FILE_COMBOS):
        entry["options"] = "files"  # listed from the user's folders: install-specific
    entry["widget"] = entry["type"] in WIDGET_TYPES and not opts.get("forceInput", False)
    return entry


def node_classes() -> dict:
    """Core node classes and this pack's (V3 classes expose the same INPUT_TYPES that /object_info renders
    from their ``define_schema()``)."""
    import comfy_extras.nodes_custom_sampler as custom_sampler
    import comfy_extras.nodes_flux as nodes_flux
    import comfy_extras.nodes_sd3 as nodes_sd3
    import nodes as comfy_nodes

    sys.path.append(str(ROOT))
    import pack_loader

    pack = pack_loader.load("diffeditor")
    classes = dict(comfy_nodes.NODE_CLASS_MAPPINGS)
    classes.update(custom_sampler.NODE_CLASS_MAPPINGS)
    classes.update({"FluxGuidance": nodes_flux.FluxGuidance, "TripleCLIPLoader": nodes_sd3.TripleCLIPLoader})
    classes.update({cls.define_schema().node_id: cls for cls in pack.NODE_LIST})
    return classes


def live_schema(node_types) -> dict:
    """The schemas of ``node_types`` from the running ComfyUI (core nodes + this pack)."""
    classes = node_classes()
    out = {}
    for t in sorted(node_types):
        cls = classes[t]
        it = cls.INPUT_TYPES()
        ins = [_norm_input(n, s, True) for n, s in it.get("required", {}).items()]
        ins += [_norm_input(n, s, False) for n, s in it.get("optional", {}).items()]
        names = getattr(cls, "RETURN_NAMES", None) or [str(r) for r in cls.RETURN_TYPES]
        out[t] = {"inputs": ins, "outputs": [{"name": n, "type": str(r)} for n, r in zip(names, cls.RETURN_TYPES)]}
    return out


def used_types() -> set[str]:
    return {t for g in graphs().values() for t, _ in g.values()} | set(CORE_NODES) | set(MIGRATED_NODES)


# ------------------------------------------------------------------------------------------- writers
def widget_values(inputs: list, values: dict) -> list:
    """UI-format ``widgets_values`` of a node with snapshot ``inputs`` and widget ``values`` (see module doc)."""
    out = []
    for i in inputs:
        if i["widget"]:
            out.append(values[i["name"]])
            if i.get("control_after_generate"):
                out += ["fixed", ""] if i["type"] == "COMBO" else ["fixed"]
    if any(i.get("image_upload") for i in inputs if i["required"]):
        out.append("image")  # the upload button: not in input_order, so the front end adds it last
    return out


def complete(graph: dict, schema: dict) -> dict:
    """``graph`` with every optional widget the graph leaves out set to its default (the front end shows and
    sends it). Required widgets must be given explicitly."""
    out = {}
    for k, (t, vals) in graph.items():
        vals = dict(vals)
        for i in schema[t]["inputs"]:
            if i["widget"] and i["name"] not in vals:
                if (i["required"] and t not in DEFAULTS_ARE_OFFICIAL) or "default" not in i:
                    raise KeyError(f"{k} ({t}): give a value for the widget {i['name']!r}")
                vals[i["name"]] = i["default"]
        out[k] = (t, vals)
    return out


def to_api(graph: dict, schema: dict, workflow: str = "") -> dict:
    graph = complete(graph, schema)
    ids = {k: str(n + 1) for n, k in enumerate(graph)}
    api = {}
    for k, (t, vals) in graph.items():
        inputs = {n: ([ids[v[0]], v[1]] if isinstance(v, tuple) else v) for n, v in vals.items()}
        api[ids[k]] = {"class_type": t, "inputs": inputs, "_meta": {"title": title(workflow, k, t)}}
    return api


def _height(inputs, outputs, widgets, node_type) -> int:
    h = 46 + 24 * max(len(inputs), len(outputs), 1) + 30 * len(widgets)
    if node_type in ("LoadImage", "LoadImageMask", "SaveImage", "PreviewImage"):
        h += 260  # image preview
    if node_type == "DiffEditorCanvas":
        h += 420  # the canvas editor (a DOM widget, not in widgets_values)
    if node_type == "CLIPTextEncode":
        h += 60  # multiline text box
    return h


def to_ui(graph: dict, schema: dict, workflow: str = "") -> dict:
    graph = complete(graph, schema)
    ids = {k: n + 1 for n, k in enumerate(graph)}
    # Every socket input (linked or not, as the front end saves them), in schema order.
    sockets = {k: [i for i in schema[t]["inputs"] if not i["widget"]] for k, (t, _) in graph.items()}
    links, out_links = [], {}
    for k, (t, vals) in graph.items():
        for slot, i in enumerate(sockets[k]):
            v = vals.get(i["name"])
            if isinstance(v, tuple):
                lid = len(links) + 1
                typ = schema[graph[v[0]][0]]["outputs"][v[1]]["type"]
                links.append([lid, ids[v[0]], v[1], ids[k], slot, typ])
                out_links.setdefault((ids[v[0]], v[1]), []).append(lid)

    depth: dict = {}

    def level(k):
        if k not in depth:
            srcs = [v[0] for v in graph[k][1].values() if isinstance(v, tuple)]
            depth[k] = 0 if not srcs else 1 + max(level(s) for s in srcs)
        return depth[k]

    # Left to right by depth in the graph (nodes without inputs: one column before their first consumer);
    # each column stacked top-down; a note on top of the first column.
    consumers: dict = {}
    for k, (_, vals) in graph.items():
        for v in vals.values():
            if isinstance(v, tuple):
                consumers.setdefault(v[0], []).append(k)
    column = {k: level(k) for k in graph}
    for k in graph:
        if column[k] == 0 and k in consumers:
            column[k] = min(column[c] for c in consumers[k]) - 1
    x_of = lambda col: 40 + 460 * col  # noqa: E731
    nodes, tops = [], {}
    if workflow in NOTES:
        nodes.append({"id": len(graph) + 1, "type": "MarkdownNote", "title": "Read me", "pos": [x_of(0), 40],
                      "size": [380, 300], "flags": {}, "order": len(graph), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [NOTES[workflow]], "color": "#432", "bgcolor": "#653"})
        tops[0] = 40 + 300 + 60
    for order, (k, (t, vals)) in enumerate(graph.items()):
        col = column[k]
        ins = []
        for i in sockets[k]:
            lid = next((l[0] for l in links if l[3] == ids[k] and l[4] == len(ins)), None)
            ins.append({"name": i["name"], "type": i["type"], "link": lid})
        outs = [{"name": o["name"], "type": o["type"], "links": out_links.get((ids[k], n), []), "slot_index": n}
                for n, o in enumerate(schema[t]["outputs"])]
        widgets = widget_values(schema[t]["inputs"], vals)
        size = [420 if t == "DiffEditorCanvas" else 380 if t in ("CLIPTextEncode", "DiffEditorEdit",
                                                                 "DiffEditorInvert") else 340,
                _height(ins, outs, widgets, t)]
        y = tops.get(col, 40)
        tops[col] = y + size[1] + 60
        nodes.append({"id": ids[k], "type": t, "title": title(workflow, k, t), "pos": [x_of(col), y],
                      "size": size, "flags": {}, "order": order, "mode": 0, "inputs": ins, "outputs": outs,
                      "properties": {"Node name for S&R": t}, "widgets_values": widgets})
    nodes.sort(key=lambda n: n["id"])
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"diffeditor": "built by workflows/build.py"}, "version": 0.4}


# -------------------------------------------------------------------------------------------- assets
def write_assets(size: int = 512) -> None:
    """A scene, a reference scene and masks (white = 1) rendered with the benchmark's generator."""
    import numpy as np
    from PIL import Image

    sys.path.append(str(ROOT))
    import pack_loader

    pack_loader.load("diffeditor")
    from diffeditor.bench import scenes

    ASSETS.mkdir(parents=True, exist_ok=True)
    s = size / scenes.CANVAS
    rng = np.random.default_rng(1)
    bg = scenes.render_background("sand", rng, size, size)
    src = scenes.Scene(bg, (scenes.Obj("circle", "red", 19 * s, 22 * s, 9 * s),
                            scenes.Obj("square", "blue", 44 * s, 44 * s, 8 * s),
                            scenes.Obj("triangle", "green", 46 * s, 16 * s, 8 * s)), "sand", 1)
    ref = scenes.Scene(scenes.render_background("sky", np.random.default_rng(2), size, size),
                       (scenes.Obj("diamond", "yellow", 24 * s, 14 * s, 8 * s),), "sky", 2)

    def save(arr, name):
        Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(ASSETS / name, optimize=True)

    save(src.image(), "diffeditor_scene.png")
    save(ref.image(), "diffeditor_reference.png")
    save(src.masks()[0].astype(np.float32), "diffeditor_object_mask.png")
    save(ref.masks()[0].astype(np.float32), "diffeditor_reference_mask.png")
    region = np.zeros((size, size), np.float32)
    region[96:256, 96:320] = 1
    save(region, "diffeditor_drag_region.png")


def write_all(schema: dict) -> None:
    (HERE / "api").mkdir(exist_ok=True)
    for name, g in graphs().items():
        f = NAMES[name]
        (HERE / f"{f}.json").write_text(json.dumps(to_ui(g, schema, name), indent=1) + "\n")
        (HERE / "api" / f"{f}.json").write_text(json.dumps(to_api(g, schema, name), indent=1) + "\n")
        print(f"wrote workflows/{f}.json and workflows/api/{f}.json")


def main():
    import os

    if "--migrate" in sys.argv:
        sys.path.insert(0, str(HERE))
        import migrate

        args = sys.argv[sys.argv.index("--migrate") + 1:]
        if not args:
            raise SystemExit("usage: python workflows/build.py --migrate old.json [new.json]")
        print(f"wrote {migrate.migrate_file(args[0], args[1] if len(args) > 1 else None)}")
        return
    if "--thumbnails" in sys.argv:
        sys.path.insert(0, str(HERE))
        import thumbnails

        thumbnails.main(missing_only="--missing" in sys.argv)
        return
    if os.environ.get("COMFYUI_ROOT"):
        sys.path.insert(0, str(ROOT / "tests" / "host"))
        import comfy_bootstrap

        comfy_bootstrap.setup()
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(live_schema(used_types()), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SNAPSHOT.relative_to(ROOT)}")
    write_all(json.loads(SNAPSHOT.read_text()))
    if "--assets" in sys.argv:
        write_assets()


if __name__ == "__main__":
    main()
