"""Demo model: configs, tokenizer, forward shapes, save/load round trip, a 5-step training smoke."""
import json

import pytest
import torch

from diffeditor.bench import scenes as S
from diffeditor.models.demo import config as C
from diffeditor.models.demo.load import build_random, load_demo, save_demo
from diffeditor.models.demo.text import DemoTokenizer
from diffeditor.samplers.hooks import default_feature_levels


@pytest.fixture(scope="module")
def model():
    return build_random(0)


def _n(m):
    return sum(p.numel() for p in m.parameters())


def test_build_random_shapes_and_sizes(model):
    vae, unet, te, tok, ac = model
    assert ac.dtype == torch.float64 and ac.shape == (1000,) and ac[0] > ac[-1] > 0
    assert torch.allclose(ac, C.alphas_cumprod())
    assert _n(unet) <= 5_000_000 and _n(vae) <= 1_000_000 and _n(te) <= 200_000
    assert unet.config.cross_attention_dim == te.config["width"] == 64
    assert len(unet.up_blocks) == 3 and default_feature_levels(len(unet.up_blocks)) == (0, 1)
    # decoder self-attention exists (the K,V bank's layers) in up blocks 1 and 2
    names = [k for k in unet.attn_processors if k.startswith("up_blocks") and "attn1" in k]
    assert {k.split(".")[1] for k in names} == {"1", "2"}
    # same seed -> same weights, different seed -> different
    u2 = build_random(0)[1]
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), u2.state_dict().values()))
    assert not torch.equal(build_random(1)[1].conv_in.weight, unet.conv_in.weight)


def test_tokenizer_round_trip():
    tok = DemoTokenizer()
    assert tok.vocab[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and len(set(tok.vocab)) == len(tok.vocab)
    assert set(S.CAPTION_WORDS) <= set(tok.vocab)
    assert DemoTokenizer().vocab == tok.vocab  # deterministic
    for seed in range(60):
        cap = S.make_scene(seed).caption()
        ids = tok(cap)
        assert ids.shape == (1, 16) and ids.dtype == torch.long
        assert ids[0, 0] == tok.start_id
        assert tok.decode(ids[0]) == cap.replace(",", "")  # 3 objects use all 14 word slots
        n = len(tok.words(cap))
        assert (ids[0, n + 1:] == tok.end_id).all()  # padded with the end token (like CLIP)
    empty = tok("")
    assert empty[0, 0] == tok.start_id and (empty[0, 1:] == tok.end_id).all()
    assert tok("a purple blob")[0, 2] == tok.unk_id
    long = tok(" ".join(["red"] * 40))
    assert long.shape == (1, 16) and long[0, -1] == tok.end_id


def test_forward_shapes(model):
    vae, unet, te, tok, ac = model
    caps = [S.make_scene(s).caption() for s in range(2)]
    with torch.no_grad():
        h = te(tok(caps))
        assert h.shape == (2, 16, 64)
        # causal: a token's state does not depend on later tokens
        ids = tok(caps)
        ids2 = ids.clone()
        ids2[:, 5:] = tok.index["white"]
        assert torch.allclose(te(ids)[:, :5], te(ids2)[:, :5], atol=1e-6)
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        z = vae.encode(x).latent_dist.mean
        assert z.shape == (2, 4, 16, 16)
        assert vae.decode(z).sample.shape == (2, 3, 64, 64)
        eps = unet(z, torch.tensor([10, 900]), h).sample
        assert eps.shape == (2, 4, 16, 16) and torch.isfinite(eps).all()


def test_save_load_round_trip(model, tmp_path):
    vae, unet, te, tok, ac = model
    save_demo(tmp_path, vae, unet, te, tok)
    vae2, unet2, te2, tok2, ac2 = load_demo(tmp_path)
    assert tok2.vocab == tok.vocab and torch.equal(ac2, ac)
    z = torch.randn(1, 4, 16, 16)
    ids = tok(["a red circle on a sand background"])
    with torch.no_grad():
        assert torch.equal(te2(ids), te(ids))
        assert torch.equal(unet2(z, torch.tensor([500]), te(ids)).sample, unet(z, torch.tensor([500]), te(ids)).sample)
        assert torch.equal(vae2.decode(z).sample, vae.decode(z).sample)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["unet"]["sample_size"] == 16 and cfg["scheduler"]["prediction_type"] == "epsilon"


def test_training_smoke(tmp_path):
    from diffeditor.models.demo import train

    threads = torch.get_num_threads()
    try:
        card = train.main(["--seed", "0", "--steps", "5", "--batch", "2", "--threads", "1", "--log-every", "2",
                           "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    for stage in ("vae", "unet"):
        assert card[stage]["steps"] == 5 and card[stage]["s_per_step"] > 0
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in card[stage]["curve"])
    assert card["scaling_factor"] > 0
    assert json.loads((tmp_path / "model_card.json").read_text())["params"]["unet"] == card["params"]["unet"]
    vae, unet, te, tok, ac = load_demo(tmp_path)
    assert vae.config.scaling_factor == pytest.approx(card["scaling_factor"])
