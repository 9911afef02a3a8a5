"""ComfyUI-DiffEditor: diffusion image editing (DiffEditor, DragonDiffusion and friends) as ComfyUI nodes.

The engine (``samplers/``, ``guidance/``) is plain torch. Host adapters live in ``adapters/``. Inside ComfyUI
the nodes are registered through the V3 entry point :func:`comfy_entrypoint`; elsewhere (CI, headless
diffusers pipelines) the package imports without ComfyUI and exposes no nodes. Only the absence of ComfyUI
is tolerated: an error while importing the nodes themselves propagates, so a broken install fails loudly in
ComfyUI's log instead of loading as a pack with zero nodes.
"""
__version__ = "0.1.0"

#: the front-end extension (plain ES modules) that ComfyUI serves for this pack
WEB_DIRECTORY = "./web"

try:  # ComfyUI present?
    from comfy_api.latest import ComfyExtension
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import NODE_LIST

    class DiffEditorExtension(ComfyExtension):
        """The pack's V3 extension: every DiffEditor node."""

        async def get_node_list(self):
            return list(NODE_LIST)

    async def comfy_entrypoint() -> ComfyExtension:
        return DiffEditorExtension()

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    __all__ = ["WEB_DIRECTORY"]
