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

try:  # ComfyUI present? Only the absence of its API package itself means "no".
    import comfy_api  # noqa: F401
except ImportError as _e:
    if getattr(_e, "name", None) != "comfy_api":  # something else failed while importing it: a broken install
        raise
    ComfyExtension = None
else:  # inside ComfyUI: anything missing from here on is a broken or too old ComfyUI, and must say so
    try:
        from comfy_api.latest import ComfyExtension
    except ImportError as _e:
        raise ImportError(f"ComfyUI-DiffEditor needs ComfyUI's V3 node API (comfy_api.latest, ComfyUI >= 0.3.64); "
                          f"importing it failed: {_e}") from _e

# ``__package__`` is empty only when this file is imported as a plain module rather than as the pack: pytest
# does that when it collects the repository root (a folder with an ``__init__.py``) and the folder's name is
# not an identifier, e.g. ``ComfyUI-DiffEditor``. ComfyUI and ``pack_loader`` always import it as a package.
if ComfyExtension is not None and __package__:
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
