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
