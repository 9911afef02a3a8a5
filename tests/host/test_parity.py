"""Adapter parity: the same tiny weights through the ComfyUI adapter and the diffusers adapter.

The ComfyUI UNet's state dict is converted with diffusers' own LDM->diffusers key conversion
(``convert_ldm_unet_checkpoint``) into a ``UNet2DConditionModel`` with the equivalent config.
"""
import pytest
import torch

from diffeditor.adapters.comfy_adapter import make_sampler
from diffeditor.samplers.hooks import KVBank

DIFFUSERS_CFG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    flip_sin_to_cos=True, freq_shift=0, use_linear_projection=False,
)
TOL = 1e-4
LEVELS = (0, 1)


@pytest.fixture(scope="module")
def diffusers_unet(sd15_model):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = UNet2DConditionModel(**DIFFUSERS_CFG).eval()
    sd = {"model.diffusion_model." + k: v.detach().clone()
          for k, v in sd15_model.model.diffusion_model.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(sd, dict(unet.config))
    unet.load_state_dict(converted, strict=True)
    return unet


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(42)
    return torch.randn(1, 4, 16, 16, generator=g) * 3.0


def comfy_side(model, conds, x, sigma_index, cfg):
    import comfy.sample
    import comfy.samplers

    res = {}

    def engine(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None, hooks=None, host=None):
        s = sigmas[sigma_index]
        xx = x.to(x_in)
        res["sigma"] = float(s)
        res["cfg"] = model_k(xx, s * xx.new_ones([1]), **extra_args)
        res["cond"] = host.denoise_cond(xx, s)
        res["features"] = host.features(xx, s, LEVELS)
        bank = KVBank(dtype=torch.float32)
        with hooks.using(step=0, record=bank):
            host.denoise_cond(xx, s)
        res["bank"] = bank
        return x_in

    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 10)
        comfy.sample.sample_custom(model, torch.zeros(1, 4, 16, 16), cfg, make_sampler(engine), sigmas,
                                   conds[0], conds[1], torch.zeros(1, 4, 16, 16), seed=0)
    return res


def diffusers_side(unet, conds, x, sigma, cfg):
    from diffeditor.adapters.diffusers_adapter import DiffusersDenoiser, DiffusersHost

    den = DiffusersDenoiser(unet, conds[0][0][0].clone(), conds[1][0][0].clone(), cfg=cfg)
    host = DiffusersHost(den)
    s = torch.tensor([sigma])
    res = {}
    with torch.no_grad():
        res["cfg"] = den(x, s)
        res["cond"] = host.denoise_cond(x, s)
        res["features"] = host.features(x, s, LEVELS)
        bank = KVBank(dtype=torch.float32)
        with den.hooks.using(step=0, record=bank):
            host.denoise_cond(x, s)
        res["bank"] = bank
    return res


@pytest.mark.parametrize("sigma_index, cfg", [(2, 3.0), (7, 1.0)])
def test_comfy_and_diffusers_adapters_agree(sd15_model, diffusers_unet, conds, probe, sigma_index, cfg):
    c = comfy_side(sd15_model, conds, probe, sigma_index, cfg)
    d = diffusers_side(diffusers_unet, conds, probe, c["sigma"], cfg)
    assert (c["cond"] - d["cond"]).abs().max().item() < TOL
    assert (c["cfg"] - d["cfg"]).abs().max().item() < TOL
    assert (c["cond"] - probe).abs().max().item() > 1e-3  # the probe is non-trivial
    assert set(c["features"]) == set(d["features"]) == set(LEVELS)
    for lvl in LEVELS:
        assert c["features"][lvl].shape == d["features"][lvl].shape
        assert (c["features"][lvl] - d["features"][lvl]).abs().max().item() < TOL
    assert c["bank"].recorded_layers() == d["bank"].recorded_layers() and len(c["bank"]) == 4
    for layer in c["bank"].recorded_layers():
        (ck, cv), (dk, dv) = c["bank"].get(layer, 0), d["bank"].get(layer, 0)
        assert ck.shape == dk.shape
        assert (ck - dk).abs().max().item() < TOL and (cv - dv).abs().max().item() < TOL
