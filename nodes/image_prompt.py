"""DiffEditor's image prompt: a loader for the released weights and the MODEL patch."""
from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..adapters.comfy_adapter import check_supported
from ..adapters.comfy_image_prompt import encode_image_tokens, image_prompt_model
from ..guidance.image_prompt import ImagePromptAdapter, Resampler
from ..guidance.ip_weights import check_context_dim, load_ip_weights
from ..guidance.windows import StepWindow
from .common import CATEGORY, check_finite, check_window, refuse_dit

IMAGE_PROMPT_ON_DIT = ("DiffEditor's image prompt is a cross-attention adapter (image K/V added beside the text "
                       "K/V of every UNet cross-attention, weights trained for SD1.5); Flux and SD3 have no "
                       "cross-attention to add it to (their text and image tokens share one joint attention), "
                       "and no image-prompt weights exist for them. Edit without it (DiffEditor Edit), or use an "
                       "SD1.5 MODEL")

FOLDER = "diffeditor"
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
ImagePromptType = io.Custom("DIFFEDITOR_IMAGE_PROMPT")


class DiffEditorLoadImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorLoadImagePrompt", display_name="DiffEditor Load Image Prompt",
            category=f"{CATEGORY}/image prompt",
            description="Loads DiffEditor's image-prompt weights (ip_sd15_64.bin layout; .safetensors preferred, "
                        ".bin only as plain tensors) from models/diffeditor.",
            inputs=[io.Combo.Input("weights", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in models/diffeditor: the 64-query resampler + K/V projections.")],
            outputs=[ImagePromptType.Output("image_prompt", display_name="image_prompt",
                                            tooltip="The loaded resampler and per-layer image K/V projections.")])

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, weights) if weights else None
        if path is None:
            raise ValueError(f"weights: {weights!r} is not in models/{FOLDER}")
        proj, ip = load_ip_weights(path)
        with torch.inference_mode(False):
            return io.NodeOutput({"resampler": Resampler.from_state_dict(proj).eval(),
                                  "adapter": ImagePromptAdapter(ip), "name": weights})


class DiffEditorImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorImagePrompt", display_name="DiffEditor Image Prompt",
            category=f"{CATEGORY}/image prompt",
            description="Adds DiffEditor's image prompt (decoupled cross-attention on the image's resampled CLIP "
                        "tokens) to a copy of the MODEL, active only inside a window of the sampling steps. "
                        "Composes with the edit sampler and with other cross-attention patches (IP-Adapter and "
                        "the like), before or after this node.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to patch (SD1.x for the released weights). Flux/SD3 "
                                                "DiTs are refused: the image prompt is a UNet cross-attention "
                                                "adapter."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-H/14 image encoder (the IP-Adapter one)."),
                io.Image.Input("image", tooltip="The image prompt (usually the image being edited)."),
                ImagePromptType.Input("image_prompt", tooltip="From DiffEditor Load Image Prompt."),
                io.Float.Input("scale", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight of the image attention (official 0.1; 0.05 for faces)."),
                io.Float.Input("start", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="First step of the window, as a fraction (official 0.2 = step 10 of 50)."),
                io.Float.Input("end", default=0.4, min=0.0, max=1.0, step=0.01,
                               tooltip="End (exclusive) of the window (official 0.4 = step 20 of 50)."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="A copy of the MODEL with the image prompt.")])

    @classmethod
    def execute(cls, model, clip_vision, image, image_prompt, scale=0.1, start=0.2, end=0.4) -> io.NodeOutput:
        refuse_dit(model, "model", IMAGE_PROMPT_ON_DIT)
        if not isinstance(image_prompt, dict) or "resampler" not in image_prompt:
            raise ValueError("image_prompt: connect DiffEditor Load Image Prompt")
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError("image: expected an IMAGE [batch, height, width, 3]")
        check_supported(model, "model")
        scale = check_finite(scale, "scale", 0.0, 1.0)
        check_window(start, end, "start", "end")
        ctx = model.model.model_config.unet_config.get("context_dim")
        ip_sd = {f"{i}.to_k_ip.weight": kv[0] for i, kv in image_prompt["adapter"].layers.items()}
        check_context_dim(ip_sd, ctx, f"image_prompt ({image_prompt['name']})")
        r = image_prompt["resampler"]
        cond, zero = encode_image_tokens(clip_vision, image[:1])
        want = r.proj_in.in_features
        if cond.ndim != 3 or cond.shape[-1] != want:
            got = cond.shape[-1] if cond.ndim == 3 else tuple(cond.shape)
            raise ValueError(f"clip_vision: this image encoder gives {got}-wide tokens, but the image-prompt weights "
                             f"{image_prompt['name']} expect {want}-wide ones (CLIP ViT-H/14 gives 1280, ViT-L/14 "
                             "1024); load the image encoder the weights were trained with (ViT-H/14 for ip_sd15_64)")
        with torch.inference_mode(False), torch.no_grad():
            dtype = next(r.parameters()).dtype
            ct, ut = r(cond.clone().to(dtype)), r(zero.clone().to(dtype))
        return io.NodeOutput(image_prompt_model(model, image_prompt["adapter"], ct, ut, scale, StepWindow(start, end),
                                                weights_name=image_prompt["name"]))


IMAGE_PROMPT_NODES = [DiffEditorLoadImagePrompt, DiffEditorImagePrompt]
