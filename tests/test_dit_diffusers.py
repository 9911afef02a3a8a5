"""Headless editing on diffusers flow transformers (tiny seeded Flux and SD3, CPU, 16x16 latents).

Every test runs on both families: the Flux is guidance-distilled (cfg 1, guidance embedding), the SD3 uses true
CFG. Exact inversion and reconstruction, the trajectory anchor, the energies through the transformer's block
features, K,V injection through the attention processors (and their restoration), call accounting, every
edit through the pipeline, and the family check.
"""
import hashlib
import math
from types import SimpleNamespace

import pytest
import torch

from diffeditor.adapters.diffusers_dit import DiTHost, FlowDenoiser, dit_family, flow_sigmas, hooked
from diffeditor.adapters.pipeline import DiffEditorPipeline
from diffeditor.guidance.tasks import AppearanceSpec, DragSpec, MoveSpec, PasteSpec, make_task
from diffeditor.samplers.blend import TrajectoryAnchor
from diffeditor.samplers.edit import EditStats, preset_schedule, sample_edit
from diffeditor.samplers.hooks import EditHooks, KVInjection
from diffeditor.samplers.sampling import sample_diffeditor

from tiny_models import dit_text, make_tiny_flux, make_tiny_sd3, make_tiny_unet

PROMPT = "a red square"
STEPS = 6
RESULTS: dict = {}  # measured numbers, printed at the end of the module (pytest -s)


def _box(y0, y1, x0, x1, H=128, W=128):
    m = torch.zeros(H, W)
    m[y0:y1, x0:x1] = 1.0
    return m


OBJ = _box(32, 64, 24, 56)
SPECS = {
    "move": lambda: MoveSpec(OBJ, dx=32, dy=8),
    "resize": lambda: MoveSpec(OBJ, dx=0.0, dy=0.0, scale=1.5),
    "drag": lambda: DragSpec([((40.0, 40.0), (72.0, 48.0))], mask=_box(16, 80, 16, 100)),
    "appearance": lambda: AppearanceSpec(OBJ, OBJ.flip(-1)),
    "paste": lambda: PasteSpec(OBJ.flip(-1), dx=-32, dy=16),
}
SCHEDULE_TASK = {"move": "move", "resize": "move", "drag": "drag", "appearance": "appearance", "paste": "paste"}


