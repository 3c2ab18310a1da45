"""wav2vec2-base-960h as FlashHead hears speech: one feature vector per video frame and transformer layer.

    encoder = load_wav2vec2("wav2vec2-base-960h")          # transformers' Wav2Vec2Model, float32, eval
    features = encoder.encode(samples)                     # [n, 12, 768], n = int(N * 25 / 16000) video frames

wav2vec2 always runs in float32, whatever the DiT's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME, WAV2VEC2_LAYERS
from ..errors import AudioInputError, CheckpointError
from ..weights import DictSource, SafetensorsSource

NORMALISATION_EPS = 1e-7  # Wav2Vec2FeatureExtractor: (x - mean) / sqrt(var + 1e-7)


# Architecture of facebook/wav2vec2-base-960h (its public config.json): used for single files, whose shapes do not
# tell the strides, the norms or the head count.
BASE_960H_CONFIG = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False, "feat_extract_norm": "group", "feat_extract_activation": "gelu",
    "do_stable_layer_norm": False, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
# What FlashHead relies on (the rest, e.g. the hidden size of tiny test models, may differ).
BASE_ARCHITECTURE = {"num_hidden_layers": WAV2VEC2_LAYERS, "feat_extract_norm": "group",
                     "do_stable_layer_norm": False}
HEAD_DIM = 64  # every released wav2vec2 (base 768/12, large 1024/16); heads of single files = hidden / 64
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
CTC_PREFIX = "wav2vec2."  # Wav2Vec2ForCTC files (the release) wrap the encoder under this name
UNUSED_PREFIXES = ("lm_head.", "masked_spec_embed")  # CTC head; SpecAugment vector (training only)
POS_CONV = "encoder.pos_conv_embed.conv."
# Old weight-norm names on disk -> the parametrization transformers builds with torch.nn.utils.parametrizations.
LEGACY_WEIGHT_NORM = {POS_CONV + "weight_g": POS_CONV + "parametrizations.weight.original0",
                      POS_CONV + "weight_v": POS_CONV + "parametrizations.weight.original1"}
WeightSource = SafetensorsSource | DictSource


class Wav2Vec2FrameEncoder:
    """wav2vec2 producing one feature vector per video frame (25 fps) and transformer layer
    (docs/algorithm.md#audio-features).

    `model` is transformers' Wav2Vec2Model in float32 and eval mode, without masking (no `masked_spec_embed`).
    """

    def __init__(self, model):
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.feature_projection.projection.weight.device

    @staticmethod
    def normalize(samples: np.ndarray) -> np.ndarray:
        """[N] -> [N] float32: (x - mean) / sqrt(var + 1e-7) over exactly this array (population variance), in
        float32 after casting (a float64 buffer is cast first), as Wav2Vec2FeatureExtractor does."""
        x = np.asarray(samples, dtype=np.float32)
        return (x - x.mean()) / np.sqrt(x.var() + NORMALISATION_EPS)

    @torch.no_grad()
    def encode(self, samples: np.ndarray) -> torch.Tensor:
        """[N] samples at 16 kHz -> [n, 12, hidden] float32 on the encoder's device, n = int(N * 25 / 16000).

        Normalise, conv feature encoder, interpolate its [1, C, T_conv] output to n frames (linear,
        align_corners=True), feature projection, positional conv + LayerNorm, the transformer layers; the outputs of
        the layers are stacked (transformers' hidden_states[1:])."""
        frames = len(samples) * FPS // AUDIO_SAMPLE_RATE
        if frames < 1:
            raise AudioInputError(f"{len(samples)} samples are shorter than one video frame ({SAMPLES_PER_FRAME} "
                                  f"samples at 16 kHz); pad the audio")
        values = torch.from_numpy(self.normalize(samples)).to(self.device)[None]  # [1, N]
        conv = self.model.feature_extractor(values)  # [1, C, T_conv]
        conv = F.interpolate(conv, size=frames, mode="linear", align_corners=True)  # [1, C, n]
        hidden, _ = self.model.feature_projection(conv.transpose(1, 2))  # [1, n, hidden]
        encoder = self.model.encoder
        hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))
        layer_outputs = []
        for layer in encoder.layers:
            output = layer(hidden)
            hidden = output[0] if isinstance(output, tuple) else output  # transformers 4.x returns a tuple
            layer_outputs.append(hidden)
        return torch.stack(layer_outputs, dim=2)[0]  # [n, layers, hidden]


