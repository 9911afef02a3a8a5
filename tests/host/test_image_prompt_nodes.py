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


# ------------------------------------------------------------------------- composing with other packs
class OtherPackAttn2:
    """Stand-in for another pack's attn2 replace (an IP-Adapter-like patch): the attention plus a term of its
    own, recording every call; other packs may append terms with ``.add`` (the convention such packs use)."""

    def __init__(self, log):
        self.log, self.appended = log, []

    def __call__(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention

        self.log.append(("patch", extra["block"]))
        out = optimized_attention(q, k, v, extra["n_heads"])
        for cb, kw in self.appended:
            out = out + cb(out, q, k, v, extra, **kw)
        return out + 0.05 * q

    def add(self, callback, **kwargs):
        self.appended.append((callback, kwargs))

    def __deepcopy__(self, memo):  # MODEL clones copy it; the record is shared so the test sees every call
        c = OtherPackAttn2(self.log)
        c.appended = list(self.appended)
        return c


def other_pack_apply(model, log):
    """What such a pack does: on a clone, append to the attn2 replace already on a block, else put its own."""
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    attn2 = dict(to.get("patches_replace", {}).get("attn2", {}))

    def term(out, q, k, v, extra, weight=0.0, **kw):
        log.append(("added", extra["block"]))
        return weight * torch.tanh(q)

    for b, n, t in cross_attention_blocks(model):
        key = (b, n) if (b, n) in attn2 or (b, n, t) not in attn2 else (b, n, t)
        if key in attn2:
            attn2[key].add(term, weight=0.07, sigma_start=1e9, sigma_end=0.0)
        else:
            m.set_model_attn2_replace(OtherPackAttn2(log), b, n)
            attn2 = m.model_options["transformer_options"]["patches_replace"]["attn2"]
    return m


def _ip_kw(model, **over):
    ip = fix_widths(model, image_prompt_for(model))
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    return dict(dict(model=model, clip_vision=FakeClipVision(), image=img, image_prompt=ip, scale=0.5, start=0.0,
                     end=1.0), **over)


def test_an_existing_attn2_patch_is_chained_not_overwritten(sd15_model, conds):
    log = []
    other = other_pack_apply(sd15_model, log)
    alone = sample(other, conds)
    calls = len(log)
    assert calls and calls % len(cross_attention_blocks(sd15_model)) == 0  # every block on every model call
    assert all(kind == "patch" for kind, _ in log)
    log.clear()
    # the image prompt on top, outside its window: exactly the other pack's result, its patch still called
    assert torch.equal(sample(run(**_ip_kw(other, scale=0.5, start=0.99, end=1.0)), conds), alone)
    assert len(log) == calls
    log.clear()
    both = sample(run(**_ip_kw(other)), conds)
    ours = sample(run(**_ip_kw(sd15_model)), conds)
    assert log and not torch.allclose(both, alone, atol=1e-4) and not torch.allclose(both, ours, atol=1e-4)


def test_another_pack_can_add_to_the_image_prompt_patch_without_leaking(sd15_model, conds):
    ip_model = run(**_ip_kw(sd15_model))
    ours = sample(ip_model, conds)
    log = []
    both = other_pack_apply(ip_model, log)  # calls .add() on our patches (AttributeError before)
    assert not log  # nothing ran yet: the pack only appended
    out = sample(both, conds)
    assert log and all(kind == "added" for kind, _ in log) and not torch.allclose(out, ours, atol=1e-4)
    log.clear()
    assert torch.equal(sample(ip_model, conds), ours) and not log  # the other branch did not get the term


def test_transformer_options_reach_the_attention_calls(sd15_model, conds):
    counts = {}

    def override(func, q, k, v, *args, **kwargs):
        kind = "self" if k.shape[1] == q.shape[1] else "cross"
        counts[kind] = counts.get(kind, 0) + 1
        return func(q, k, v, *args, **kwargs)

    def counted(scale):
        m = run(**_ip_kw(sd15_model, scale=scale)).clone()
        m.model_options["transformer_options"]["optimized_attention_override"] = override
        counts.clear()
        sample(m, conds)
        return dict(counts)

    off, on = counted(0.0), counted(0.5)
    assert off["cross"] > 0 and on["self"] == off["self"]
    assert on["cross"] == 2 * off["cross"]  # the text and the image attention both went through the override


def test_image_weights_move_once_with_the_model(sd15_model):
    from diffeditor.adapters.comfy_image_prompt import _IPPatch

    m = run(**_ip_kw(sd15_model))
    patches = list(m.model_options["transformer_options"]["patches_replace"]["attn2"].values())
    assert patches and all(isinstance(p, _IPPatch) for p in patches)
    m.model_patches_to(torch.float64)  # what ComfyUI does with the model dtype when it loads the MODEL
    p = patches[0]
    assert p.wk.dtype == torch.float64 and p.tokens[0].dtype == torch.float64
    wk = p.wk
    q = torch.randn(2, 16, p.wk.shape[0], dtype=torch.float64)
    assert p._on(q)[0] is wk  # already there: no copy per call
    q32 = q.float()
    w32 = p._on(q32)[0]
    assert w32.dtype == torch.float32 and p._on(q32)[0] is w32  # moved once, then kept
    if torch.cuda.is_available():
        m.model_patches_to(torch.device("cuda"))
        assert p.wk.is_cuda and p.tokens[1].is_cuda
        m.model_patches_to(torch.device("cpu"))
        assert not p.wk.is_cuda
    # each clone of the MODEL gets its own patch object over the same tensors
    c = m.clone()
    pc = c.model_options["transformer_options"]["patches_replace"]["attn2"]
    first = next(iter(pc.values()))
    assert first is not patches[0] and first.wk is patches[0].wk


def test_wrong_layer_width_names_the_weights_file(sd15_model):
    ip = image_prompt_for(sd15_model)  # 64-wide projections everywhere; the tiny UNet's first attn2 is 32 wide
    ip["name"] = "ip_wrong_width.safetensors"
    img = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"^image_prompt \(ip_wrong_width\.safetensors\): ip_adapter\.1\.to_k_ip/"
                                         r"to_v_ip project image tokens to 64 channels, but the MODEL's "
                                         r"cross-attention there \(input block 1, transformer 0\) is 32 wide"):
        run(model=sd15_model, clip_vision=FakeClipVision(), image=img, image_prompt=ip, scale=0.1, start=0.2,
            end=0.4)


def test_image_encoder_of_the_wrong_width_names_clip_vision_and_the_weights(sd15_model):
    class ViTL(FakeClipVision):
        def encode_image(self, image):
            return types.SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1024))

    ip = fix_widths(sd15_model, image_prompt_for(sd15_model))
    ip["name"] = "ip_sd15_64.safetensors"
    with pytest.raises(ValueError, match=r"^clip_vision: this image encoder gives 1024-wide tokens, but the "
                                         r"image-prompt weights ip_sd15_64\.safetensors expect 40-wide"):
        run(model=sd15_model, clip_vision=ViTL(), image=torch.rand(1, 64, 64, 3), image_prompt=ip, scale=0.1,
            start=0.2, end=0.4)