def _latent(seed):
    """A smooth random 4-channel 16x16 latent (an 'image' with structure at the token scale)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, 8, 8, generator=g)
    return torch.nn.functional.interpolate(z, size=(16, 16), mode="bilinear", align_corners=False) * 1.5


def _weights_hash(model) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is several times faster than two (and much faster on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["flux", "sd3"])
def case(request, one_thread):
    fam = request.param
    model = make_tiny_flux(0) if fam == "flux" else make_tiny_sd3(0)
    table = {PROMPT: 1, "": 2}

    def encode_text(prompts):
        pairs = [dit_text(fam, table.get(p, 3)) for p in prompts]
        return torch.cat([h for h, _ in pairs]), torch.cat([p for _, p in pairs])

    pipe = DiffEditorPipeline(model, encode_text=encode_text, shift=3.0)
    z, z_ref = _latent(1), _latent(2)
    tr = pipe.invert(z, PROMPT, steps=STEPS)
    ref = pipe.invert(z_ref, PROMPT, steps=STEPS)
    yield SimpleNamespace(fam=fam, model=model, pipe=pipe, z=z, z_ref=z_ref, tr=tr, ref=ref,
                          cfg=1.0 if fam == "flux" else 4.0)
    print(f"\n[{fam}] measured: {RESULTS.get(fam)}")


def _record(fam, **kw):
    RESULTS.setdefault(fam, {}).update(kw)


# --------------------------------------------------------------------------------------------- basics
def test_family_sigmas_and_hooked_processors_match_the_originals(case):
    assert dit_family(case.model) == case.fam and case.pipe.param.name == "flow"
    assert case.tr.param == "flow" and case.tr.sigmas[0] == 1.0 and case.tr.sigmas[-1] == 0.0
    t = torch.linspace(1, 1 / STEPS, STEPS, dtype=torch.float64)
    assert torch.allclose(case.tr.sigmas[:-1].double(), 3 * t / (1 + 2 * t), atol=1e-7)
    den = case.pipe.denoiser(PROMPT)
    x, s = case.tr.at(4), case.tr.sigmas[4:5]
    with torch.no_grad():
        plain = den._velocity(x, s, den.cond, den.pooled, None)  # the model's own processors
        with den.installed():
            ours = den._velocity(x, s, den.cond, den.pooled, None)
    assert float(plain.abs().mean()) > 1e-2  # live predictions
    assert torch.allclose(ours, plain, atol=1e-5), float((ours - plain).abs().max())


def test_exact_inversion_reconstructs_the_source(case):
    tr = case.pipe.invert(case.z, PROMPT, steps=10, exact_iters=8, bank_window=None)
    rec = case.pipe.reconstruct(tr, PROMPT)
    err = float((rec - case.z).norm() / case.z.norm())
    plain = float((case.pipe.reconstruct(case.tr, PROMPT) - case.z).norm() / case.z.norm())
    _record(case.fam, exact_reconstruction_rel_l2=err, plain_reconstruction_rel_l2=plain,
            exact_residual_max=max(tr.exact_residuals))
    print(f"[{case.fam}] reconstruction rel L2: exact {err:.3g}, plain {plain:.3g}")
    assert err < 1e-3
    assert err < plain


def test_features_are_block_outputs_on_the_token_grid_and_truncate(case):
    den = case.pipe.denoiser(PROMPT)
    host = DiTHost(den)
    levels = host.default_levels()
    n = host.num_blocks
    assert levels and all(0 <= l < n for l in levels)
    last = (case.model.single_transformer_blocks if case.fam == "flux" else case.model.transformer_blocks)[-1]
    ran = []
    h = last.register_forward_pre_hook(lambda *a: ran.append(1))
    try:
        f = host.features(case.tr.at(3), case.tr.sigmas[3:4], [0, n - 2])
        assert not ran  # truncated after block n-2
        host.features(case.tr.at(3), case.tr.sigmas[3:4], [n - 1])
        assert len(ran) == 1
    finally:
        h.remove()
    inner = case.model.config.num_attention_heads * case.model.config.attention_head_dim
    assert f[0].shape == (1, inner, 8, 8) and f[n - 2].shape == (1, inner, 8, 8)
    with pytest.raises(ValueError, match="blocks"):
        host.features(case.tr.at(3), case.tr.sigmas[3:4], [n])


# -------------------------------------------------------------------------------------------- energies
@pytest.mark.parametrize("name", ["move", "drag", "appearance", "paste"])
def test_each_energy_decreases_after_a_step_on_its_region(case, name):
    host = case.pipe.host(case.pipe.denoiser(PROMPT))
    levels = host.default_levels()
    i = 3
    s = case.tr.sigmas[i:i + 1]
    task = make_task(SPECS[name](), case.z)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        R = host.features(case.tr.at(i), s, levels)
        G = host.features(case.ref.at(i), s, levels)
        x = task.init_latent(case.tr.at(i), case.ref.at(i)) + 0.3 * torch.randn(case.z.shape, generator=g)
    m = task.edit_mask
    for which, region in ((0, m), (1, 1 - m)):
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            e = task.energy(host.features(xg, s, levels), R, G)[which]
            (grad,) = torch.autograd.grad(e, xg)
        step = grad * region
        assert step.abs().sum() > 0, f"{name}: energy {which} has no gradient on its region"
        with torch.no_grad():
            e_new = task.energy(host.features(x - 0.05 * step / step.norm(), s, levels), R, G)[which]
        assert e_new < e.detach(), f"{name}: energy {which} did not decrease ({float(e)} -> {float(e_new)})"


# ------------------------------------------------------------------------------------------------- K,V
def test_kv_injection_changes_the_output_and_leaves_the_model_as_it_was(case):
    model, pipe, tr, ref = case.model, case.pipe, case.tr, case.ref
    before_procs = dict(model.attn_processors)
    before_hash = _weights_hash(model)
    den = pipe.denoiser(PROMPT)
    sig = tr.sigmas
    m = make_task(SPECS["paste"](), case.z).edit_mask

    def run(kv=None):
        with den.installed():
            return sample_diffeditor(den, ref.z_T, sig, trajectory=ref, hooks=pipe.hooks, model_id=pipe.model_id,
                                     kv=kv, kv_trajectory=tr if kv is not None else None)

    plain = run()
    outs = {}
    for mode in ("replace", "concat", "composite"):
        kw = dict(ref_bank=ref.bank, src_mask=m, ref_mask=m.flip(-1)) if mode == "composite" else {}
        outs[mode] = run(KVInjection(mode, tr.bank, frozenset(range(1, STEPS)), **kw))
        diff = float((outs[mode] - plain).abs().max())
        _record(case.fam, **{f"kv_{mode}_max_change": diff})
        assert torch.isfinite(outs[mode]).all() and diff > 1e-3, f"{mode} did not change the output"
    assert not torch.equal(outs["replace"], outs["concat"])
    after = dict(model.attn_processors)
    assert after.keys() == before_procs.keys() and all(after[k] is before_procs[k] for k in after)
    assert torch.equal(run(), plain)  # a second plain sampling: bit for bit the first
    assert _weights_hash(model) == before_hash
    assert pipe.hooks.inject is None and pipe.hooks.record is None


def test_bank_holds_image_tokens_of_every_attention(case):
    bank = case.tr.bank
    n_double = len(case.model.transformer_blocks)
    n_single = len(getattr(case.model, "single_transformer_blocks", []))
    names = {f"double_blocks.{i}" for i in range(n_double)} | {f"single_blocks.{i}" for i in range(n_single)}
    assert set(bank.recorded_layers()) == names and bank.recorded_steps() == list(range(STEPS))
    k, v = bank.get("double_blocks.0", 0)
    inner = case.model.config.num_attention_heads * case.model.config.attention_head_dim
    assert k.shape == v.shape == (1, 64, inner)  # 8x8 image tokens, heads merged, no text tokens


# ----------------------------------------------------------------------------------- the editing loop
class Counter:
    def __init__(self, model):
        self.calls = []
        self.h = model.register_forward_pre_hook(
            lambda mod, args, kw: self.calls.append(kw["hidden_states"].shape[0]), with_kwargs=True)

    def close(self):
        self.h.remove()


def test_call_counts_of_a_move_edit(case):
    task = make_task(SPECS["move"](), case.z)
    stats = EditStats()
    counter = Counter(case.model)
    try:
        out = case.pipe.edit(case.tr, task, PROMPT, cfg=case.cfg, schedule=preset_schedule("DiffEditor", "move"),
                             stats=stats)
    finally:
        counter.close()
    assert out.shape == case.z.shape and torch.isfinite(out).all()
    # 6 steps: guidance on {0, 1, 3}; time travel on {3} with 3 passes (2 extra passes, 2 roll-backs)
    assert stats.guidance_evals == 5 and stats.cfg_forwards == 8 and stats.renoise_forwards == 2
    assert stats.feature_forwards == 5 and stats.reference_forwards == 3 and stats.backward_passes == 10
    assert len(counter.calls) == 8 + 5 + 3 + 2  # every transformer forward accounted for
    if case.cfg == 1.0:  # distilled Flux: no unconditional pass, every forward is one latent
        assert counter.calls == [1] * 18
    else:  # true CFG: the 8 CFG forwards carry cond + uncond
        assert sorted(counter.calls) == [1] * 10 + [2] * 8
    _record(case.fam, move_edit_stats=stats.as_dict(), move_edit_forwards=len(counter.calls))
    assert max(abs(e) for (_, _, e, _) in stats.energies) > 0


def test_anchor_keeps_the_outside_on_the_trajectory(case):
    task = make_task(SPECS["move"](), case.z)
    sched = preset_schedule("DiffEditor", "move")
    out = case.pipe.edit(case.tr, task, PROMPT, cfg=case.cfg, schedule=sched,
                         blend=TrajectoryAnchor(case.tr, task.edit_mask))
    m = task.edit_mask.expand_as(out) > 0.5
    assert torch.equal(out[~m], case.tr.x0[~m])  # outside the mask: exactly the inverted source
    assert float((out - case.tr.x0)[m].abs().max()) > 1e-3  # inside, the edit happens


@pytest.mark.parametrize("name", ["resize", "drag", "appearance", "paste"])  # move: the two tests above
def test_every_edit_runs_through_the_pipeline(case, name):
    ref = case.ref if name in ("appearance", "paste") else None
    task = make_task(SPECS[name](), case.z, reference=ref)
    out = case.pipe.edit(case.tr, task, PROMPT, cfg=case.cfg, schedule=preset_schedule("DiffEditor",
                                                                                        SCHEDULE_TASK[name]))
    assert out.shape == case.z.shape and torch.isfinite(out).all()
    assert float((out - case.tr.x0).abs().max()) > 1e-3


def test_pack_stable_edit_and_drag_through_the_pipeline(case):
    task = make_task(SPECS["move"](), case.z)
    out = case.pipe.edit_pack(case.tr, task, SPECS["move"](), PROMPT, cfg=case.cfg)
    assert out.shape == case.z.shape and torch.isfinite(out).all()
    out, report = case.pipe.stable_edit(case.tr, task, PROMPT, cfg=case.cfg, max_level=0)
    assert torch.isfinite(out).all() and report is not None
    out, info = case.pipe.drag(case.tr, [(40.0, 40.0)], [(60.0, 44.0)], PROMPT, mask=_box(16, 80, 16, 100),
                               drag_steps=2, tracks=2, iters_per_track=2)
    assert out.shape == case.z.shape and torch.isfinite(out).all()
    assert info["iterations"] >= 1 and info["backward_passes"] >= 1


# ------------------------------------------------------------------------------------- family checks
def test_a_unet_trajectory_is_refused_with_the_family_in_the_message(case):
    unet_pipe = DiffEditorPipeline(make_tiny_unet(), encode_text=lambda p: torch.zeros(len(p), 6, 32))
    unet_tr = unet_pipe.invert(case.z, PROMPT, steps=3, bank_window=None)
    task = make_task(SPECS["move"](), case.z)
    for call in (lambda: case.pipe.edit(unet_tr, task, PROMPT, cfg=case.cfg),
                 lambda: case.pipe.reconstruct(unet_tr, PROMPT)):
        with pytest.raises(ValueError, match="inverted on a eps prediction .* this MODEL is rectified flow"):
            call()
    # the engine itself, on the DiT's own schedule
    den = case.pipe.denoiser(PROMPT)
    with pytest.raises(ValueError, match="inverted on a eps prediction"):
        sample_edit(den, case.z, flow_sigmas(3), host=DiTHost(den), hooks=case.pipe.hooks, trajectory=unet_tr,
                    task=task, disable=True)
    with pytest.raises(ValueError, match="inverted on a rectified flow .* this MODEL is eps"):
        unet_pipe.reconstruct(case.tr, PROMPT)


def test_cfg_and_conditioning_errors(case):
    if case.fam == "flux":
        with pytest.raises(ValueError, match="set cfg to 1 and use the guidance value"):
            case.pipe.denoiser(PROMPT, cfg=4.0)
        free = make_tiny_flux(0, guidance_embeds=False)  # a non-distilled Flux: true CFG
        c, p = dit_text("flux", 1)
        u, up = dit_text("flux", 2)
        den = FlowDenoiser(free, c, p, u, up, cfg=3.0)
        x = case.tr.at(5)
        with torch.no_grad():
            d = den(x, 0.5)
            dc = FlowDenoiser(free, c, p)(x, 0.5)
            du = FlowDenoiser(free, u, up)(x, 0.5)
        assert torch.allclose(d, du + 3.0 * (dc - du), atol=1e-5)
    with pytest.raises(ValueError, match="pooled"):
        case.pipe.denoiser(torch.zeros(1, 6, 32))
    with pytest.raises(ValueError, match="negative prompt"):
        c, p = dit_text(case.fam, 1)
        FlowDenoiser(make_tiny_sd3(0), c, p, cfg=2.0)
    with pytest.raises(ValueError, match="FluxTransformer2DModel or SD3"):
        FlowDenoiser(make_tiny_unet(), *dit_text(case.fam, 1))
    with pytest.raises(ValueError, match="not a diffusers Flux or SD3"):
        with hooked(make_tiny_unet(), EditHooks()):
            pass


def test_dit_levels_bench_metric_on_a_known_shift():
    """bench/dit_levels.py's matcher: a feature map and its copy shifted by (dy, dx) tokens match exactly."""
    from diffeditor.bench.dit_levels import match, pseudo_latent, texture

    f = torch.randn(8, 10, 12, generator=torch.Generator().manual_seed(0))
    g = torch.zeros_like(f)
    g[:, :-2, :-1] = f[:, 2:, 1:]  # content at (r, c) of f sits at (r - 2, c - 1) of g
    acc, err, n = match(f, g, (2, 1))
    assert acc == 1.0 and err == 0.0 and n == 8 * 11
    z = pseudo_latent(texture(0, 64))
    assert z.shape == (1, 4, 8, 8) and abs(float(z.mean())) < 1e-5


