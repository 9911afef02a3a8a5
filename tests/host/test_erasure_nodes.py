"""Concept erasure nodes on tiny real MODELs: UCE weight patches and SLD guidance.

CLIP is a small stand-in with the same ``tokenize`` / ``encode_from_tokens`` interface as ``comfy.sd.CLIP``
(a real CLIP-L is 123 M parameters): word ids from a fixed vocabulary, padded with the end token to 77 like
CLIP-L, encoded by a seeded embedding table and a causal running mean, so each token's output depends on
the words before it, as in a causal text encoder.
"""
import comfy.lora
import comfy.sample
import comfy.samplers
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_erasure import KV_KEY, current_kv_weights
from diffeditor.nodes.erasure import DiffEditorEraseConcept, DiffEditorSafeGuidance

START, END = 1, 2


class FakeClip:
    def __init__(self, dim, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(512, dim, generator=g)
        self.vocab = {}

    def tokenize(self, text):
        ids = [START] + [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()] + [END]
        chunks = [ids[i:i + 77] for i in range(0, max(len(ids), 1), 77)]
        chunks[-1] = chunks[-1] + [END] * (77 - len(chunks[-1]))
        return {"l": [[(t, 1.0) for t in c] for c in chunks]}

    def encode_from_tokens(self, tokens):
        ids = torch.tensor([t for t, _ in tokens["l"][0]])
        e = self.table[ids]
        return (e.cumsum(0) / torch.arange(1, 78)[:, None])[None]


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result[0]


def cond_of(clip, text):
    with torch.inference_mode():
        return [[clip.encode_from_tokens(clip.tokenize(text)), {"pooled_output": torch.zeros(1, tm.CONTEXT_DIM)}]]


def sample(model, pos, neg, cfg=4.0, steps=6):
    lat = tm.random_latent(7)["samples"]
    with torch.inference_mode():
        noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(3))
        return comfy.sample.sample(model, noise, steps, cfg, "ddim", "ddim_uniform", pos, neg, torch.zeros_like(lat),
                                   seed=3)


@pytest.mark.parametrize("which", ["sd15_model", "sdxl_model"])
def test_uce_patches_every_kv_projection_and_leaves_the_model_untouched(request, which):
    model = request.getfixturevalue(which)
    ctx = model.model.diffusion_model.input_blocks[0][0].weight.shape  # any tensor: just check the model runs
    assert ctx
    dim = next(w.shape[1] for k, w in current_kv_weights(model).items())
    clip = FakeClip(dim)
    before = tm.weights_hash(model)
    erased = run(DiffEditorEraseConcept, model=model, clip=clip, concepts="red circle", guide="", preserve="blue",
                 erase_scale=1.0, preserve_scale=1.0, lam=0.5)
    kv = {k for k in model.model_state_dict() if KV_KEY.match(k)}
    assert set(erased.patches) == kv and len(kv) > 0
    assert tm.weights_hash(model) == before and not model.patches


def test_uce_solution_and_outputs(sd15_model):
    dim = next(iter(current_kv_weights(sd15_model).values())).shape[1]
    clip = FakeClip(dim)
    pos_red, pos_blue, neg = cond_of(clip, "a red circle"), cond_of(clip, "a blue square"), cond_of(clip, "")
    ref_red, ref_blue = sample(sd15_model, pos_red, neg), sample(sd15_model, pos_blue, neg)
    erased = run(DiffEditorEraseConcept, model=sd15_model, clip=clip, concepts="red", guide="", preserve="blue",
                 erase_scale=1.0, preserve_scale=1.0, lam=1e-4)
    # the patches compose (through ComfyUI's own weight calculation) to the UCE solution: W' c_e = W c_guide
    # and W' c_p = W c_p up to the lambda regulariser (lambda = 1e-4, two independent concepts: ~1e-4 relative)
    emb = lambda t: clip.encode_from_tokens(clip.tokenize(t))[0, len(t.split())]  # noqa: E731
    c_e, c_g, c_p = emb("red"), clip.encode_from_tokens(clip.tokenize(""))[0, 0], emb("blue")
    for k, w in list(current_kv_weights(sd15_model).items())[:4]:
        w_new = comfy.lora.calculate_weight(erased.patches[k], w.clone(), k)
        assert torch.allclose(w_new @ c_e, w @ c_g, rtol=1e-2, atol=1e-3 * float((w @ c_g).norm()))
        assert torch.allclose(w_new @ c_p, w @ c_p, rtol=1e-2, atol=1e-3 * float((w @ c_p).norm()))
    out_red = sample(erased, pos_red, neg)
    assert not torch.allclose(out_red, ref_red, atol=1e-4)  # the erased prompt renders differently
    again = sample(sd15_model, pos_red, neg)
    assert torch.equal(again, ref_red)  # the original model is bit-identical after the patched clone ran
    assert torch.equal(sample(sd15_model, pos_blue, neg), ref_blue)


def test_sld_scale_zero_is_plain_cfg_and_safety_changes_output(sd15_model):
    dim = next(iter(current_kv_weights(sd15_model).values())).shape[1]
    clip = FakeClip(dim)
    pos, neg, safety = cond_of(clip, "a red circle"), cond_of(clip, ""), cond_of(clip, "red")
    plain = sample(sd15_model, pos, neg)
    off = run(DiffEditorSafeGuidance, model=sd15_model, safety=safety, preset="custom", warmup_steps=0,
              guidance_scale=0.0, threshold=0.01, momentum_scale=0.0, momentum_beta=0.4)
    assert torch.equal(sample(off, pos, neg), plain)
    inactive = run(DiffEditorSafeGuidance, model=sd15_model, safety=safety, preset="custom", warmup_steps=0,
                   guidance_scale=1.0, threshold=-10.0, momentum_scale=0.0, momentum_beta=0.0)
    assert torch.allclose(sample(inactive, pos, neg), plain, rtol=1e-4, atol=1e-3)  # the cfg-function path itself
    on = run(DiffEditorSafeGuidance, model=sd15_model, safety=safety, preset="max", warmup_steps=0,
             guidance_scale=0.0, threshold=0.0, momentum_scale=0.0, momentum_beta=0.0)
    assert not torch.allclose(sample(on, pos, neg), plain, atol=1e-4)
    assert sd15_model.model_options.get("sampler_cfg_function") is None


def test_bad_inputs(sd15_model, conds):
    dim = next(iter(current_kv_weights(sd15_model).values())).shape[1]
    clip = FakeClip(dim)
    kw = dict(model=sd15_model, clip=clip, guide="", preserve="", erase_scale=1.0, preserve_scale=1.0, lam=0.5)
    with pytest.raises(ValueError, match="concepts"):
        run(DiffEditorEraseConcept, concepts=" , \n", **kw)
    with pytest.raises(ValueError, match="75-token"):
        run(DiffEditorEraseConcept, concepts=" ".join(["word"] * 90), **kw)
    with pytest.raises(ValueError, match="preserve"):
        run(DiffEditorEraseConcept, concepts="red", **dict(kw, preserve="red"))
    with pytest.raises(ValueError, match="clip"):
        run(DiffEditorEraseConcept, concepts="red", **dict(kw, clip=None))
    with pytest.raises(ValueError, match="context-dim"):
        run(DiffEditorEraseConcept, concepts="red", **dict(kw, clip=FakeClip(dim + 8)))
    with pytest.raises(ValueError, match="safety"):
        run(DiffEditorSafeGuidance, model=sd15_model, safety=[], preset="weak", warmup_steps=0, guidance_scale=1.0,
            threshold=0.0, momentum_scale=0.0, momentum_beta=0.0)
