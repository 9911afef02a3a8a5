"""Tiny real ComfyUI models for the host tests (seeded, built in-process, no weights on disk).

Everything is built under ``torch.inference_mode()`` as the server's executor does, so the tests meet the
inference-tensor problems real users meet.
"""
from __future__ import annotations

import hashlib

import torch

# SD1.x-style: 3 levels -> 3 up blocks; decoder attention in up blocks 1 and 2 (like SD1.5's 1..3), none in
# up block 0 (lowest resolution, like SD1.5's up_blocks[0]); default DiffEditor levels (0, 1) are capturable.
TINY_SD15 = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2], "transformer_depth": [1, 1, 0],
    "transformer_depth_output": [1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 32,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}

# SDXL-style: no attention at full resolution, depth 2 at the lowest level, linear projections, ADM vector.
TINY_SDXL = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2],
    "transformer_depth": [0, 1, 2], "transformer_depth_output": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 32,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}

CONTEXT_DIM = 32
TOKENS = 8


@torch.no_grad()
def init_weights_(module: torch.nn.Module, seed: int, out_scale: float = 0.05) -> None:
    """Explicit seeded init (ComfyUI's ``disable_weight_init`` ops leave ``torch.empty`` garbage).

    Biases small random, 1-D weights (norms) near 1, others ``randn / sqrt(fan_in)``; the final conv scaled
    down so random eps predictions stay tame. Non-trivial biases/norms make the adapter parity test strict.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            val = torch.randn(p.shape, generator=g) * 0.02
        elif p.ndim == 1:
            val = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        else:
            val = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
        p.copy_(val.to(p.dtype))
    out = getattr(module, "out", None)
    if out is not None:
        out[2].weight.mul_(out_scale)


def _patcher(base):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_sd15(seed: int = 0):
    import comfy.supported_models

    with torch.inference_mode():
        cfg = comfy.supported_models.SD15(dict(TINY_SD15))
        cfg.set_inference_dtype(torch.float32, None)
        base = cfg.get_model({})
        init_weights_(base.diffusion_model, seed)
        return _patcher(base)


def build_sdxl(seed: int = 1):
    import comfy.supported_models

    class TinySDXL(comfy.supported_models.SDXL):
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    with torch.inference_mode():
        cfg = TinySDXL(dict(TINY_SDXL))
        cfg.set_inference_dtype(torch.float32, None)
        base = cfg.get_model({})
        init_weights_(base.diffusion_model, seed)
        return _patcher(base)


def build_flow(seed: int = 2):
    """The tiny SD15 UNet with a flow (SD3-style) parameterisation: must be rejected by the nodes."""
    import comfy.model_base
    import comfy.supported_models

    with torch.inference_mode():
        cfg = comfy.supported_models.SD15(dict(TINY_SD15))
        cfg.set_inference_dtype(torch.float32, None)
        cfg.sampling_settings = {"shift": 3.0, "multiplier": 1000}
        base = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.FLOW)
        init_weights_(base.diffusion_model, seed)
        return _patcher(base)


# Flux.1-style (dev: guidance embedding): 2 double + 2 single blocks, hidden 32, 2 heads of 16 (RoPE axes 4+6+6),
# mlp ratio 4 (as diffusers' Flux, for the parity test).
TINY_FLUX = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
    "hidden_size": 32, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}

# SD3.5-style MMDiT: hidden 64 * depth with depth heads of 64; 3 joint blocks (the last context block pre-only),
# RMS q/k norms, an MMDiT-X image-only attn2 in block 0, a 16x16 positional-embedding table (latents <= 32x32).
TINY_SD3 = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 3, "input_size": None,
    "adm_in_channels": 32, "pos_embed_scaling_factor": None, "pos_embed_max_size": 16, "num_patches": 256,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 192}},
    "qk_norm": "rms", "x_block_self_attn_layers": [0],
}


@torch.no_grad()
def init_dit_weights_(module: torch.nn.Module, seed: int, out_scale: float = 0.5) -> None:
    """:func:`init_weights_` for a DiT: parameters *and* buffers (SD3's positional table is an uninitialised
    buffer), the final projection scaled down so the random velocity stays tame."""
    init_weights_(module, seed, out_scale)
    g = torch.Generator().manual_seed(seed + 1000)
    for name, b in module.named_buffers():
        if b.is_floating_point():
            b.copy_((torch.randn(b.shape, generator=g) * 0.1).to(b.dtype))
    module.final_layer.linear.weight.mul_(out_scale)


def build_flux(seed: int = 30, guidance_embed: bool = True, dtype=torch.float32):
    """A tiny Flux.1 dev (``guidance_embed``) or schnell (``guidance_embed=False``, FLOW sampling) MODEL."""
    import comfy.supported_models

    with torch.inference_mode():
        cls = comfy.supported_models.Flux if guidance_embed else comfy.supported_models.FluxSchnell
        cfg = cls(dict(TINY_FLUX, guidance_embed=guidance_embed))
        cfg.set_inference_dtype(dtype, None)
        base = cfg.get_model({})
        init_dit_weights_(base.diffusion_model, seed)
        return _patcher(base)


def build_sd3(seed: int = 31, dtype=torch.float32):
    import comfy.supported_models

    with torch.inference_mode():
        cfg = comfy.supported_models.SD3(dict(TINY_SD3))
        cfg.set_inference_dtype(dtype, None)
        base = cfg.get_model({})
        init_dit_weights_(base.diffusion_model, seed)
        return _patcher(base)


def build_qwen_image():
    """A tiny Qwen-Image MODEL (weights left uninitialised: only for the refusal checks, never run)."""
    import comfy.supported_models

    with torch.inference_mode():
        cfg = comfy.supported_models.QwenImage({
            "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
            "axes_dims_rope": (4, 6, 6)})
        cfg.set_inference_dtype(torch.float32, None)
        return _patcher(cfg.get_model({}))


def dit_conditioning(seed: int, family: str, scale: float = 1.0, tokens: int = TOKENS, guidance: float = 3.5):
    """CONDITIONING for the tiny DiTs: context ``[1, T, 32]`` + pooled ``[1, 32]`` (+ ``guidance`` for Flux)."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        c = torch.randn(1, tokens, CONTEXT_DIM, generator=g) * scale
        opts = {"pooled_output": torch.randn(1, 32, generator=g)}
        if family == "flux":
            opts["guidance"] = guidance
        return [[c, opts]]


