"""ComfyUI-FlashHead: ComfyUI entry point (V1 node API: NODE_CLASS_MAPPINGS).

ComfyUI imports this folder as a package. Imports are relative, so our `nodes/` never shadows ComfyUI's own `nodes`
module and the bundled `flashhead_core` is the one used. Outside ComfyUI the import works too (the nodes simply
cannot run there); use `flashhead_core` or the `flashhead` command instead.
"""

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as e:
    if not e.name or e.name.startswith(__name__):  # a module of this pack itself: a bug, keep the traceback
        raise
    raise ModuleNotFoundError(
        f"ComfyUI-FlashHead needs the Python package '{e.name}', which ComfyUI's Python lacks. Install the pack's "
        f"requirements into the Python that runs ComfyUI (<that python> -m pip install -r requirements.txt; "
        f"ComfyUI-Manager does this when it installs the pack) and restart ComfyUI.", name=e.name) from e

WEB_DIRECTORY = "./web"  # web/flashhead.js: the Talking Video node shows its finished video
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
