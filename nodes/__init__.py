"""ComfyUI node adapters over flashhead_core. Each module adapts ComfyUI types and calls into the core."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