def dit_latent(seed: int = 33, h: int = 16, w: int = 16):
    """A LATENT for the tiny DiTs (16 channels, raw latent space)."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return {"samples": torch.randn(1, 16, h, w, generator=g)}


def random_conditioning(seed: int, pooled_dim: int = CONTEXT_DIM, scale: float = 1.0, **opts):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        c = torch.randn(1, TOKENS, CONTEXT_DIM, generator=g) * scale
        pooled = torch.randn(1, pooled_dim, generator=g)
        return [[c, dict({"pooled_output": pooled}, **opts)]]


def random_latent(seed: int = 3, batch: int = 1, h: int = 16, w: int = 16):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return {"samples": torch.randn(batch, 4, h, w, generator=g) * 2.0}


def weights_hash(model_patcher) -> str:
    """Hash of every weight/buffer of the MODEL (values only) plus its patch/option keys."""
    h = hashlib.sha1()
    for k, v in sorted(model_patcher.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(repr(sorted(model_patcher.patches)).encode())
    h.update(repr(sorted(model_patcher.object_patches)).encode())
    h.update(repr(model_patcher.model_options).encode())
    return h.hexdigest()


def model_state(model_patcher) -> dict:
    """Everything a node could mutate on a shared MODEL, to compare before/after.

    Per parameter and buffer of the ``BaseModel`` (diffusion model *and* model sampling): the tensor object's
    identity, its storage pointer, whether it is an inference tensor, dtype, device and a hash of its values;
    the module tree's identities; the patcher's weight patches, object patches, weight wrappers and options.
    Replacing a parameter by a clone with equal values changes this state (a values-only hash would not see it).
    """
    base = model_patcher.model
    out = {}
    for kind, items in (("param", base.named_parameters(remove_duplicate=False)),
                        ("buffer", base.named_buffers(remove_duplicate=False))):
        for name, t in items:
            h = hashlib.sha1(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
            out[f"{kind}:{name}"] = (id(t), t.data_ptr(), t.is_inference(), str(t.dtype), str(t.device), h)
    out["modules"] = tuple((n, id(m)) for n, m in base.named_modules(remove_duplicate=False))
    out["patches"] = repr(sorted((k, len(v)) for k, v in model_patcher.patches.items()))
    out["object_patches"] = repr(sorted(model_patcher.object_patches))
    out["weight_wrappers"] = repr(sorted(getattr(model_patcher, "weight_wrapper_patches", {})))
    out["model_options"] = repr(model_patcher.model_options)
    out["patches_uuid"] = str(model_patcher.patches_uuid)
    return out


def state_diff(a: dict, b: dict, objects: bool = True) -> list:
    """Keys whose state differs (for assertion messages). ``objects=False`` ignores which Python object wraps
    a parameter (storage, inference flag, dtype, device and values still count): ComfyUI itself re-wraps the
    restored weights when it unloads a clone carrying weight patches (LoRA, UCE)."""
    def norm(k, v):
        return v[1:] if not objects and k.startswith("param:") and v is not None else v
    return sorted(k for k in set(a) | set(b) if norm(k, a.get(k)) != norm(k, b.get(k)))
