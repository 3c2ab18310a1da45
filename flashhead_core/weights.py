"""Reading weights without materialising random ones: lazy safetensors sources, key/shape checks and the
meta-device builder shared by the DiT, the VAEs and the tests' tiny models.

    source = SafetensorsSource([file])                     # shapes from the headers, tensors on demand
    model = build_on_meta(lambda: Net(cfg), source, device="cuda", dtype=torch.bfloat16, what="a Net")
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import CheckpointError


class SafetensorsSource:
    """Lazy view of one or more safetensors files: shapes from the headers, tensors read on demand."""

    def __init__(self, files: Iterable[Path]):
        self.files = [Path(f) for f in files]
        self._file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in self.files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        self._file_of[key] = file
                        self.shapes[key] = tuple(f.get_slice(key).get_shape())
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"cannot read {file}: {e}. The file is truncated or not a safetensors file; "
                                      f"download it again.") from e

    def get(self, key: str) -> torch.Tensor:
        file = self._file_of[key]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"cannot read tensor {key} from {file}: {e}. Download the file again.") from e


class DictSource:
    """An in-memory state dict seen through the same interface (fixtures, tests)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]


def key_problems(expected: dict[str, tuple[int, ...]], present: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches between a model's state dict and a checkpoint."""
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    wrong = [f"{k}: file {list(present[k])} vs model {list(expected[k])}"
             for k in sorted(set(expected) & set(present)) if tuple(present[k]) != tuple(expected[k])]
    problems = [f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")] if missing else []
    problems += [f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else "")] \
        if unexpected else []
    problems += [f"shape mismatches: {'; '.join(wrong[:5])}"] if wrong else []
    return problems


def require_keys(shapes: dict[str, tuple[int, ...]], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in shapes]
    if missing:
        raise CheckpointError(f"checkpoint does not match {what}: missing keys: {', '.join(missing)}")


def build_on_meta(factory: Callable[[], nn.Module], source: SafetensorsSource | DictSource | dict[str, torch.Tensor],
                  *, device: torch.device | str, dtype: torch.dtype, what: str, file_names: Callable[[str], str] = str,
                  skip_prefixes: tuple[str, ...] = (), dtypes: dict[str, torch.dtype] | None = None) -> nn.Module:
    """Construct `factory()` on the meta device, check the source's keys and shapes against it (before reading any
    tensor) and assign its tensors one by one, cast to `dtype` (or `dtypes[key]` where given) on `device`: peak
    memory is one copy of the weights.

    Keys under `skip_prefixes` are ignored. Problems are reported with `file_names(key)`, the file's own names.
    device "meta" builds a weightless model for shape checks."""
    source = DictSource(source) if isinstance(source, dict) else source
    with torch.device("meta"):
        model = factory()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    present = {k: s for k, s in source.shapes.items() if not k.startswith(skip_prefixes)}
    problems = key_problems({file_names(k): s for k, s in expected.items()},
                            {file_names(k): s for k, s in present.items()})
    if problems:
        raise CheckpointError(f"checkpoint does not match {what}: " + " | ".join(problems))
    dtypes = dtypes or {}
    state = {k: source.get(k).to(device=device, dtype=dtypes.get(k, dtype)) for k in expected}
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval().requires_grad_(False)
