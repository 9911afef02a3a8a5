"""DiffEditor image prompt: official weight layout in both formats, token shapes, gating, routing, safe loading."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from diffeditor.guidance.image_prompt import (DEFAULT_SCALE, DEFAULT_WINDOW, ImagePromptAdapter, Resampler, attention,
                                              image_tokens, ip_attention, ip_kv, resampler_dims, split_context,
                                              window_active)
from diffeditor.guidance.ip_weights import (check_context_dim, convert_to_safetensors, load_ip_weights,
                                            validate_ip_weights)

EMB, OUT, WIDTH, DEPTH = 48, 24, 32, 2
IP_LAYERS = (1, 3, 5)  # official: odd processor indices (self-attention processors hold no weights)


def official_keys(depth):
    """The resampler keys listed in reference §1.12, written out independently of the implementation."""
    keys = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm_out.weight",
            "norm_out.bias"}
    for i in range(depth):
        keys |= {f"layers.{i}.0.{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")}
        keys |= {f"layers.{i}.0.{n}.weight" for n in ("to_q", "to_kv", "to_out")}
        keys |= {f"layers.{i}.1.0.weight", f"layers.{i}.1.0.bias", f"layers.{i}.1.1.weight", f"layers.{i}.1.3.weight"}
    return keys


def official_dict(queries=8, layers=IP_LAYERS, width=16):
    """A randomly initialised state dict in the official nested layout (tiny dims)."""
    torch.manual_seed(queries)
    r = Resampler(queries, WIDTH, DEPTH, heads=4, dim_head=8, embedding_dim=EMB, output_dim=OUT)
    sd = {k: v.detach().clone() for k, v in r.state_dict().items()}
    for k in sd:  # LayerNorms start at (1, 0): randomise them so a swapped key would show
        sd[k] = sd[k] + 0.1 * torch.randn_like(sd[k])
    ip = {}
    for i in layers:
        ip[f"{i}.to_k_ip.weight"] = torch.randn(width, OUT)
        ip[f"{i}.to_v_ip.weight"] = torch.randn(width, OUT)
    return {"image_proj": sd, "ip_adapter": ip}


def flat(d):
    out = {f"image_proj.{k}": v.contiguous() for k, v in d["image_proj"].items()}
    out.update({f"ip_adapter.{k}": v.contiguous() for k, v in d["ip_adapter"].items()})
    return out


def write_both(tmp_path, d, name="w"):
    torch.save(d, tmp_path / f"{name}.bin")
    save_file(flat(d), str(tmp_path / f"{name}.safetensors"))
    return tmp_path / f"{name}.bin", tmp_path / f"{name}.safetensors"


@pytest.mark.parametrize("queries", [8, 16])
def test_both_formats_load_identically_and_queries_come_from_the_weights(tmp_path, queries):
    d = official_dict(queries)
    assert set(d["image_proj"]) == official_keys(DEPTH)  # our module uses the official key names
    bin_path, st_path = write_both(tmp_path, d)
    (pa, ia), (pb, ib) = load_ip_weights(bin_path), load_ip_weights(st_path)
    assert pa.keys() == pb.keys() == d["image_proj"].keys() and ia.keys() == ib.keys() == d["ip_adapter"].keys()
    assert all(torch.equal(pa[k], pb[k]) and torch.equal(pa[k], d["image_proj"][k]) for k in pa)
    assert all(torch.equal(ia[k], ib[k]) for k in ia)

    info = validate_ip_weights(pb, ib)
    assert info["queries"] == queries and info["depth"] == DEPTH and info["dim"] == WIDTH
    assert (info["embedding_dim"], info["output_dim"], info["ff_mult"]) == (EMB, OUT, 4)
    assert info["ip_layers"] == list(IP_LAYERS) and info["context_dim"] == OUT

    ra, rb = Resampler.from_state_dict(pa, heads=4).eval(), Resampler.from_state_dict(pb, heads=4).eval()
    assert ra.queries == queries
    assert set(rb.state_dict()) == official_keys(DEPTH)
    clip = torch.randn(2, 257, EMB)
    ta, tb = image_tokens(ra, clip), image_tokens(rb, clip)
    assert ta.shape == (2, queries, OUT) and torch.equal(ta, tb) and not ta.requires_grad


def test_resampler_forward_matches_the_perceiver_equations():
    """One layer written out by hand from §1.12: K,V over [image tokens ; queries], both layer-normed."""
    torch.manual_seed(0)
    r = Resampler(4, 16, 1, heads=2, dim_head=8, embedding_dim=12, output_dim=10).eval()
    x = torch.randn(1, 5, 12)
    a, ff = r.layers[0]
    h = r.proj_in(x)
    lat = r.latents
    hn, ln = a.norm1(h), a.norm2(lat)
    q = ln @ a.to_q.weight.t()
    kv = torch.cat([hn, ln], 1) @ a.to_kv.weight.t()
    k, v = kv[..., :16], kv[..., 16:]
    heads = []
    for i in range(2):
        s = slice(8 * i, 8 * i + 8)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 8 ** 0.5, -1)
        heads.append(w @ v[..., s])
    lat = lat + torch.cat(heads, -1) @ a.to_out.weight.t()
    lat = lat + ff[3](ff[2](ff[1](ff[0](lat))))
    ref = r.norm_out(r.proj_out(lat))
    with torch.no_grad():
        assert torch.allclose(r(x), ref, atol=1e-5)


def test_heads_are_a_parameter_with_the_official_default():
    sd = Resampler(4, 24, 1, heads=12, dim_head=2, embedding_dim=8, output_dim=8).state_dict()
    assert resampler_dims(sd)["heads"] == 12 and resampler_dims(sd)["dim_head"] == 2  # default 12, width / 12
    assert Resampler.from_state_dict(sd).layers[0][0].heads == 12
    assert Resampler.from_state_dict(sd, heads=3).layers[0][0].heads == 3
    with pytest.raises(ValueError, match="heads"):
        Resampler.from_state_dict(sd, heads=5)  # 24 is not divisible by 5
    odd = Resampler(4, 32, 1, heads=4, dim_head=8, embedding_dim=8, output_dim=8).state_dict()
    assert Resampler.from_state_dict(odd).layers[0][0].heads == 1  # 32 % 12 != 0: a documented fallback


def test_ip_attention_is_exactly_text_only_when_off():
    g = torch.Generator().manual_seed(0)
    q, kt, vt = (torch.randn(2, 10, 16, generator=g) for _ in range(3))
    ki, vi = torch.randn(1, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    text = attention(q, kt, vt, 4)
    assert torch.equal(ip_attention(q, kt, vt, ki, vi, 4, 0.0, True), text)
    assert torch.equal(ip_attention(q, kt, vt, ki, vi, 4, 0.1, False), text)
    on = ip_attention(q, kt, vt, ki, vi, 4, 0.1, True)
    assert not torch.allclose(on, text)
    assert torch.allclose(on - text, 0.1 * attention(q, ki, vi, 4), atol=1e-6)


def test_window_and_scale_defaults_are_the_official_ones():
    assert DEFAULT_WINDOW.indices(50) == list(range(10, 20)) and DEFAULT_SCALE == 0.1
    assert [s for s in range(50) if window_active(s, 50)] == list(range(10, 20))
    assert not window_active(None, 50)


def test_image_tokens_are_never_routed_through_the_text_projections():
    """Two image prompts after the text (appearance/paste): both are split off, none reaches the text K,V."""
    g = torch.Generator().manual_seed(1)
    n_text, q_tokens, d = 7, 4, 12
    text, img1, img2 = (torch.randn(1, n, d, generator=g) for n in (n_text, q_tokens, q_tokens))
    ctx = torch.cat([text, img1, img2], 1)
    t, imgs = split_context(ctx, n_text, q_tokens)
    assert torch.equal(t, text) and len(imgs) == 2 and torch.equal(imgs[0], img1) and torch.equal(imgs[1], img2)
    # the text branch is the same whatever the image tokens are
    ctx2 = torch.cat([text, torch.randn(1, 2 * q_tokens, d, generator=g)], 1)
    assert torch.equal(split_context(ctx2, n_text, q_tokens)[0], t)
    wk, wv = torch.randn(16, d, generator=g), torch.randn(16, d, generator=g)
    k, v = ip_kv(imgs, wk, wv)
    assert k.shape == (1, 2 * q_tokens, 16) and torch.allclose(k[:, :q_tokens], img1 @ wk.t())
    assert torch.allclose(v[:, q_tokens:], img2 @ wv.t())
    assert split_context(text, n_text, q_tokens)[1] == []
    with pytest.raises(ValueError, match="whole number"):
        split_context(torch.cat([text, img1[:, :3]], 1), n_text, q_tokens)


def test_adapter_maps_processor_indices_onto_attn2_layers(tmp_path):
    _, ip = load_ip_weights(write_both(tmp_path, official_dict())[1])
    adapter = ImagePromptAdapter(ip)
    assert adapter.indices == [1, 3, 5] and adapter.context_dim == OUT
    names = ["down.0", "up.0", "mid.0"]  # the host supplies its attn2 names in diffusers' processor order
    assert adapter.layer_index_map(names) == {"down.0": 1, "up.0": 3, "mid.0": 5}
    per = adapter.for_layers(names)
    assert torch.equal(per["up.0"][0], ip["3.to_k_ip.weight"]) and torch.equal(per["mid.0"][1], ip["5.to_v_ip.weight"])
    with pytest.raises(ValueError, match="another base model"):
        adapter.for_layers(names[:2])


class Opaque:  # a plain custom class: weights_only must refuse to rebuild it
    def __init__(self):
        self.x = 1


RAN = []


def _side_effect(msg):
    RAN.append(msg)
    return msg


class Payload:  # a pickle that would run code when loaded unsafely
    def __reduce__(self):
        return (_side_effect, ("unsafe code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("obj", [Opaque(), Payload()], ids=["class-instance", "reduce-payload"])
def test_pickles_with_non_tensor_objects_are_refused(tmp_path, obj):
    d = official_dict()
    d["extra"] = obj
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(d, f)
    # an ordinary torch.save'd file with the same payload is refused too
    torch.save(d, tmp_path / "evil2.pt")
    for p in (tmp_path / "evil.bin", tmp_path / "evil2.pt"):
        with pytest.raises(ValueError, match="refused") as e:
            load_ip_weights(p)
        assert str(p) in str(e.value) and "safetensors" in str(e.value)
    assert RAN == []


def test_missing_file_and_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_ip_weights(tmp_path / "missing.bin")

    d = official_dict()
    del d["image_proj"]["latents"]
    torch.save(d, tmp_path / "nolatents.bin")
    with pytest.raises(ValueError, match=r"nolatents\.bin.*image_proj\.latents"):
        load_ip_weights(tmp_path / "nolatents.bin")

    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match=r"other\.bin.*image_proj"):
        load_ip_weights(tmp_path / "other.bin")

    d = official_dict()
    del d["ip_adapter"]["3.to_v_ip.weight"]
    torch.save(d, tmp_path / "nov.bin")
    with pytest.raises(ValueError, match=r"nov\.bin.*\[3\] lack to_k_ip or to_v_ip"):
        load_ip_weights(tmp_path / "nov.bin")

    d = official_dict()
    d["image_proj"]["layers.1.0.to_kv.weight"] = torch.zeros(5, WIDTH)
    torch.save(d, tmp_path / "shape.bin")
    with pytest.raises(ValueError, match=r"shape\.bin.*layers\.1\.0\.to_kv\.weight.*\(64, 32\)"):
        load_ip_weights(tmp_path / "shape.bin")

    d = official_dict()
    d["image_proj"]["latents"] = torch.zeros(8, WIDTH)
    save_file(flat(d), str(tmp_path / "flatlat.safetensors"))
    with pytest.raises(ValueError, match=r"flatlat\.safetensors.*latents"):
        load_ip_weights(tmp_path / "flatlat.safetensors")

    d = official_dict()
    d["ip_adapter"] = {k: v[:, :7].contiguous() for k, v in d["ip_adapter"].items()}
    save_file(flat(d), str(tmp_path / "width.safetensors"))
    with pytest.raises(ValueError, match=r"width\.safetensors.*7-wide image tokens.*outputs 24"):
        load_ip_weights(tmp_path / "width.safetensors")

    st = flat(official_dict())
    st["unet.stray"] = torch.zeros(1)
    save_file(st, str(tmp_path / "stray.safetensors"))
    with pytest.raises(ValueError, match="unexpected keys"):
        load_ip_weights(tmp_path / "stray.safetensors")

    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"garbage\.safetensors"):
        load_ip_weights(tmp_path / "garbage.safetensors")


def test_context_dim_mismatch_names_another_base_model(tmp_path):
    _, ip = load_ip_weights(write_both(tmp_path, official_dict())[0])
    check_context_dim(ip, OUT)
    with pytest.raises(ValueError, match=r"sdxl\.bin.*width \[24\].*768.*another base model"):
        check_context_dim(ip, 768, "sdxl.bin")


def test_conversion_round_trips(tmp_path):
    d = official_dict(16)
    bin_path, _ = write_both(tmp_path, d)
    out = convert_to_safetensors(bin_path, tmp_path / "conv.safetensors")
    again = convert_to_safetensors(out, tmp_path / "conv2.safetensors")
    for p in (out, again):
        proj, ip = load_ip_weights(p)
        assert proj.keys() == d["image_proj"].keys() and ip.keys() == d["ip_adapter"].keys()
        assert all(torch.equal(proj[k], d["image_proj"][k]) for k in proj)
        assert all(torch.equal(ip[k], d["ip_adapter"][k]) for k in ip)
    # a flat pickle (the safetensors key layout) is accepted too
    torch.save(flat(d), tmp_path / "flat.pt")
    proj, _ = load_ip_weights(tmp_path / "flat.pt")
    assert torch.equal(proj["latents"], d["image_proj"]["latents"])
    with pytest.raises(ValueError, match="refused"):  # conversion never bypasses the safe loader
        torch.save({"x": Opaque()}, tmp_path / "bad.bin")
        convert_to_safetensors(tmp_path / "bad.bin", tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
