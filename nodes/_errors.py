"""A FlashHead error as ComfyUI's error panel shows it: the sentence that helps, not the folder the pack lives in.

ComfyUI reports a node's exception as `exception_type`, the class's module and name (execution.py `full_type_name`;
only "builtins" is left out), and `exception_message`, its text. Frontend 1.49 and later show
"<exception_type>: <exception_message>" in the error panel, and a custom node's modules are named after the pack's
full path ("/.../custom_nodes/ComfyUI-FlashHead.flashhead_core.errors"), so about 130 characters of path came
before the sentence. At the node boundary a FlashHeadError leaves as the same error (same message, traceback and
cause) in a subclass of its own class that ComfyUI names by the class name alone: the panel reads
"InputError: seed must be ...". It still is an InputError for anyone who catches one. Frontend 1.27 shows the message
alone under the node's name (unchanged). Anything that is not a FlashHeadError is a bug and keeps its full name.
"""

from __future__ import annotations

import functools

from ..flashhead_core import FlashHeadError

_SHOWN: dict[type, type] = {}


def shown_class(cls: type[FlashHeadError]) -> type[FlashHeadError]:
    """The subclass of `cls` that ComfyUI names "<cls.__name__>" (one per class, made once)."""
    if cls not in _SHOWN:
        _SHOWN[cls] = type(cls.__name__, (cls,), {"__module__": "builtins", "__qualname__": cls.__qualname__,
                                                  "__doc__": cls.__doc__})
    return _SHOWN[cls]


def plain_errors(node: type) -> type:
    """`node` (a V3 ComfyNode class) with its `execute` re-raising FlashHeadErrors as `shown_class` instances."""
    execute = node.execute.__func__

    @functools.wraps(execute)
    def wrapped(cls, *args, **kwargs):
        try:
            return execute(cls, *args, **kwargs)
        except FlashHeadError as error:
            if type(error).__module__ != "builtins":
                error.__class__ = shown_class(type(error))
            raise

    node.execute = classmethod(wrapped)
    return node
