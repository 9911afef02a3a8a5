"""Tiny diffusers UNets with seeded weights for tests (no downloads)."""
import torch
import torch.nn.functional as F

TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
)


def make_tiny_unet(seed: int = 0, out_scale: float = 0.2, **over):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**dict(TINY_UNET, **over)).eval()
    with torch.no_grad():  # a random conv_out would be zero-initialised by some versions; make it small but live
        g = torch.Generator().manual_seed(seed + 1)
        w = unet.conv_out.weight
        w.copy_(torch.randn(w.shape, generator=g) * out_scale / (w[0].numel() ** 0.5))
    return unet


class ToyTask:
    """A minimal task: pull the edit region's features toward the source's, keep the rest."""

    reference = None
    ref_mask_latent = None

    def __init__(self, mask):
        self.edit_mask = mask
        self.sde_mask = mask

    def energy(self, feats, ref, ref2):
        lvl = max(feats)
        f, r = feats[lvl], ref[lvl]
        cos = F.cosine_similarity(f, r, dim=1)[:, None]
        m = F.interpolate(self.edit_mask, size=f.shape[-2:], mode="nearest")
        e_edit = 1.0 / (1.0 + 4.0 * (cos * m).sum() / m.sum().clamp_min(1))
        e_con = 1.0 / (1.0 + 4.0 * (cos * (1 - m)).sum() / (1 - m).sum().clamp_min(1))
        return e_edit, e_con

    def init_latent(self, z, zr):
        return z


# ------------------------------------------------------------------------------------ tiny flow DiTs
#: tiny Flux: 4 latent channels (packed 2x2 -> 16), 2 double + 2 single blocks, 2 heads of 16 (RoPE axes sum 16)
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                 axes_dims_rope=(4, 6, 6))
#: tiny SD3: 4 latent channels, patch 2, 3 joint blocks, 2 heads of 16, for 16x16 latents
TINY_SD3 = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
                pos_embed_max_size=16)


def _tame_output(layer, seed: int, out_scale: float):
    """Small, non-zero, seeded weights for a final projection (predictions tame but live)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * out_scale / layer.weight.shape[1] ** 0.5)
        if layer.bias is not None:
            layer.bias.zero_()


def make_tiny_flux(seed: int = 0, out_scale: float = 0.3, **over):
    """A seeded random ``FluxTransformer2DModel`` (guidance-distilled unless ``guidance_embeds=False``)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**dict(TINY_FLUX, **over)).eval()
    _tame_output(model.proj_out, seed + 1, out_scale)
    return model


def make_tiny_sd3(seed: int = 0, out_scale: float = 0.3, **over):
    """A seeded random ``SD3Transformer2DModel``."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**dict(TINY_SD3, **over)).eval()
    _tame_output(model.proj_out, seed + 1, out_scale)
    return model


def dit_text(family: str, seed: int, tokens: int = 6, dim: int = 32, pooled: int = 16):
    """Seeded (hidden states [1, T, D], pooled [1, P]) standing in for a text encoder's output."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, dim, generator=g), torch.randn(1, pooled, generator=g)
