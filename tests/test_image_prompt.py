"""DiffEditor image prompt: official weight layout in both formats, token shapes, gating, safe loading."""
import pickle

import pytest
import torch

from diffeditor.guidance.image_prompt import ImagePromptAdapter, Resampler, attention, ip_attention
from diffeditor.guidance.ip_weights import check_context_dim, convert_to_safetensors, load_ip_weights


def official_dict(queries=8, dim=32, depth=2, emb=48, out=24, layers=(1, 3, 5)):
    torch.manual_seed(queries)
    r = Resampler(queries, dim, depth, heads=4, dim_head=8, embedding_dim=emb, output_dim=out)
    ip = {}
    for i in layers:
        ip[f"{i}.to_k_ip.weight"] = torch.randn(16, out)
        ip[f"{i}.to_v_ip.weight"] = torch.randn(16, out)
    return {"image_proj": r.state_dict(), "ip_adapter": ip}


@pytest.mark.parametrize("queries", [8, 16])
def test_both_formats_load_identically_and_queries_come_from_the_weights(tmp_path, queries):
    d = official_dict(queries)
    torch.save(d, tmp_path / "w.bin")
    convert_to_safetensors(tmp_path / "w.bin", tmp_path / "w.safetensors")
    a, b = load_ip_weights(tmp_path / "w.bin"), load_ip_weights(tmp_path / "w.safetensors")
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1].keys() == b[1].keys()
    r = Resampler.from_state_dict(b[0], heads=4)
    tokens = r(torch.randn(2, 257, 48))
    assert tokens.shape == (2, queries, 24)
    assert sorted(r.state_dict()) == sorted(d["image_proj"])  # the official key names


def test_ip_attention_is_text_only_when_off():
    g = torch.Generator().manual_seed(0)
    q, kt, vt = (torch.randn(2, 10, 16, generator=g) for _ in range(3))
    ki, vi = torch.randn(1, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    text = attention(q, kt, vt, 4)
    assert torch.equal(ip_attention(q, kt, vt, ki, vi, 4, 0.0, True), text)
    assert torch.equal(ip_attention(q, kt, vt, ki, vi, 4, 0.1, False), text)
    on = ip_attention(q, kt, vt, ki, vi, 4, 0.1, True)
    assert not torch.allclose(on, text) and torch.allclose(on - text, 0.1 * attention(q, ki, vi, 4), atol=1e-6)


class Payload:  # anything but tensors and plain containers must be refused
    def __reduce__(self):
        return (print, ("unsafe code ran",))


def test_unsafe_pickle_is_refused(tmp_path):
    d = official_dict()
    d["extra"] = Payload()
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(ValueError, match="refused"):
        load_ip_weights(tmp_path / "evil.bin")


def test_layout_and_base_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_ip_weights(tmp_path / "missing.bin")
    d = official_dict()
    del d["image_proj"]["latents"]
    torch.save(d, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="latents"):
        load_ip_weights(tmp_path / "bad.bin")
    torch.save({"state_dict": {}}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="image_proj"):
        load_ip_weights(tmp_path / "other.bin")
    _, ip = load_ip_weights(_save(tmp_path, official_dict()))
    with pytest.raises(ValueError, match="another base model"):
        check_context_dim(ip, 768)
    adapter = ImagePromptAdapter(ip)
    assert adapter.context_dim == 24
    assert list(adapter.for_layers(["a", "b", "c"])) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="another base model"):
        adapter.for_layers(["a", "b"])


def _save(tmp_path, d):
    torch.save(d, tmp_path / "ok.bin")
    return tmp_path / "ok.bin"
