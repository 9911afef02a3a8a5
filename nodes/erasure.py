"""Concept erasure nodes: closed-form UCE (reversible weight patches) and SLD inference-time guidance."""
from __future__ import annotations

import comfy.utils
from comfy_api.latest import io

from ..adapters.comfy_erasure import parse_concepts, sld_model, uce_patched_model
from ..guidance.sld import SLD_PRESETS, SLDConfig
from .common import CATEGORY, check_conditioning, check_finite, refuse_dit

#: why UCE's closed form does not apply to a DiT (messages and tooltips)
UCE_ON_DIT = ("UCE's closed form edits the cross-attention K/V projections, which map the text embedding to keys "
              "and values by one fixed linear map. Flux and SD3 have no cross-attention: their text tokens pass "
              "through a timestep- and pooled-prompt-dependent modulation and a per-token norm before every "
              "joint-attention projection, so no projection is a fixed linear map of the text embedding and the "
              "closed form does not apply (use a UNet MODEL, or drop the concept from the prompt)")
SLD_ON_DIT = ("SLD's presets are calibrated on SD1.x eps predictions and steer the classifier-free guidance "
              "term; guidance-distilled Flux samples without that term (cfg 1) and SD3's flow predictions are on "
              "another scale, so the published settings do not carry over (use a UNet MODEL)")


class DiffEditorEraseConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorEraseConcept", display_name="DiffEditor Erase Concept (UCE)",
            category=f"{CATEGORY}/erase",
            description="Unified Concept Editing: a closed-form edit of every cross-attention K/V projection so the "
                        "erased concepts map to the guide concept while the preserved ones keep their outputs. "
                        "Applied as weight patches on a copy of the MODEL (your MODEL is untouched; remove the node "
                        "to undo). LoRAs already applied are taken into account.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to edit (SD1.x, SD2, SDXL UNets). Flux/SD3 DiTs are "
                                                "refused: they have no cross-attention K/V projections of the text "
                                                "embedding for the closed form to edit."),
                io.Clip.Input("clip", tooltip="The text encoder the MODEL is conditioned with (from the same "
                                              "checkpoint)."),
                io.String.Input("concepts", multiline=True, default="",
                                tooltip="Concepts to erase, one per line or comma-separated (each within the "
                                        "encoder's 75-token limit)."),
                io.String.Input("guide", default="",
                                tooltip="What the erased concepts should become; empty = 'nothing' (objects). Use "
                                        "e.g. 'art' for artistic styles."),
                io.String.Input("preserve", multiline=True, default="",
                                tooltip="Concepts to keep unchanged, one per line or comma-separated."),
                io.Float.Input("erase_scale", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Weight of the erase constraints (official 1)."),
                io.Float.Input("preserve_scale", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Weight of the preserve constraints (official 1)."),
                io.Float.Input("lam", default=0.5, min=0.0001, max=100.0, step=0.05,
                               tooltip="Regulariser toward the original weights (official 0.5): larger = gentler."),
            ],
            outputs=[io.Model.Output("erased_model", display_name="model",
                                     tooltip="A copy of the MODEL with the concepts erased (weight patches).")])

    @classmethod
    def execute(cls, model, clip, concepts="", guide="", preserve="", erase_scale=1.0, preserve_scale=1.0,
                lam=0.5) -> io.NodeOutput:
        refuse_dit(model, "model", UCE_ON_DIT)
        erase = parse_concepts(concepts)
        if not erase:
            raise ValueError("concepts: give at least one concept to erase")
        keep = parse_concepts(preserve)
        overlap = sorted(set(erase) & set(keep))
        if overlap:
            raise ValueError(f"preserve: {overlap} are also listed under concepts to erase")
        erase_scale = check_finite(erase_scale, "erase_scale", 0.0, 100.0)
        preserve_scale = check_finite(preserve_scale, "preserve_scale", 0.0, 100.0)
        lam = check_finite(lam, "lam", 1e-4, 100.0)
        pbar = comfy.utils.ProgressBar(1)  # over the K/V projections (total set by the adapter)
        out = uce_patched_model(model, clip, erase, guide.strip(), keep, lam, erase_scale, preserve_scale,
                                progress=lambda i, n: pbar.update_absolute(i, n))
        return io.NodeOutput(out)


class DiffEditorSafeGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffEditorSafeGuidance", display_name="DiffEditor Safe Guidance (SLD)",
            category=f"{CATEGORY}/erase",
            description="Safe Latent Diffusion: steers sampling away from a safety concept with one extra "
                        "conditional prediction per step, added after the MODEL's guidance (a post-CFG function): "
                        "cfg functions set by other nodes, before or after this one, keep working. Presets follow "
                        "the published weak / medium / strong / max settings. Guidance scale 0 is plain CFG, bit for "
                        "bit.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to guide (SD1.x, SD2, SDXL; eps prediction). Flux/SD3 "
                                                "DiTs are refused: the published settings are for eps-prediction "
                                                "CFG."),
                io.Conditioning.Input("safety", tooltip="The concept to steer away from (a CLIP Text Encode of "
                                                        "e.g. 'nudity, violence')."),
                io.Combo.Input("preset", options=["weak", "medium", "strong", "max", "custom"], default="medium",
                               tooltip="Published SLD settings; 'custom' uses the values below."),
                io.Int.Input("warmup_steps", default=10, min=0, max=1000,
                             tooltip="custom: steps before the safety term applies."),
                io.Float.Input("guidance_scale", default=1000.0, min=0.0, max=100000.0, step=1.0,
                               tooltip="custom: safety guidance scale (0 = plain CFG)."),
                io.Float.Input("threshold", default=0.01, min=-10.0, max=10.0, step=0.001,
                               tooltip="custom: where the prompt and safety predictions differ by less than this, "
                                       "the safety term acts."),
                io.Float.Input("momentum_scale", default=0.3, min=0.0, max=10.0, step=0.01,
                               tooltip="custom: momentum scale."),
                io.Float.Input("momentum_beta", default=0.4, min=0.0, max=1.0, step=0.01,
                               tooltip="custom: momentum decay."),
            ],
            outputs=[io.Model.Output("guided_model", display_name="model",
                                     tooltip="A copy of the MODEL with safe guidance after its CFG.")])

    @classmethod
    def execute(cls, model, safety, preset="medium", warmup_steps=10, guidance_scale=1000.0, threshold=0.01,
                momentum_scale=0.3, momentum_beta=0.4) -> io.NodeOutput:
        refuse_dit(model, "model", SLD_ON_DIT)
        check_conditioning(safety, "safety")
        if preset == "custom":
            try:
                config = SLDConfig(int(warmup_steps), check_finite(guidance_scale, "guidance_scale"),
                                   check_finite(threshold, "threshold"), check_finite(momentum_scale, "momentum_scale"),
                                   check_finite(momentum_beta, "momentum_beta", 0.0, 1.0))
            except ValueError as e:
                raise ValueError(f"custom SLD values: {e}") from None
        elif preset in SLD_PRESETS:
            config = SLD_PRESETS[preset]
        else:
            raise ValueError(f"preset: expected one of {sorted(SLD_PRESETS)} or custom, got {preset!r}")
        return io.NodeOutput(sld_model(model, safety, config))


ERASURE_NODES = [DiffEditorEraseConcept, DiffEditorSafeGuidance]
