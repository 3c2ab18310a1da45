"""ComfyUI-FlashHead: ComfyUI entry point. ComfyUI imports this folder as a package and reads
NODE_CLASS_MAPPINGS. Relative imports only, so our `nodes/` never shadows ComfyUI's own `nodes` module."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
