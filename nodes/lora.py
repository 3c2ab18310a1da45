"""FlashHead LoRA Loader: a LoRA on the DiT, chainable (model in, model out), with a strength per LoRA.

The LoRA file (ComfyUI's models/loras/) is read and checked against the DiT by flashhead_core.lora: PEFT/diffusers
(lora_A/lora_B), kohya (lora_down/lora_up + alpha), the diffusion_model. prefix, diffusers' Wan module names and
diff/diff_b. Keys for modules FlashHead lacks (text encoder, img_emb, k_img/v_img) are skipped with a warning in the
log; keys that match nothing else, or wrong shapes, are an error before anything runs.

The input model is never changed (ComfyUI caches it): the node returns a clone of its ModelPatcher with patches that
ComfyUI applies when it loads the model and removes when it unloads it:
- low-rank pairs as object patches: each Linear is swapped for a `LoRALinear` (the same Linear plus the rank-r path,
  computed on the fly). Exact with fp8 and scaled fp8 weights (nothing is rounded into 3 mantissa bits, the scale is
  the layer's own), works when ComfyUI keeps part of the DiT offloaded, and keeps no backup copy of the patched
  weights (a merge backs up every patched weight: ~2.6 GB for all of the 1.3B DiT's Linears in bf16); the cost is
  2r/width more matmul work per patched Linear (about 4% at rank 32);
- full deltas (diff, diff_b: norms, biases) as ComfyUI weight patches ("diff"), merged by ComfyUI on load.
"""

from __future__ import annotations

import dataclasses
import logging

from ..flashhead_core import LoRAError, LoRALinear, low_rank_terms, read_lora
from . import _host
from ._inputs import check_numbers
from ._io import CATEGORY, io
from ._wires import Model

log = logging.getLogger(__name__)
LORA_FOLDER = "loras"
WHERE_LORA = "models/loras/ (a .safetensors LoRA for Wan 2.1 1.3B or FlashHead)"
PREFIX = "inner."  # the DiT is patcher.model.inner (_host.PatcherHolder)


def lora_options() -> list[str]:
    return _host.files_in(LORA_FOLDER, (".safetensors",)) or _host.missing_option("LoRA", WHERE_LORA)


def patched_model(model, lora):
    """A new FlashHeadModel: `model`'s patcher cloned, with `lora` (a flashhead_core LoRA read against model.dit) as
    object patches (low-rank pairs) and weight patches (diff, diff_b)."""
    patcher = model.patcher.clone()
    dit = model.dit
    modules = dict(dit.named_modules())
    diffs = {}
    for name, patch in lora.patches.items():
        layer = modules[name]
        if patch.diff is not None or patch.diff_b is not None:
            if getattr(layer, "scale_weight", None) is not None:
                raise LoRAError(f"{lora.name}: {name} is a scaled fp8 layer and the LoRA holds a full weight delta "
                                f"(.diff) for it: load a bf16/fp16 model file instead (weight_dtype fp8 is fine)")
            if patch.diff is not None:
                diffs[f"{PREFIX}{name}.weight"] = ("diff", (patch.diff.reshape(layer.weight.shape),))
            if patch.diff_b is not None:
                diffs[f"{PREFIX}{name}.bias"] = ("diff", (patch.diff_b,))
        terms = low_rank_terms(lora, name)
        if not terms:
            continue
        key = PREFIX + name
        current = patcher.get_model_object(key)
        if isinstance(current, LoRALinear):  # an earlier LoRA in the chain (or one left swapped in): extend it
            terms, current = current.terms + terms if key in patcher.object_patches else terms, current.base
        patcher.add_object_patch(key, LoRALinear(current, terms))
    if diffs:
        patcher.add_patches(diffs, strength_patch=lora.strength)
    return dataclasses.replace(model, patcher=patcher, source=f"{model.source} + {lora.name}")


class FlashHeadLoraLoader(io.ComfyNode):
    """Applies a LoRA to the FlashHead DiT; chain several, each with its own strength."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadLoraLoader", display_name="FlashHead LoRA Loader", category=CATEGORY,
            description=("Applies a LoRA from models/loras/ to the FlashHead DiT (Wan-2.1 1.3B layout: PEFT/diffusers, "
                         "kohya and ComfyUI key formats). Chain several loaders for several LoRAs. The LoRA runs "
                         "beside the weights (exact with fp8 weights); the input model is left unchanged."),
            inputs=[
                Model.Input("model", tooltip="From FlashHead Model Loader or another FlashHead LoRA Loader."),
                io.Combo.Input("lora_name", options=lora_options(), tooltip=f"Where: {WHERE_LORA}."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05, tooltip=(
                    "How strongly the LoRA applies: 1 as trained, 0 off, negative inverts it.")),
            ],
            outputs=[Model.Output(display_name="model", tooltip=(
                "The FlashHead DiT with the LoRA (ComfyUI applies it when the model loads, removes it after)."))],
        )

    @classmethod
    def validate_inputs(cls, lora_name):
        if lora_name.startswith(_host.MISSING_PREFIX):
            return f"no LoRA is installed. Put it in {WHERE_LORA}, then refresh ComfyUI (press R) and pick it."
        if _host.full_path(LORA_FOLDER, lora_name) is None:
            return f"LoRA {lora_name!r} not found in {WHERE_LORA}; refresh ComfyUI (press R) and pick it in the list"
        return True

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        _host.require_host()
        check_numbers(cls, strength=strength)
        path = _host.full_path(LORA_FOLDER, lora_name)
        if path is None:
            raise LoRAError(f"LoRA {lora_name!r} not found in {WHERE_LORA}: put it there, refresh ComfyUI (press R) "
                            f"and pick it in the list")
        lora = read_lora(path, model.dit, strength)
        if lora.skipped:
            log.warning("FlashHead LoRA %s: skipped %d keys for modules the FlashHead DiT does not have: %s",
                        lora.name, len(lora.skipped), ", ".join(lora.skipped[:8]))
        return io.NodeOutput(patched_model(model, lora))
