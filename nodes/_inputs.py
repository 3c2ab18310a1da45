"""Checks of a node's numeric inputs. ComfyUI's own validation lets NaN and infinity through (they fail no min/max
comparison), and the API can send them; every node checks its INT/FLOAT inputs against their widget range first."""

from __future__ import annotations

from ..flashhead_core.errors import InputError, check_range


def check_numbers(node: type, **values) -> None:
    """Each of `values` that is an INT or FLOAT input of `node` must be a finite number within its widget's min..max
    (INT: a whole number), else InputError naming the input, the value and the range."""
    for name, value in values.items():
        kind, options = node.INPUT_TYPES()["required"][name]
        if kind not in ("INT", "FLOAT"):
            continue
        check_range(value, name, options.get("min", float("-inf")), options.get("max", float("inf")))
        if kind == "INT" and value != int(value):
            raise InputError(f"{name} must be a whole number, got {value}")