class _FakeTokenizer:
    """Stands in for a CLIP / T5 tokenizer (no vocabulary files): character codes, padded to max_length."""

    def __init__(self, model_max_length=8, vocab=50):
        self.model_max_length, self.vocab = model_max_length, vocab

    def __call__(self, texts, padding=None, max_length=None, truncation=None, return_tensors=None):
        n = max_length or self.model_max_length
        rows = [([3 + ord(c) % (self.vocab - 4) for c in t] + [2])[:n] for t in texts]
        return SimpleNamespace(input_ids=torch.tensor([r + [0] * (n - len(r)) for r in rows]))


class _Out:
    """A model output: ``out[0]`` and named fields (as transformers' ModelOutput)."""

    def __init__(self, first, **fields):
        self._first = first
        self.__dict__.update(fields)

    def __getitem__(self, i):
        if i != 0:
            raise IndexError(i)
        return self._first


class _FakeEncoder(torch.nn.Module):
    """Stands in for CLIPTextModel (``proj=None``: out[0] = last hidden, ``pooler_output``), CLIPTextModelWithProjection
    (out[0] = projected text embeds, ``hidden_states``) or a T5 encoder (out[0] = last hidden): same outputs, no
    transformers import (slow) in the default tier."""

    def __init__(self, hidden, proj=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.mix = torch.nn.Embedding(50, hidden), torch.nn.Linear(hidden, hidden)
        self.proj = None if proj is None else torch.nn.Linear(hidden, proj)

    def forward(self, ids, output_hidden_states=False):
        h0 = self.emb(ids)
        h1 = torch.tanh(self.mix(h0))
        h2 = torch.tanh(self.mix(h1))
        pooled = h2[torch.arange(ids.shape[0]), ids.argmax(-1)]
        states = (h0, h1, h2) if output_hidden_states else None
        if self.proj is not None:
            return _Out(self.proj(pooled), hidden_states=states)
        return _Out(h2, pooler_output=pooled, hidden_states=states)


def _clip(hidden, proj=None):
    return _FakeEncoder(hidden, proj, seed=hidden).eval()


def _t5(d_model):
    return _FakeEncoder(d_model, seed=d_model).eval()


def test_from_flux_and_from_sd3_encode_what_each_transformer_needs():
    tok = _FakeTokenizer()
    flux = DiffEditorPipeline.from_flux(make_tiny_flux(0), None, _clip(16), tok, _t5(32), tok, max_sequence_length=5)
    hidden, pooled = flux.text(PROMPT)
    assert hidden.shape == (1, 5, 32) and pooled.shape == (1, 16)
    sd3_model = make_tiny_sd3(0)
    sd3 = DiffEditorPipeline.from_sd3(sd3_model, None, _clip(8, 8), tok, _clip(12, 8), tok, _t5(32), tok,
                                      max_sequence_length=5)
    hidden, pooled = sd3.text(PROMPT)
    assert hidden.shape == (1, 8 + 5, 32) and pooled.shape == (1, 16)
    assert torch.equal(hidden[:, :8, 20:], torch.zeros(1, 8, 12))  # CLIP widths 8 + 12, zero-padded to 32
    no_t5 = DiffEditorPipeline.from_sd3(sd3_model, None, _clip(8, 8), tok, _clip(12, 8), tok, max_sequence_length=5)
    assert torch.equal(no_t5.text(PROMPT)[0][:, 8:], torch.zeros(1, 5, 32))
    for pipe in (flux, sd3):
        with torch.no_grad():
            out = pipe.denoiser(PROMPT)(torch.randn(1, 4, 16, 16), 0.5)
        assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


def test_dit_levels_bench_runs_on_a_local_diffusers_folder(tmp_path):
    """``--pretrained``: a saved transformer + VAE (here the tiny ones) is measured the same way, offline."""
    from diffusers import AutoencoderKL

    from diffeditor.bench.dit_levels import main

    make_tiny_sd3(0).save_pretrained(tmp_path / "transformer")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  norm_num_groups=4, layers_per_block=1, shift_factor=0.1).save_pretrained(tmp_path / "vae")
    out = main(["--pretrained", str(tmp_path), "--images", "1", "--tokens", "8", "--out", str(tmp_path / "r.json")])
    (r,) = out["results"]
    assert "SD3Transformer2DModel" in r["model"] and r["blocks"] == 3 and out["limit"].startswith("trained")
    assert [row["block"] for row in r["rows"]] == ["input", 0, 1, 2]
    assert all(0 <= row["acc"] <= 1 for row in r["rows"])


