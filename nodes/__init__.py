"""ComfyUI nodes (V3 schema). Thin: schema, validation, conversion and one engine call each.

``NODE_LIST`` is what the package's V3 entry point (``comfy_entrypoint`` in ``__init__``) registers.
"""
from .common import EDIT_TRAJECTORY, EditTrajectoryType
from .canvas import CANVAS_NODES
from .inversion import DiffEditorInvert, DiffEditorReconstruct
from .drag import DRAG_NODES
from .edit import EDIT_NODES
from .erasure import ERASURE_NODES
from .image_prompt import IMAGE_PROMPT_NODES
from .sampler import DiffEditorMaskedBlend, DiffEditorSampler
from .stability import STABILITY_NODES
from .warp import WARP_NODES

NODE_LIST = [DiffEditorInvert, DiffEditorReconstruct, DiffEditorSampler, DiffEditorMaskedBlend, *EDIT_NODES,
             *CANVAS_NODES, *WARP_NODES, *STABILITY_NODES, *ERASURE_NODES, *DRAG_NODES, *IMAGE_PROMPT_NODES]

__all__ = ["NODE_LIST", "EDIT_TRAJECTORY", "EditTrajectoryType"]
