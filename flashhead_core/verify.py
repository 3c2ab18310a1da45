"""Parity with the official implementation: replay `../shared/reference` fixtures and check manifests.

`flashhead verify FILE...` takes fixture `.safetensors` files (each with its `.json` beside it) and manifest `.json`
files. Every fixture case and every manifest model has one runner registered below; an unknown one fails loudly.
Each result is one JSON line: {"file", "case", "rel": {output: rel error}, "limit", "ok"}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

MODULE_LIMIT = 1e-5  # single modules (DiT forward, VAE, audio encoder, colour correction, resize)
PIPELINE_LIMIT = 1e-4  # multi-step pipeline outputs


@dataclass
class Fixture:
    """One golden fixture: tensors from `<case>.safetensors` and the metadata from `<case>.json`."""

    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @classmethod
    def load(cls, path: str | Path) -> "Fixture":
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(path=path, meta=meta, tensors=load_file(str(path)))

    @property
    def case(self) -> str:
        return self.meta.get("case", self.path.stem)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors whose name starts with `prefix`, with the prefix removed (e.g. group('weights.'))."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| over the whole tensor, in float64."""
    if tuple(ours.shape) != tuple(ref.shape):
        raise ValueError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    diff = (ours - ref).norm().item()
    return diff / denom if denom > 0 else diff


# A fixture runner returns {output name: (ours, reference)} and the limit that applies to it.
FixtureRunner = Callable[[Fixture], dict[str, tuple[torch.Tensor, torch.Tensor]]]
FIXTURE_RUNNERS: dict[str, tuple[FixtureRunner, float]] = {}
# A manifest checker returns a list of problems (empty = the manifest matches our classes).
ManifestChecker = Callable[[dict], list[str]]
MANIFEST_CHECKERS: dict[str, ManifestChecker] = {}


def fixture_runner(case: str, limit: float = MODULE_LIMIT):
    def register(fn: FixtureRunner) -> FixtureRunner:
        FIXTURE_RUNNERS[case] = (fn, limit)
        return fn

    return register


def manifest_checker(name: str):
    def register(fn: ManifestChecker) -> ManifestChecker:
        MANIFEST_CHECKERS[name] = fn
        return fn

    return register


def compare_state_dict_shapes(manifest: dict, ours: dict[str, torch.Size], ignored_prefixes=()) -> list[str]:
    """Problems between a manifest's `params`+`buffers` and our {key: shape}; manifest keys under
    `ignored_prefixes` (weights the forward never uses) may be absent from ours."""
    theirs = {k: tuple(v[:-1]) for k, v in {**manifest.get("params", {}), **manifest.get("buffers", {})}.items()}
    problems = []
    for key, shape in theirs.items():
        if key not in ours:
            if not key.startswith(tuple(ignored_prefixes)):
                problems.append(f"missing in ours: {key} {list(shape)}")
        elif tuple(ours[key]) != shape:
            problems.append(f"shape of {key}: ours {list(ours[key])} vs manifest {list(shape)}")
    problems += [f"not in manifest: {k} {list(ours[k])}" for k in ours if k not in theirs]
    return problems


def verify_file(path: str | Path) -> dict:
    """Check one fixture (.safetensors) or manifest (.json). Never raises for a failing check: ok=False."""
    path = Path(path)
    _register_all()
    if path.suffix == ".safetensors":
        fixture = Fixture.load(path)
        if fixture.case not in FIXTURE_RUNNERS:
            return {"file": path.name, "case": fixture.case, "ok": False,
                    "error": f"unknown fixture case {fixture.case!r}; known: {sorted(FIXTURE_RUNNERS)}"}
        runner, limit = FIXTURE_RUNNERS[fixture.case]
        with torch.no_grad():
            pairs = runner(fixture)
        rel = {name: rel_error(ours, ref) for name, (ours, ref) in pairs.items()}
        ok = bool(rel) and all(math.isfinite(r) and r < limit for r in rel.values())
        return {"file": path.name, "case": fixture.case, "rel": rel, "limit": limit, "ok": ok}
    if path.suffix == ".json":
        manifest = json.loads(path.read_text())
        if "state_dict_keys_in_order" not in manifest:
            return {"file": path.name, "ok": False,
                    "error": "not a manifest; for a fixture pass its .safetensors file"}
        name = path.stem
        if name not in MANIFEST_CHECKERS:
            return {"file": path.name, "case": name, "ok": False,
                    "error": f"unknown manifest {name!r}; known: {sorted(MANIFEST_CHECKERS)}"}
        problems = MANIFEST_CHECKERS[name](manifest)
        return {"file": path.name, "case": name, "keys": len(manifest["state_dict_keys_in_order"]),
                "problems": problems[:20], "ok": not problems}
    return {"file": path.name, "ok": False, "error": "expected a fixture .safetensors or a manifest .json"}


def _register_all() -> None:
    """Import the modules that register runners (kept lazy so `import flashhead_core` stays light)."""
    from . import verify_cases  # noqa: F401
