"""Configs of the demo model: 64x64 RGB <-> 4x16x16 latents, a ~4.7M-parameter UNet, a 64-wide text encoder.

* VAE: diffusers ``AutoencoderKL`` with three levels (two 2x downsamplings: 64 -> 16, the "LDM-4"
  factor; an 8x factor leaves 256 numbers per image and capped reconstruction near 21 dB in the first
  CPU run), widths (16, 32, 64) (narrow at full resolution: ~0.7M parameters), one resnet per level,
  4 latent channels. ``scaling_factor`` is a placeholder here; ``train.py`` sets it to
  ``1 / std(latents)`` after the autoencoder stage (as Stable Diffusion's 0.18215).
* UNet: diffusers ``UNet2DConditionModel`` on 16x16 latents with three levels (16 -> 8 -> 4), cross
  attention (width 64) in the two outer down blocks and in up blocks 1 and 2, whose transformer blocks
  carry the decoder **self**-attention (``attn1``) the DiffEditor K,V bank hooks into. Up-block outputs:
  level 0 -> 8x8, level 1 -> 16x16, level 2 -> 16x16. ``samplers.hooks.default_feature_levels(3) == (0, 1)``
  (half and full latent resolution, as SD's (1, 2)); levels (1, 2) both exist at full resolution.
* Scheduler: Stable Diffusion's scaled-linear betas, 1000 steps, epsilon prediction.
"""
from __future__ import annotations

import copy

from ...bench.scenes import CANVAS

IMAGE_SIZE = CANVAS  # 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
    scaling_factor=1.0,  # set by training: 1 / std of the latents
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    layers_per_block=1,
    block_out_channels=(64, 96, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,  # diffusers' legacy name: 8 heads per attention
    norm_num_groups=32,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)

TEXT_CONFIG = dict(width=64, layers=2, heads=4, mlp_ratio=4, max_length=16)


def configs() -> dict:
    """Deep copies of every config (``{"vae", "unet", "scheduler", "text"}``)."""
    return copy.deepcopy({"vae": VAE_CONFIG, "unet": UNET_CONFIG, "scheduler": SCHEDULER_CONFIG,
                          "text": TEXT_CONFIG})


def make_vae(config: dict | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or VAE_CONFIG))


def make_unet(config: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(config or UNET_CONFIG))


def make_scheduler(config: dict | None = None):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**(config or SCHEDULER_CONFIG))


def alphas_cumprod(config: dict | None = None):
    """float64 ``[num_train_timesteps]`` cumulative alpha product of the (scaled-linear) schedule."""
    from ...samplers.schedule import scaled_linear_alphas_cumprod

    c = config or SCHEDULER_CONFIG
    if c.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError("the demo model uses the scaled-linear schedule")
    return scaled_linear_alphas_cumprod(c["num_train_timesteps"], c["beta_start"], c["beta_end"])
