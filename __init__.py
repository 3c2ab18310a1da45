"""ComfyUI-FlashHead: ComfyUI entry point (V3 node API: `comfy_entrypoint`, pinned to comfy_api.v0_0_2).

ComfyUI imports this folder as a package and, finding `comfy_entrypoint` (and no NODE_CLASS_MAPPINGS, which would
send it down the V1 path), registers the nodes of nodes/extension.py. Imports are relative, so our `nodes/` never
shadows ComfyUI's own `nodes` module and the bundled `flashhead_core` is the one used.

- In a ComfyUI that is too old (no comfy_api.v0_0_2), one line in the log names the minimum version and the pack
  registers nothing (no traceback).
- Outside ComfyUI the import works quietly (the nodes cannot run there: `comfy_entrypoint()` raises HostUnavailable);
  use `flashhead_core` or the `flashhead` command instead.
"""

import logging

from .nodes import _host

WEB_DIRECTORY = "./web"  # web/flashhead.js: the Talking Video node shows its finished video

_problem = _host.host_problem()
if _problem is None:
    try:
        from .nodes.extension import comfy_entrypoint
    except ModuleNotFoundError as e:
        if not e.name or e.name.startswith(__name__):  # a module of this pack itself: a bug, keep the traceback
            raise
        raise ModuleNotFoundError(
            f"ComfyUI-FlashHead needs the Python package '{e.name}', which ComfyUI's Python lacks. Install the pack's "
            f"requirements into the Python that runs ComfyUI (<that python> -m pip install -r requirements.txt; "
            f"ComfyUI-Manager does this when it installs the pack) and restart ComfyUI.", name=e.name) from e
elif _host.IN_COMFYUI:
    logging.getLogger(__name__).error(_problem)  # ComfyUI then skips the pack: it has no entry point
else:
    def comfy_entrypoint():
        raise _host.HostUnavailable(f"{_problem}; for plain Python use flashhead_core or the `flashhead` command")

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
