"""The shipped workflows' example inputs, placed where ComfyUI's LoadImage and LoadAudio find them.

The workflows in workflows/ name a portrait and a speech clip that the pack ships (workflows/inputs/, licences in
its LICENSE.md), so a first Run needs only the model files. LoadImage and LoadAudio read only ComfyUI's input
folder, and the template browser copies nothing of a custom node's templates there, so the pack copies each file
into it when ComfyUI loads the pack: only where no file of that name exists (a user's file is never replaced or
touched), names prefixed `flashhead_example_` so they do not meet a user's own files. A folder that cannot be
written is reported in the log; the pack loads anyway (the workflows then ask for a portrait and speech).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import _host

log = logging.getLogger(__name__)
EXAMPLE_INPUTS = Path(__file__).resolve().parent.parent / "workflows" / "inputs"
SUFFIXES = (".jpg", ".png", ".wav")


def install_example_inputs(folder: Path | None = None) -> list[str]:
    """Copy each example input that `folder` (default: ComfyUI's input folder) lacks -> the names copied."""
    folder = _host.input_folder() if folder is None else folder
    copied = []
    for source in sorted(p for p in EXAMPLE_INPUTS.glob("*") if p.suffix in SUFFIXES):
        target = folder / source.name
        if target.exists():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(source.name)
        except OSError as e:
            log.warning("FlashHead: could not copy the example input %s into %s (%s); the example workflows will "
                        "ask for a portrait and speech of your own", source.name, folder, e)
            break
    return copied
