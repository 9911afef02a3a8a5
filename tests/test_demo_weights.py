"""The committed, trained demo model (models/demo/weights): size, autoencoder PSNR, sampling sanity,
exact inversion through the headless pipeline, and the README's main command (fast settings)."""
import json
import pathlib

import numpy as np
import pytest
import torch

from diffeditor.adapters.pipeline import DiffEditorPipeline
from diffeditor.bench import scenes as S
from diffeditor.bench.demo_quality import HELDOUT_SEED0, evaluate
from diffeditor.models.demo.load import FILES, load_demo
from diffeditor.models.demo.train import scene_batch, vae_psnr

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "demo" / "weights"


@pytest.fixture(scope="module")
def model():
    return load_demo(WEIGHTS)


def test_weights_are_committed_small_and_safetensors():
    assert (WEIGHTS / "config.json").exists(), "trained demo weights must be committed"
    total = sum((WEIGHTS / f).stat().st_size for f in FILES.values())
    assert total <= 30 * 2 ** 20
    meta = json.loads((WEIGHTS / "config.json").read_text())
    assert meta["trained"]["vae_steps"] > 0 and meta["trained"]["unet_steps"] > 0
    card = json.loads((WEIGHTS / "model_card.json").read_text())
    assert card["vae_psnr_heldout"] >= 30.0


def test_autoencoder_psnr_on_fresh_scenes(model):
    vae = model[0]
    x, _ = scene_batch(np.random.default_rng(12345), 16)
    with torch.no_grad():
        assert vae_psnr(vae, x) >= 30.0
    assert vae.config.scaling_factor > 0 and model[1].config.sample_size == 16


def test_sampling_finds_the_captioned_colours(model):
    summary, rows, imgs = evaluate(model, n=8, steps=20, cfg=5.0, seed=3, batch=8)
    assert imgs.shape == (8, 64, 64, 3) and np.isfinite(imgs).all()
    assert summary["color_rate"] >= 0.6, summary
    # the images are not all alike (the captions drive them)
    assert np.std(imgs.reshape(8, -1).mean(1)) > 0.005


def test_exact_inversion_reconstructs_a_scene(model):
    vae, unet, te, tok, ac = model

    def enc(prompts):
        with torch.no_grad():
            return te(tok(list(prompts)))

    pipe = DiffEditorPipeline(unet, vae=vae, encode_text=enc, alphas_cumprod=ac)
    assert pipe.pixels_per_latent == 4
    scene = S.make_scene(HELDOUT_SEED0 - 1)
    src = torch.from_numpy(scene.image())[None]
    z = pipe.encode_image(src)
    traj = pipe.invert(z, scene.caption(), steps=20, exact_iters=5, bank_window=None)
    rec = pipe.reconstruct(traj, scene.caption())
    assert float((rec - z).norm() / z.norm()) < 1e-2
    img = pipe.decode(rec)[0].numpy()
    assert 10 * np.log10(1 / np.mean((img - scene.image()) ** 2)) > 28.0


def test_main_command_moves_the_object(tmp_path):
    """The README's main command: the pack preset by default, the published DiffEditor preset beside it."""
    import demo

    rep = demo.run(seed=0, steps=20, out=tmp_path / "demo.png", progress=False, compare=True)
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert rep["preset"] == "DiffEditor+"
    for p in ("", "diffeditor_"):  # the moved object is found (not NaN), near the truth; background kept
        assert rep[f"{p}centroid_err_px"] == rep[f"{p}centroid_err_px"], rep
        assert rep[f"{p}centroid_err_px"] < 6.0 and rep[f"{p}bg_psnr"] > 20.0, rep
    # the warp-and-inpaint move paints only the uncovered area from half the schedule: 10 CFG calls at 20
    # steps, against the guided edit's 20+ (and a locked background)
    assert rep["unet_calls"] == 10 and rep["diffeditor_cfg_forwards"] >= 20, rep
    assert rep["bg_psnr"] > rep["diffeditor_bg_psnr"], rep
