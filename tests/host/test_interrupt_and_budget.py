"""Enormous inputs are refused before any model call, and a user interrupt stops every node between model calls.

The K,V bank's size is estimated from the MODEL's decoder attention layers and the latent size (exactly: the
estimate equals what recording stores); a bank over ``kv_budget_mb`` is refused with a plain ``ValueError``
naming ``kv_budget_mb`` and ``bank_start``/``bank_end`` before the first UNet call. A recording stand-in
(``set_model_unet_function_wrapper``, ComfyUI's own hook) counts the UNet calls and raises the interrupt flag
after a given call, as ``POST /interrupt`` does: no further call may start.
"""
import time

import comfy.model_management as mm
import pytest
import torch

import comfy_tiny as tm
from diffeditor.adapters.comfy_adapter import decoder_attention_shapes
from diffeditor.nodes.drag import DiffEditorDragOptimize
from diffeditor.nodes.edit import DiffEditorEdit, DiffEditorEditOptions, DiffEditorMoveSpec
from diffeditor.nodes.inversion import DiffEditorInvert, DiffEditorReconstruct
from diffeditor.samplers.budget import kv_bank_estimate

STEPS = 6  # ddim_uniform makes 7 steps of it
KNOBS = dict(preset="DiffEditor", seed=42, guidance_strength=1.0, keep_background=False)  # the official preset


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).result


def invert(model, conds, latent, **kw):
    args = dict(model=model, positive=conds[0], negative=conds[1], latent=latent, steps=STEPS,
                scheduler="ddim_uniform", cfg=1.0, exact=False, exact_iters=3, record_kv_bank=True,
                bank_start=0.0, bank_end=1.0, kv_budget_mb=4096.0)
    args.update(kw)
    return run(DiffEditorInvert, **args)


def counting(model, interrupt_after=None, during=False):
    """A clone whose UNet calls are counted; the interrupt flag goes up after call ``interrupt_after`` (or, with
    ``during``, inside that call, before the UNet runs)."""
    m = model.clone()
    calls = []

    def wrapper(apply_model, args):
        if during and len(calls) + 1 == interrupt_after:
            mm.interrupt_current_processing(True)
        out = apply_model(args["input"], args["timestep"], **args["c"])
        calls.append(tuple(args["input"].shape))
        if not during and len(calls) == interrupt_after:
            mm.interrupt_current_processing(True)
        return out

    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


@pytest.fixture(autouse=True)
def _clear_interrupt():
    yield
    mm.interrupt_current_processing(False)


# ------------------------------------------------------------------------------------------------ budget
@pytest.mark.parametrize("hw", [(16, 16), (13, 11)])
def test_bank_estimate_equals_what_recording_stores(sd15_model, conds, hw):
    latent = tm.random_latent(4, h=hw[0], w=hw[1])
    traj = invert(sd15_model, conds, latent, bank_start=0.5, bank_end=1.0)[0]
    est = kv_bank_estimate(decoder_attention_shapes(sd15_model, hw), len(traj.bank.recorded_steps()))
    assert traj.bank.nbytes == est.bytes > 0


def test_bank_estimate_sdxl(sdxl_model, sdxl_conds):
    traj = invert(sdxl_model, sdxl_conds, tm.random_latent(5))[0]
    est = kv_bank_estimate(decoder_attention_shapes(sdxl_model, traj.shape[-2:]), len(traj.bank.recorded_steps()))
    assert traj.bank.nbytes == est.bytes > 0


def test_enormous_latent_is_refused_before_any_model_call(sd15_model, conds):
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        huge = {"samples": torch.randn(1, 4, 2048, 2048, generator=g)}  # a 16384x16384 image
    model, calls = counting(sd15_model)
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        invert(model, conds, huge)  # default kv_budget_mb (4096)
    assert time.perf_counter() - t0 < 20 and calls == []
    msg = str(err.value)
    assert type(err.value) is ValueError and msg.startswith("kv_budget_mb: the K,V bank of this latent needs ")
    assert "bank_start/bank_end to at most 2 of the 7 steps" in msg and "record_kv_bank off" in msg
    with pytest.raises(ValueError, match=r"^kv_budget_mb: .*one recorded step alone needs .*bank_start/bank_end"
                       ) as err:
        invert(model, conds, huge, kv_budget_mb=64.0)
    assert calls == [] and type(err.value) is ValueError


def test_budget_error_met_while_recording_names_the_inputs(sd15_model, conds, latent, monkeypatch):
    """Should the estimate ever be short, the bank's own error still reaches the user as a plain ValueError."""
    import diffeditor.nodes.inversion as inv

    monkeypatch.setattr(inv, "kv_bank_estimate", lambda *a, **k: kv_bank_estimate([], 1))
    with pytest.raises(ValueError, match=r"^kv_budget_mb: K,V bank needs more than its byte budget.*bank_start/"
                                         r"bank_end select 7 of 7 steps") as err:
        invert(sd15_model, conds, latent, kv_budget_mb=0.01)
    assert type(err.value) is ValueError


# --------------------------------------------------------------------------------------------- interrupt
@pytest.mark.parametrize("after", [1, 5])
def test_exact_inversion_stops_between_model_calls(sd15_model, conds, latent, after):
    model, calls = counting(sd15_model, interrupt_after=after)
    with pytest.raises(mm.InterruptProcessingException):
        invert(model, conds, latent, exact=True, exact_iters=3)
    assert len(calls) == after  # several calls per step: the check is before each call, not each step


def test_a_model_call_in_progress_is_abandoned(sd15_model, conds, latent):
    """The flag raised while the UNet runs stops the run inside that call (at the next decoder attention)."""
    model, calls = counting(sd15_model, interrupt_after=3, during=True)
    with pytest.raises(mm.InterruptProcessingException):
        invert(model, conds, latent, record_kv_bank=False)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def source(sd15_model, conds, latent):
    return invert(sd15_model, conds, latent)[0]


def test_reconstruct_edit_and_drag_stop_between_model_calls(sd15_model, conds, source):
    traj = source
    H, W = 8 * traj.shape[-2], 8 * traj.shape[-1]
    mask = torch.zeros(1, H, W)
    mask[:, 32:64, 24:56] = 1
    spec = run(DiffEditorMoveSpec, mask=mask, dx=24, dy=0, scale=1.0)[0]
    cases = {
        "reconstruct": lambda m: run(DiffEditorReconstruct, model=m, positive=conds[0], negative=conds[1],
                                     trajectory=traj, cfg=1.0),
        # guidance (feature passes with backward) and time travel: several UNet calls per step
        "edit": lambda m: run(DiffEditorEdit, model=m, positive=conds[0], negative=conds[1], trajectory=traj,
                              spec=spec, cfg=-1.0, options=run(DiffEditorEditOptions, time_travel="on",
                                                                time_travel_repeats=2, time_travel_start=0.0,
                                                                time_travel_end=1.0)[0], **KNOBS),
        "drag": lambda m: run(DiffEditorDragOptimize, model=m, positive=conds[0], negative=conds[1],
                              trajectory=traj, points="40,40->64,40", strength=0.7, steps=20, lr=0.01, r_m=1,
                              r_p=3, lam=0.1, mask=mask),
    }
    for name, node in cases.items():
        for after in (2, 5):
            model, calls = counting(sd15_model, interrupt_after=after)
            with pytest.raises(mm.InterruptProcessingException):
                node(model)
            assert len(calls) == after, (name, after, len(calls))
            mm.interrupt_current_processing(False)
