"""ComfyUI-DiffEditor: diffusion image editing (DiffEditor, DragonDiffusion and friends) as ComfyUI nodes.

The engine (``samplers/``, ``guidance/``) is plain torch. Host adapters live in ``adapters/``. Nodes are
registered only when ComfyUI's V3 API is importable, so the package imports cleanly anywhere (CI, diffusers
pipelines).
"""
__version__ = "0.1.0"

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:  # ComfyUI present?
    import comfy_api.latest  # noqa: F401
    _HAS_COMFY = True
except Exception:  # pragma: no cover - depends on the host
    _HAS_COMFY = False

if _HAS_COMFY:
    from .nodes import NODE_LIST as _NODE_LIST

    for _cls in _NODE_LIST:
        _schema = _cls.define_schema()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name or _schema.node_id

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
