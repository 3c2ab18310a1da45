"""Checks of a node's inputs before it runs. ComfyUI's own validation lets NaN and infinity through (they fail no
min/max comparison), and the API can send them; ComfyUI 0.3.64 does not check a V3 node's COMBO values against its
options at all (0.33 does). Every node checks its INT/FLOAT/COMBO inputs against their widget first, so a bad value
reads the same in every host."""

from __future__ import annotations

from ..flashhead_core import check_range, InputError


def check_numbers(node: type, **values) -> None:
    """Each of `values` that is an INT or FLOAT input of `node` must be a finite number within its widget's min..max
    (INT: a whole number), and each COMBO value one of its options, else InputError naming the input, the value and
    the range or the choices."""
    spec = node.INPUT_TYPES()
    for name, value in values.items():
        kind, options = {**spec.get("required", {}), **spec.get("optional", {})}[name]
        if kind == "COMBO" or isinstance(kind, list):
            choices = options.get("options", kind if isinstance(kind, list) else [])
            if value not in choices:
                raise InputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
            continue
        if kind not in ("INT", "FLOAT"):
            continue
        check_range(value, name, options.get("min", float("-inf")), options.get("max", float("inf")))
        if kind == "INT" and value != int(value):
            raise InputError(f"{name} must be a whole number, got {value}")
