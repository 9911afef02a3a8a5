"""DiffEditor image prompt on a tiny real MODEL: text-only outside the window / at scale 0, active inside.

CLIP_VISION is a stand-in with ComfyUI's ``encode_image`` interface returning seeded penultimate tokens (a
real ViT-H is 630 M parameters); the weights are random in the official layout, written by the test.
"""
import types

import comfy.sample
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_image_prompt import cross_attention_blocks
from diffeditor.guidance.image_prompt import ImagePromptAdapter, Resampler
from diffeditor.nodes.image_prompt import DiffEditorImagePrompt

EMB = 40


class FakeClipVision:
    def encode_image(self, image):
        g = torch.Generator().manual_seed(int(image.mean() * 1000))
        return types.SimpleNamespace(penultimate_hidden_states=torch.randn(1, 17, EMB, generator=g))


def image_prompt_for(model, seed=0):
    n = len(cross_attention_blocks(model))
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        r = Resampler(8, 32, 2, heads=4, dim_head=8, embedding_dim=EMB, output_dim=tm.CONTEXT_DIM).eval()
        ip = {}
        for i in range(1, 2 * n, 2):  # official layout: odd processor indices hold the cross-attention
            ip[f"{i}.to_k_ip.weight"] = torch.randn(64, tm.CONTEXT_DIM) * 0.3
            ip[f"{i}.to_v_ip.weight"] = torch.randn(64, tm.CONTEXT_DIM) * 0.3
    return {"resampler": r, "adapter": ImagePromptAdapter(ip), "name": "random"}


def fix_widths(model, ip):
    """Give each layer's projections the width of its attn2 (the test weights are generic)."""
    dm = model.model.diffusion_model
    widths = []
    for b, n, t in cross_attention_blocks(model):
        blk = {"input": dm.input_blocks, "output": dm.output_blocks, "middle": [dm.middle_block]}[b][n]
        st = next(l for l in blk if hasattr(l, "transformer_blocks"))
        widths.append(st.transformer_blocks[t].attn2.to_k.weight.shape[0])
    for (i, kv), w in zip(sorted(ip["adapter"].layers.items()), widths):
        kv[0], kv[1] = kv[0][:w].clone(), kv[1][:w].clone()
    return ip


def sample(model, conds, steps=6):
    lat = tm.random_latent(7)["samples"]
    with torch.inference_mode():
        noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(3))
        return comfy.sample.sample(model, noise, steps, 4.0, "ddim", "ddim_uniform", conds[0], conds[1],
                                   torch.zeros_like(lat), seed=3)


def run(**kw):
    with torch.inference_mode():
        return DiffEditorImagePrompt.execute(**kw).result[0]


def test_image_prompt_gating(sd15_model, conds):
    ip = fix_widths(sd15_model, image_prompt_for(sd15_model))
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    plain = sample(sd15_model, conds)
    kw = dict(model=sd15_model, clip_vision=FakeClipVision(), image=img, image_prompt=ip)
    assert torch.equal(sample(run(scale=0.0, start=0.0, end=1.0, **kw), conds), plain)
    assert torch.equal(sample(run(scale=0.5, start=0.99, end=1.0, **kw), conds), plain)  # no step in the window
    assert not torch.allclose(sample(run(scale=0.5, start=0.0, end=1.0, **kw), conds), plain, atol=1e-4)
    assert not sd15_model.model_options["transformer_options"].get("patches_replace")


def test_image_prompt_bad_inputs(sd15_model):
    ip = image_prompt_for(sd15_model)
    bad = {"resampler": ip["resampler"], "name": "x",
           "adapter": ImagePromptAdapter({k: v[:, :8] for k, v in
                                          {f"{i}.to_{w}_ip.weight": t for i, kv in ip["adapter"].layers.items()
                                           for w, t in zip("kv", kv)}.items()})}
    img = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="another base model"):
        run(model=sd15_model, clip_vision=FakeClipVision(), image=img, image_prompt=bad, scale=0.1, start=0.2, end=0.4)
    with pytest.raises(ValueError, match="start"):
        run(model=sd15_model, clip_vision=FakeClipVision(), image=img, image_prompt=ip, scale=0.1, start=0.5, end=0.4)


def test_load_image_prompt_from_the_models_folder(tmp_path, monkeypatch):
    import folder_paths
    from safetensors.torch import save_file

    from diffeditor.nodes.image_prompt import FOLDER, DiffEditorLoadImagePrompt

    torch.manual_seed(0)
    r = Resampler(8, 32, 2, heads=4, dim_head=8, embedding_dim=EMB, output_dim=tm.CONTEXT_DIM)
    flat = {f"image_proj.{k}": v.contiguous() for k, v in r.state_dict().items()}
    flat.update({"ip_adapter.1.to_k_ip.weight": torch.randn(16, tm.CONTEXT_DIM),
                 "ip_adapter.1.to_v_ip.weight": torch.randn(16, tm.CONTEXT_DIM)})
    save_file(flat, str(tmp_path / "ip_test.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, FOLDER, ([str(tmp_path)], {".safetensors", ".bin"}))
    folder_paths.filename_list_cache.pop(FOLDER, None)
    with torch.inference_mode():
        out = DiffEditorLoadImagePrompt.execute(weights="ip_test.safetensors").result[0]
    assert out["resampler"].latents.shape == (1, 8, 32) and sorted(out["adapter"].layers) == [1]
    with pytest.raises(ValueError, match="weights"):
        with torch.inference_mode():
            DiffEditorLoadImagePrompt.execute(weights="nope.safetensors")
