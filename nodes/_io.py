"""The V3 side of the nodes: the pinned node API (comfy_api.v0_0_2); FlashHead's wires on it are in _wires.py.

The node modules import `io` and `ui` from here, so the pinned version is named once. This is ComfyUI's public,
versioned node API (what the schemas are written in), not its internals: those (comfy.*, folder_paths) stay in
_host.py. Importing this module outside ComfyUI fails; the pack's root __init__ imports the nodes only where
`_host.host_problem()` says the host can run them.
"""

from __future__ import annotations

import inspect

from comfy_api.v0_0_2 import ComfyExtension, InputImpl, io, ui  # noqa: F401  (re-exported for the node modules)

CATEGORY = "FlashHead"

_ADVANCED: dict[type, bool] = {}


def advanced(input_class: type) -> dict:
    """{'advanced': True} where this host's `input_class` (e.g. io.Combo.Input) accepts it (ComfyUI 0.33: the
    input is folded under the node's advanced inputs), else {} (0.3.64 has no such option). Inspected once per
    class."""
    if input_class not in _ADVANCED:
        _ADVANCED[input_class] = "advanced" in inspect.signature(input_class.__init__).parameters
    return {"advanced": True} if _ADVANCED[input_class] else {}
