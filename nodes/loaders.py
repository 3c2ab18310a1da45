"""Loader nodes: the FlashHead DiT, the video VAE and the wav2vec2 audio encoder.

Each lists what it finds in ComfyUI's model folders (COMBO values 'Model_Lite (flashhead/SoulX-FlashHead-1_3B)': the
name first, then where it is; the older form '<folder>/<relative path>' of saved workflows still loads), loads with
flashhead_core onto ComfyUI's offload device and hands back a (Core)ModelPatcher-wrapped object: ComfyUI moves it to
the GPU right before inference (`_host.load_to_device`) and evicts it when another model needs the memory. The DiT is
built with ComfyUI's casting layers (`_host.operations()`), so ComfyUI may also keep parts of it offloaded.
"""

from __future__ import annotations

import json

from ..flashhead_core import (AUDIO_DIR, AUDIO_WEIGHT_FILES, BACKENDS, DIT_WEIGHT_FILES, MODEL_DIRS, RELEASE_NAME,
                              VAE_DIRS, VAE_WAN_FILE, WEIGHT_DTYPES, is_scaled_fp8, load_dit, load_vae, load_wav2vec2)
from . import _host
from ._inputs import check_numbers
from ._io import CATEGORY, advanced, io
from ._wires import AudioEncoder, FlashHeadAudioEncoder, FlashHeadModel, FlashHeadVAE, Model, Vae

MODEL_DIR_NAMES = set(MODEL_DIRS.values())
VAE_DIR_NAMES = set(VAE_DIRS.values())

WHERE_DIT = (f"models/flashhead/ (the released folder, e.g. models/flashhead/{RELEASE_NAME}/{MODEL_DIRS['lite']}) "
             f"or models/diffusion_models/ (a single .safetensors file)")
WHERE_VAE = (f"models/flashhead/ (the released {VAE_DIRS['lite']}/ or {VAE_DIRS['pro']}/ folder, e.g. "
             f"models/flashhead/{RELEASE_NAME}/{VAE_DIRS['lite']}) or models/vae/ (a single file, e.g. "
             f"wan_2.1_vae.safetensors)")
WHERE_AUDIO = (f"models/flashhead/{RELEASE_NAME}/{AUDIO_DIR}/ or models/audio_encoders/ (the {AUDIO_DIR} folder, or "
               f"its weights as one .safetensors file)")


def _config_class(folder: str, directory: str) -> str | None:
    """The `_class_name` (diffusers) or `architectures[0]` (transformers) of a folder's config.json."""
    path = _host.full_path(folder, f"{directory}/config.json" if directory else "config.json")
    try:
        config = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return None
    return config.get("_class_name") or (config.get("architectures") or [None])[0]


def _basename(directory: str) -> str:
    return directory.rpartition("/")[2]


# --- what each loader lists ------------------------------------------------------------------------------------------

def dit_options() -> list[str]:
    """The released model folders (Model_Lite/, Model_Pro/), then single files in models/diffusion_models/. The
    checkpoint root that holds them is not listed (with variant 'auto' it would be ambiguous), though a workflow
    that names it with variant lite or pro still loads."""
    def is_dit_dir(directory: str, names: set[str]) -> bool:
        if "config.json" not in names or not names.intersection(DIT_WEIGHT_FILES):
            return False
        if _basename(directory) in MODEL_DIR_NAMES:
            return True
        return _basename(directory) not in VAE_DIR_NAMES and \
            _config_class(_host.FLASHHEAD_FOLDER, directory) == "WanModelAudioProject"

    model_dirs = [d for d in _host.released_dirs(_host.FLASHHEAD_FOLDER, is_dit_dir) if d]
    options = _host.model_options([(_host.FLASHHEAD_FOLDER, model_dirs),
                                   ("diffusion_models", _host.files_in("diffusion_models", _host.DIT_FILE_EXTENSIONS))])
    return options or _host.missing_option("FlashHead model", WHERE_DIT)


def vae_options() -> list[str]:
    """Released VAE folders (VAE_LTX/ with config.json + safetensors, VAE_Wan/ with Wan2.1_VAE.pth) under
    models/flashhead/, then single files in models/vae/."""
    def is_vae_dir(directory: str, names: set[str]) -> bool:
        name = _basename(directory)
        if name == VAE_DIRS["pro"] or (name not in MODEL_DIR_NAMES and VAE_WAN_FILE.name in names):
            return any(n.endswith((".pth", ".safetensors")) for n in names)
        if "config.json" in names and DIT_WEIGHT_FILES[0] in names:  # diffusers' weights file name
            return name == VAE_DIRS["lite"] or (name not in MODEL_DIR_NAMES and _config_class(
                _host.FLASHHEAD_FOLDER, directory) == "AutoencoderKLLTXVideo")
        return False

    dirs = [d for d in _host.released_dirs(_host.FLASHHEAD_FOLDER, is_vae_dir) if d]
    options = _host.model_options([(_host.FLASHHEAD_FOLDER, dirs),
                                   ("vae", _host.files_in("vae", _host.VAE_FILE_EXTENSIONS))])
    return options or _host.missing_option("FlashHead VAE", WHERE_VAE)