def load_wav2vec2(path: str | Path, device: torch.device | str = "cpu") -> Wav2Vec2FrameEncoder:
    """Load wav2vec2-base-960h from the released folder (config.json, preprocessor_config.json, model.safetensors or
    pytorch_model.bin) or from one weights file (.safetensors, or a torch .bin/.pt/.pth state dict) as ComfyUI keeps
    it in models/audio_encoders; a single file's architecture comes from its shapes (`config_from_shapes`)."""
    path = Path(path)
    if path.is_dir():
        config = _folder_config(path)
        weights = next((path / name for name in WEIGHTS_NAMES if (path / name).is_file()), None)
        if weights is None:
            raise CheckpointError(f"no weights in {path}: expected {' or '.join(WEIGHTS_NAMES)} next to config.json "
                                  f"(download facebook/wav2vec2-base-960h into this folder)")
        source = _weight_source(weights)
    elif path.is_file():
        source = _weight_source(path)
        config = config_from_shapes(source.shapes)
    else:
        raise CheckpointError(f"wav2vec2 checkpoint not found: {path}")
    return build_wav2vec2(config, source, device=device)


def _folder_config(folder: Path) -> dict:
    """config.json of a released folder, after checking preprocessor_config.json asks for normalised 16 kHz input."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json; use the facebook/wav2vec2-base-960h folder as "
                              f"released, or pass its model.safetensors file alone")
    preprocessor_path = folder / "preprocessor_config.json"
    preprocessor = json.loads(preprocessor_path.read_text()) if preprocessor_path.is_file() else {}
    asked = {"do_normalize": preprocessor.get("do_normalize", True),
             "sampling_rate": preprocessor.get("sampling_rate", AUDIO_SAMPLE_RATE)}
    if asked != {"do_normalize": True, "sampling_rate": AUDIO_SAMPLE_RATE}:
        raise CheckpointError(f"{preprocessor_path} asks for {asked}; FlashHead needs the wav2vec2-base-960h "
                              f"preprocessor (normalised 16 kHz input): use that folder as released")
    return json.loads((folder / "config.json").read_text())


def _weight_source(path: Path) -> WeightSource:
    if path.suffix == ".safetensors":
        return SafetensorsSource([path])
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            return DictSource(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # pickle, zip and torch errors all mean the same thing here
            raise CheckpointError(f"cannot read {path} as a torch state dict ({e}); use model.safetensors") from e
    raise CheckpointError(f"{path} is not a weights file: expected .safetensors (or a torch .bin/.pt/.pth)")


def model_key(stored_key: str) -> str | None:
    """Key as stored (released CTC file, ComfyUI single file, or Wav2Vec2Model state dict) -> Wav2Vec2Model key,
    or None for tensors the encoder never uses (lm_head.*, masked_spec_embed)."""
    key = stored_key.removeprefix(CTC_PREFIX)
    if key.startswith(UNUSED_PREFIXES):
        return None
    return LEGACY_WEIGHT_NORM.get(key, key)


def _stored_keys(source: WeightSource) -> dict[str, str]:
    """{Wav2Vec2Model key: stored key} for the tensors the encoder uses; two stored names for one key is an error."""
    mapping: dict[str, str] = {}
    for stored in source.shapes:
        key = model_key(stored)
        if key is None:
            continue
        if key in mapping:
            raise CheckpointError(f"the checkpoint holds {key} twice ({mapping[key]} and {stored}); keep one")
        mapping[key] = stored
    return mapping


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Architecture of a single weights file from its tensor shapes (stored key names accepted): sizes, layer counts
    and the positional conv come from the shapes, strides and norms from base-960h, heads = hidden / 64."""
    shapes = {key: shape for stored, shape in shapes.items() if (key := model_key(stored))}
    required = ("feature_extractor.conv_layers.0.conv.weight", "feature_projection.projection.weight",
                "encoder.layers.0.feed_forward.intermediate_dense.weight", LEGACY_WEIGHT_NORM[POS_CONV + "weight_v"])
    absent = [k for k in required if k not in shapes]
    if absent:
        raise CheckpointError(f"not a wav2vec2 checkpoint (no {', '.join(absent)}); FlashHead needs "
                              f"facebook/wav2vec2-base-960h: its folder or its model.safetensors")
    convs = [shapes[k] for k in sorted((k for k in shapes if k.startswith("feature_extractor.conv_layers.")
                                        and k.endswith(".conv.weight")), key=lambda k: int(k.split(".")[2]))]
    hidden = shapes["feature_projection.projection.weight"][0]
    pos_conv = shapes[LEGACY_WEIGHT_NORM[POS_CONV + "weight_v"]]  # [hidden, hidden / groups, kernel]
    return {
        **BASE_960H_CONFIG,
        "hidden_size": hidden,
        "num_hidden_layers": len({k.split(".")[2] for k in shapes if k.startswith("encoder.layers.")}),
        "num_attention_heads": max(1, hidden // HEAD_DIM),
        "intermediate_size": shapes["encoder.layers.0.feed_forward.intermediate_dense.weight"][0],
        "conv_dim": [s[0] for s in convs],
        "conv_kernel": [s[2] for s in convs],
        "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in shapes,
        "feat_extract_norm": "layer" if "feature_extractor.conv_layers.1.layer_norm.weight" in shapes else "group",
        "num_conv_pos_embeddings": pos_conv[2],
        "num_conv_pos_embedding_groups": hidden // pos_conv[1],
    }


def _check_architecture(config: dict) -> None:
    """FlashHead's audio projector reads the 12 layers of a base wav2vec2 (7 conv layers, group norm, post-norm)."""
    found = {k: config.get(k, BASE_960H_CONFIG[k]) for k in BASE_ARCHITECTURE}
    found["conv layers"] = len(config.get("conv_dim", BASE_960H_CONFIG["conv_dim"]))
    expected = {**BASE_ARCHITECTURE, "conv layers": len(BASE_960H_CONFIG["conv_stride"])}
    if found != expected:
        raise CheckpointError(f"this wav2vec2 has {found}; FlashHead needs wav2vec2-base-960h ({expected}), not a "
                              f"'large' or otherwise different model")


def new_wav2vec2_model(config: dict):
    """transformers' Wav2Vec2Model with `config`'s architecture fields (others ignored; base-960h values for absent
    ones), masking off (so no masked_spec_embed), freshly initialised on the current default device."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    _check_architecture(config)
    architecture = {k: config.get(k, v) for k, v in BASE_960H_CONFIG.items()}
    return Wav2Vec2Model(Wav2Vec2Config(**architecture, mask_time_prob=0.0, mask_feature_prob=0.0))


def build_wav2vec2(config: dict, source: WeightSource, device: torch.device | str = "cpu") -> Wav2Vec2FrameEncoder:
    """Build Wav2Vec2Model from `config` (architecture fields; others ignored) on the meta device and assign the
    source's tensors in float32 on `device`. Stored keys may carry the CTC `wav2vec2.` prefix and the legacy
    weight_g/weight_v names; lm_head.* and masked_spec_embed are skipped; anything else missing or extra is an error."""
    with torch.device("meta"):
        model = new_wav2vec2_model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = _stored_keys(source)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(stored[k] for k in set(stored) - set(expected))
    wrong = [f"{stored[k]}: file {list(source.shapes[stored[k]])} vs model {list(expected[k])}"
             for k in sorted(set(expected) & set(stored)) if tuple(source.shapes[stored[k]]) != expected[k]]
    if missing or unexpected or wrong:
        parts = ([f"missing keys: {_first(missing)}"] if missing else []) + \
                ([f"unexpected keys: {_first(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatches: {_first(wrong, 5)}"] if wrong else [])
        raise CheckpointError("checkpoint does not match wav2vec2-base-960h: " + " | ".join(parts) +
                              ". Use facebook/wav2vec2-base-960h (its folder or its model.safetensors)")
    state = {k: source.get(stored[k]).to(device=device, dtype=torch.float32) for k in expected}
    model.load_state_dict(state, assign=True, strict=True)
    return Wav2Vec2FrameEncoder(model.eval().requires_grad_(False))


def _first(items: list[str], count: int = 10) -> str:
    return ", ".join(items[:count]) + (f" ... ({len(items)} in all)" if len(items) > count else "")
