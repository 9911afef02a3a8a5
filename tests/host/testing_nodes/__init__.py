"""Test-only ComfyUI nodes for the server smoke test (there is no small CLIP to make CONDITIONING)."""
import torch


class DiffEditorTestRandomConditioning:
    CATEGORY = "DiffEditor/testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    DESCRIPTION = "Random SD1.x-shaped conditioning (test only)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1}),
                             "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})}}

    def make(self, seed, scale):
        g = torch.Generator().manual_seed(seed)
        c = torch.randn(1, 77, 768, generator=g) * scale
        return ([[c, {"pooled_output": torch.randn(1, 768, generator=g)}]],)


NODE_CLASS_MAPPINGS = {"DiffEditorTestRandomConditioning": DiffEditorTestRandomConditioning}