def _is_wav2vec2_dir(folder: str):
    def match(directory: str, names: set[str]) -> bool:
        if not names.intersection(AUDIO_WEIGHT_FILES):
            return False
        # ComfyUI's audio_encoders folder lists weight files only: look for config.json on disk.
        if "config.json" not in names and _host.full_path(folder, f"{directory}/config.json") is None:
            return False
        return "wav2vec2" in _basename(directory).lower() or \
            (_config_class(folder, directory) or "").startswith("Wav2Vec2")
    return match


def audio_encoder_options() -> list[str]:
    """wav2vec2 folders (transformers layout) under models/audio_encoders/ and models/flashhead/, then single files
    in models/audio_encoders/ (files inside a listed folder are not listed again)."""
    audio_dirs = _host.released_dirs("audio_encoders", _is_wav2vec2_dir("audio_encoders"))
    flashhead_dirs = [d for d in _host.released_dirs(_host.FLASHHEAD_FOLDER, _is_wav2vec2_dir(_host.FLASHHEAD_FOLDER))
                      if d]
    options = _host.model_options([
        (_host.FLASHHEAD_FOLDER, flashhead_dirs),
        ("audio_encoders", [d for d in audio_dirs if d]
         + _host.files_in("audio_encoders", _host.AUDIO_FILE_EXTENSIONS, exclude_dirs=audio_dirs)),
    ])
    return options or _host.missing_option("wav2vec2-base-960h audio encoder", WHERE_AUDIO)


def _validate(value: str, options: list[str], kind: str, where: str) -> bool | str:
    """VALIDATE_INPUTS body: True when the choice exists, else the message ComfyUI shows before anything runs
    (it replaces ComfyUI's bare 'Value not in list')."""
    if value.startswith(_host.MISSING_PREFIX):
        return f"no {kind} is installed. Put it in {where}, then refresh ComfyUI (press R) and pick it in the list."
    if value in options:
        return True
    try:
        _host.resolve_option(value, kind, where)
        return True
    except FileNotFoundError as e:
        return str(e)


# --- nodes ------------------------------------------------------------------------------------------------------------

