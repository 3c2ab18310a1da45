"""The fixture runners and manifest checkers behind `flashhead verify`, one section per module.

A fixture runner gets a `Fixture` (its `weights.*`, `input.*`, `output.*` tensors and JSON metadata), builds our own
module from the JSON config, loads `weights.*` through our own loader, runs the case and returns
{output name: (ours, reference)}. A manifest checker builds the full-size model on the meta device with our own
classes and returns the list of key/shape problems.
"""

from __future__ import annotations

import torch

from .verify import Fixture, PIPELINE_LIMIT, compare_state_dict_shapes, fixture_runner, manifest_checker  # noqa: F401