def test_dit_levels_bench_runs_on_trained_tiny_dits(tmp_path):
    """``bench/train_tiny_dit.py`` (here 3 steps of smaller models on 16 scenes) and ``dit_levels.py --trained``:
    the demo VAE / text encoder data path, the rectified-flow step, and the measurement on the saved weights."""
    from diffeditor.bench import train_tiny_dit as T
    from diffeditor.bench.dit_levels import main

    for family, over in (("flux", dict(num_layers=1, num_single_layers=1)), ("sd3", dict(num_layers=2))):
        rec = T.train(family, 5.0, 16, batch=4, log_every=1, work=tmp_path, max_steps=3, **over)
        assert rec["steps"] == 3 and all(math.isfinite(c[2]) for c in rec["curve"])
    data = torch.load(tmp_path / "data_16.pt")
    assert data["latents"].shape == (16, 4, 16, 16) and data["hidden"].shape == (16, 16, 64)
    out = main(["--trained", str(tmp_path), "--tokens", "8", "--images", "1", "--out", str(tmp_path / "r.json")])
    assert [r["blocks"] for r in out["results"]] == [2, 2] and out["setup"]["token_px"] == 8
    assert all(r["train"]["steps"] == 3 for r in out["results"])
    assert all(0 <= row["acc"] <= 1 for r in out["results"] for row in r["rows"])


def test_other_attention_processors_are_refused_not_replaced():
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = make_tiny_sd3(0)
    procs = dict(model.attn_processors)
    key = "transformer_blocks.1.attn.processor"
    model.set_attn_processor({**procs, key: AttnProcessor2_0()})
    custom = model.attn_processors[key]
    with pytest.raises(NotImplementedError, match="AttnProcessor2_0"):
        with hooked(model, EditHooks()):
            pass
    assert model.attn_processors[key] is custom  # untouched


@pytest.mark.parametrize("make", [make_tiny_flux, make_tiny_sd3])
def test_fused_qkv_projections_are_hooked_too(make):
    model = make(0)
    c, p = dit_text("x", 1)
    den = FlowDenoiser(model, c, p)
    x, s = _latent(3), torch.tensor([0.5])
    with torch.no_grad():
        model.fuse_qkv_projections()
        plain = den._velocity(x, s, c, p, None)
        with den.installed():
            ours = den._velocity(x, s, c, p, None)
    assert torch.allclose(ours, plain, atol=1e-5)