class FlashHeadModelLoader(io.ComfyNode):
    """Loads the FlashHead DiT (Lite or Pro, detected from the weights)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadModelLoader", display_name="FlashHead Model Loader", category=CATEGORY,
            description=("Loads a SoulX-FlashHead DiT: the released folder (Model_Lite/ or Model_Pro/) from "
                         "models/flashhead/, or a single .safetensors file from models/diffusion_models/. Lite pairs "
                         "with the LTX VAE, Pro with the Wan2.1 VAE."),
            inputs=[  # this order is the V1 order: saved UI workflows store widget values by position
                io.Combo.Input("model", options=dit_options(), tooltip=f"Where: {WHERE_DIT}."),
                io.Combo.Input("variant", options=["auto", "lite", "pro"], default="auto", tooltip=(
                    "auto: read from the weights. lite or pro: insist on that variant (asking for the other variant "
                    "than the weights is an error)."), **advanced(io.Combo.Input)),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp16", "fp32"], default="auto", tooltip=(
                    "Compute dtype. auto: bf16 where the GPU supports it (as the official release runs), else fp16, "
                    "else fp32 (CPU)."), **advanced(io.Combo.Input)),
                io.Combo.Input("attention", options=["auto", *BACKENDS], default="auto", tooltip=(
                    "auto: the fastest exact kernel installed (flash-attn 3 on Hopper, then flash-attn 2, then "
                    "PyTorch SDPA). sage (SageAttention) is approximate and only used when chosen. Missing kernels "
                    "never break the pack; asking for one that is missing is an error naming what is available."),
                    **advanced(io.Combo.Input)),
                io.Boolean.Input("compile", default=False, tooltip=(
                    "torch.compile the DiT (the first chunk takes longer to compile, later chunks run faster; needs "
                    "a working compiler toolchain)."), **advanced(io.Boolean.Input)),
                # Added after the V1 nodes: last and optional, so older workflows (UI and API) load unchanged.
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", optional=True,
                               tooltip=("Storage dtype of the transformer blocks' Linear weights (about 94% of the "
                                        "DiT). default: the compute dtype. fp8_e4m3fn / fp8_e5m2: half the memory of "
                                        "bf16, upcast per layer at run time (slightly different frames). A scaled "
                                        "fp8 file loads as stored whatever this says."),
                               **advanced(io.Combo.Input)),
            ],
            outputs=[Model.Output(display_name="model", tooltip=(
                "The FlashHead DiT, managed by ComfyUI (moved to the GPU when used, offloaded in parts or evicted "
                "when memory is needed)."))],
        )

    @classmethod
    def validate_inputs(cls, model):
        return _validate(model, dit_options(), "FlashHead model", WHERE_DIT)

    @classmethod
    def execute(cls, model, variant, dtype, attention, compile, weight_dtype="default") -> io.NodeOutput:
        _host.require_host()
        check_numbers(cls, variant=variant, dtype=dtype, attention=attention, weight_dtype=weight_dtype)
        path = _host.resolve_option(model, "FlashHead model", WHERE_DIT)
        load_device, offload_device = _host.devices("dit")
        # A scaled fp8 file keeps the core's own layers (they carry its scales); ComfyUI's casting layers let it
        # keep any other DiT partly offloaded.
        offloadable = not is_scaled_fp8(path, variant)
        dit = load_dit(path, variant=variant, dtype=_host.compute_dtype(dtype, load_device), device=offload_device,
                       attention=attention, execution_device=load_device, weight_dtype=WEIGHT_DTYPES[weight_dtype],
                       **({"operations": _host.operations()} if offloadable else {}))
        if compile:
            dit.compile_blocks()
        return io.NodeOutput(FlashHeadModel(_host.make_patcher(dit, load_device, offload_device), model,
                                            offloadable=offloadable))


class FlashHeadVAELoader(io.ComfyNode):
    """Loads the video VAE: LTX-Video (for Lite) or Wan2.1 (for Pro)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadVAELoader", display_name="FlashHead VAE Loader", category=CATEGORY,
            description=("Loads FlashHead's video VAE: the released VAE_LTX/ (Lite) or VAE_Wan/ (Pro) folder from "
                         "models/flashhead/, or a single file from models/vae/ (e.g. wan_2.1_vae.safetensors)."),
            inputs=[
                io.Combo.Input("vae", options=vae_options(), tooltip=f"Where: {WHERE_VAE}."),
                io.Boolean.Input("tiled_decode", default=True, tooltip=(
                    "Decode frames larger than 512x512 in tiles (each with a halo as wide as the decoder sees): the "
                    "same frames as the whole-frame decode, with bounded memory, about 1.1-1.3x the time. Off: decode "
                    "whole frames."), **advanced(io.Boolean.Input)),
            ],
            outputs=[Vae.Output(display_name="vae", tooltip=(
                "The FlashHead video VAE (normalised-latent interface), managed by ComfyUI."))],
        )

    @classmethod
    def validate_inputs(cls, vae):
        return _validate(vae, vae_options(), "FlashHead VAE", WHERE_VAE)

    @classmethod
    def execute(cls, vae, tiled_decode) -> io.NodeOutput:
        _host.require_host()
        path = _host.resolve_option(vae, "FlashHead VAE", WHERE_VAE)
        load_device, offload_device = _host.devices("vae")
        # ComfyUI's casting layers, so it may keep part of the VAE offloaded; it computes on the load device.
        loaded = load_vae(path, device=offload_device, dtype=_host.vae_dtype(load_device), tiling=tiled_decode,
                          operations=_host.operations(), execution_device=load_device)
        return io.NodeOutput(FlashHeadVAE(_host.make_patcher(loaded.model, load_device, offload_device), loaded, vae))


class FlashHeadAudioEncoderLoader(io.ComfyNode):
    """Loads wav2vec2-base-960h, FlashHead's audio encoder (always float32)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadAudioEncoderLoader", display_name="FlashHead Audio Encoder Loader", category=CATEGORY,
            description=("Loads facebook/wav2vec2-base-960h: the transformers folder (config.json + "
                         "model.safetensors) from models/flashhead/ or models/audio_encoders/, or its weights as one "
                         "file in models/audio_encoders/."),
            inputs=[io.Combo.Input("audio_encoder", options=audio_encoder_options(), tooltip=f"Where: {WHERE_AUDIO}.")],
            outputs=[AudioEncoder.Output(display_name="audio_encoder", tooltip=(
                "FlashHead's wav2vec2 encoder (FlashHead's own feature path; ComfyUI's AudioEncoderLoader computes "
                "different features)."))],
        )

    @classmethod
    def validate_inputs(cls, audio_encoder):
        return _validate(audio_encoder, audio_encoder_options(), "audio encoder", WHERE_AUDIO)

    @classmethod
    def execute(cls, audio_encoder) -> io.NodeOutput:
        _host.require_host()
        path = _host.resolve_option(audio_encoder, "audio encoder", WHERE_AUDIO)
        load_device, offload_device = _host.devices("audio")
        encoder = load_wav2vec2(path, device=offload_device)  # float32 always (docs/algorithm.md#audio-features)
        return io.NodeOutput(FlashHeadAudioEncoder(_host.make_patcher(encoder.model, load_device, offload_device),
                                                   encoder, audio_encoder))
