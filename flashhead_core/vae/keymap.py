"""Renaming between the original Wan / LTX-Video checkpoint key layouts and diffusers' layout, and the check of a
diffusers config.json against the arguments inferred from the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError


@dataclass(frozen=True)
class KeyMap:
    """One-to-one renaming between an original checkpoint layout and diffusers' layout.

    `blocks` pairs (original prefix, diffusers prefix); a prefix ending in '.' names a module, one without names a
    whole key. Inside a matched module, `leaves` renames the remaining path (original, diffusers). Keys matching no
    block keep their name."""

    blocks: tuple[tuple[str, str], ...]
    leaves: tuple[tuple[str, str], ...] = ()

    def to_diffusers(self, key: str) -> str:
        return _rename(key, self.blocks, self.leaves)

    def to_original(self, key: str) -> str:
        return _rename(key, tuple((b, a) for a, b in self.blocks), tuple((b, a) for a, b in self.leaves))


def _rename(key: str, blocks: tuple[tuple[str, str], ...], leaves: tuple[tuple[str, str], ...]) -> str:
    matches = [(a, b) for a, b in blocks if key == a or (a.endswith(".") and key.startswith(a))]
    if not matches:
        return key
    old, new = max(matches, key=lambda pair: len(pair[0]))
    rest = "." + key[len(old):]
    for a, b in leaves:
        rest = rest.replace("." + a, "." + b)
    return new + rest[1:]


def check_config_json(config_json: dict | None, kwargs: dict, class_name: str, what: str) -> None:
    """A diffusers config.json must name `class_name` and agree with the arguments inferred from the weights."""
    if config_json is None:
        return
    if config_json.get("_class_name") != class_name:
        raise CheckpointError(f"config.json is for {config_json.get('_class_name')!r}, expected {class_name} "
                              f"({what})")
    for key, ours in kwargs.items():
        stated = config_json.get(key)
        if stated is not None and (list(ours) if isinstance(ours, tuple) else ours) != stated:
            raise CheckpointError(f"config.json says {key}={stated}, but {what} needs {key}="
                                  f"{list(ours) if isinstance(ours, tuple) else ours}")
