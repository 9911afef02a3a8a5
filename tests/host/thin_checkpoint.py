"""A thin checkpoint that ComfyUI detects as SD1.5 (model_channels 320, one level) plus a random TAESD VAE.

About 56 MB in fp16; it loads through CheckpointLoaderSimple (CLIP is None: produce CONDITIONING with the
test-only node in ``tests/host/testing_nodes``).
"""
from __future__ import annotations

import pathlib

import torch

THIN = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "context_dim": 768, "num_heads": 8,
    "num_head_channels": -1, "adm_in_channels": None, "use_linear_in_transformer": False,
    "use_temporal_resblock": False, "use_temporal_attention": False,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
}


@torch.no_grad()
def _init(sd: dict, seed: int, skip=()) -> None:
    g = torch.Generator().manual_seed(seed)
    for k in sorted(sd):
        if k in skip:
            continue
        t = sd[k]
        if k.endswith("bias"):
            val = torch.zeros(t.shape)
        elif t.ndim == 1:
            val = torch.ones(t.shape)
        else:
            val = torch.randn(t.shape, generator=g) / (t[0].numel() ** 0.5)
        if k.endswith("out.2.weight"):
            val = val * 0.1
        sd[k] = val.to(torch.float16)


def thin_config(levels: int = 1) -> dict:
    """THIN with ``levels`` resolution levels (3 levels: the decoder has the feature levels edits need)."""
    return dict(THIN, channel_mult=[1] * levels, num_res_blocks=[1] * levels, transformer_depth=[1] * levels,
                transformer_depth_output=[1] * (2 * levels))


def _random_clip_l(seed: int) -> dict:
    """A randomly initialised CLIP-L text encoder under the SD1.x checkpoint keys (about 123 M params)."""
    import comfy.sd1_clip

    sd = {k: v for k, v in comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16).state_dict().items()
          if k.startswith("transformer.text_model.")}
    sd = {"cond_stage_model." + k: v for k, v in sd.items()}
    emb = {k for k in sd if "embedding" in k}
    _init(sd, seed, skip=emb)
    g = torch.Generator().manual_seed(seed + 7)
    for k in emb:
        sd[k] = (torch.randn(sd[k].shape, generator=g) * 0.02).to(torch.float16)
    return sd


def write_thin_checkpoint(path, seed: int = 0, levels: int = 1, with_clip: bool = False) -> pathlib.Path:
    import comfy.model_detection
    import comfy.ops
    import safetensors.torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD

    path = pathlib.Path(path)
    unet = UNetModel(**thin_config(levels), device="cpu", dtype=torch.float16,
                     operations=comfy.ops.disable_weight_init)
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    _init(sd, seed)
    taesd = TAESD(latent_channels=4)
    vsd = {"first_stage_model." + k: v for k, v in taesd.state_dict().items()}
    keep = {k for k in vsd if k.endswith("vae_scale") or k.endswith("vae_shift")}
    _init(vsd, seed + 1, skip=keep)
    for k in keep:
        vsd[k] = vsd[k].float()
    sd.update(vsd)
    if with_clip:
        sd.update(_random_clip_l(seed + 2))
    cfg = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    if cfg is None or type(cfg).__name__ != "SD15":
        raise RuntimeError(f"the thin checkpoint is not detected as SD15 (got {type(cfg).__name__})")
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path
