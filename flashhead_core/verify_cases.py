"""The fixture runners and manifest checkers behind `flashhead verify`, one section per module.

A fixture runner gets a `Fixture` (its `weights.*`, `input.*`, `output.*` tensors and JSON metadata), builds our own
module from the JSON config, loads `weights.*` through our own loader, runs the case and returns
{output name: (ours, reference)}. A manifest checker builds the full-size model on the meta device with our own
classes and returns the list of key/shape problems.
"""

from __future__ import annotations

import torch

from .verify import Fixture, PIPELINE_LIMIT, compare_state_dict_shapes, fixture_runner, manifest_checker  # noqa: F401


# --- DiT -----------------------------------------------------------------------------------------------------------

def _dit_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One DiT forward: weights through our loader (config from shapes, heads from the JSON), then compare."""
    from .checkpoint import DictSource, build_dit, config_from_shapes

    source = DictSource(fixture.group("weights."))
    config = config_from_shapes(source.shapes, fixture.meta["config"])
    model = build_dit(config, source, attention="sdpa")
    x, y = fixture.tensors["input.x"], fixture.tensors["input.y"]
    audio_tokens = model.audio_proj(fixture.tensors["input.context"])
    flow = model(x, fixture.tensors["input.timestep"], y, audio_tokens)
    return {"flow_pred": (flow, fixture.tensors["output.flow_pred"]),
            "audio_context_tokens": (audio_tokens, fixture.tensors["output.audio_context_tokens"])}


fixture_runner("dit_forward_wan")(_dit_case)
fixture_runner("dit_forward_ltx")(_dit_case)


def _dit_manifest(manifest: dict) -> list[str]:
    """Build the full-size DiT on the meta device from the manifest's config and compare keys/shapes."""
    from .checkpoint import UNUSED_PREFIXES, config_from_shapes
    from .model import FlashHeadDiT

    shapes = {k: tuple(v[:-1]) for k, v in manifest["params"].items()}
    config = config_from_shapes(shapes, manifest["config"])
    with torch.device("meta"):
        model = FlashHeadDiT(config)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    problems = compare_state_dict_shapes(manifest, ours, ignored_prefixes=UNUSED_PREFIXES)
    unused = set(manifest.get("unused_in_forward", []))
    if unused != {p + "*" for p in UNUSED_PREFIXES}:
        problems.append(f"manifest lists unused weights {sorted(unused)}, we skip {list(UNUSED_PREFIXES)}")
    return problems


manifest_checker("dit_lite")(_dit_manifest)
manifest_checker("dit_pro")(_dit_manifest)


# --- image: colour correction and the reference resize --------------------------------------------------------------

@fixture_runner("color_correction")
def _color_correction_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """match_colors at every strength in the JSON; output.strength_1_0 holds strength 1.0."""
    from .image import match_colors

    source, reference = fixture.tensors["input.source"], fixture.tensors["input.reference"]
    pairs = {}
    for strength in fixture.meta["strengths"]:
        name = "strength_" + str(float(strength)).replace(".", "_")
        pairs[name] = (match_colors(source, reference, strength), fixture.tensors[f"output.{name}"])
    return pairs


@fixture_runner("resize_and_centercrop")
def _resize_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every sub-case through the PIL path (uint8 image) and the tensor path (float [3, h, w], nearest)."""
    from PIL import Image

    from .image import resize_and_centercrop

    pairs = {}
    for case in fixture.meta["cases"]:
        name, (height, width) = case["name"], case["target_hw"]
        pixels = fixture.tensors[f"input.{name}.image_uint8_hwc"]
        inputs = {"pil_path": Image.fromarray(pixels.numpy()), "tensor_path": pixels.permute(2, 0, 1).float()}
        for path, image in inputs.items():
            pairs[f"{name}.{path}"] = (resize_and_centercrop(image, height, width),
                                       fixture.tensors[f"output.{name}.{path}"])
    return pairs
