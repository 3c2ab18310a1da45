"""wav2vec2-base-960h as FlashHead hears speech: one feature vector per video frame and transformer layer.

    encoder = load_wav2vec2("wav2vec2-base-960h")          # transformers' Wav2Vec2Model, float32, eval
    features = encoder.encode(samples)                     # [n, 12, 768], n = int(N * 25 / 16000) video frames

wav2vec2 always runs in float32, whatever the DiT's dtype.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..config import AUDIO_SAMPLE_RATE, FPS, SAMPLES_PER_FRAME, WAV2VEC2_LAYERS
from ..errors import AudioInputError, CheckpointError

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
UNUSED = ("lm_head.", "masked_spec_embed", CTC_PREFIX + "masked_spec_embed")  # CTC head; SpecAugment (training only)
POS_CONV_V = "encoder.pos_conv_embed.conv.weight_v"  # [hidden, hidden / groups, kernel], as stored by the release


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
        state = _read_weights(weights)
    elif path.is_file():
        state = _read_weights(path)
        config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    else:
        raise CheckpointError(f"wav2vec2 checkpoint not found: {path}")
    return build_wav2vec2(config, state, device=device)


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


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a .safetensors or torch .bin/.pt/.pth file, on the CPU as stored."""
    if path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
        raise CheckpointError(f"{path} is not a weights file: expected .safetensors (or a torch .bin/.pt/.pth)")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle, zip and torch errors all mean the same thing here
        raise CheckpointError(f"cannot read {path}: {e}. The file is truncated or not a weights file; download it "
                              f"again (model.safetensors preferred).") from e


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Architecture of a single weights file from its tensor shapes (`wav2vec2.` prefix optional, pos-conv as
    weight_v or parametrizations.weight.original1): sizes, layer counts and the positional conv come from the shapes,
    strides and norms from base-960h, heads = hidden / 64."""
    shapes = {key.removeprefix(CTC_PREFIX).replace("parametrizations.weight.original1", "weight_v"): shape
              for key, shape in shapes.items()}
    required = ("feature_extractor.conv_layers.0.conv.weight", "feature_projection.projection.weight",
                "encoder.layers.0.feed_forward.intermediate_dense.weight", POS_CONV_V)
    absent = [k for k in required if k not in shapes]
    if absent:
        raise CheckpointError(f"not a wav2vec2 checkpoint (no {', '.join(absent)}); FlashHead needs "
                              f"facebook/wav2vec2-base-960h: its folder or its model.safetensors")
    convs = [shapes[k] for k in sorted((k for k in shapes if k.startswith("feature_extractor.conv_layers.")
                                        and k.endswith(".conv.weight")), key=lambda k: int(k.split(".")[2]))]
    hidden = shapes["feature_projection.projection.weight"][0]
    pos_conv = shapes[POS_CONV_V]  # [hidden, hidden / groups, kernel]
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


def wav2vec2_config(config: dict):
    """transformers' Wav2Vec2Config with `config`'s architecture fields (others ignored; base-960h values for absent
    ones) and masking off, so that Wav2Vec2Model has no masked_spec_embed. Refuses all but a base architecture."""
    from transformers import Wav2Vec2Config

    _check_architecture(config)
    architecture = {k: config.get(k, v) for k, v in BASE_960H_CONFIG.items()}
    return Wav2Vec2Config(**architecture, mask_time_prob=0.0, mask_feature_prob=0.0)


def build_wav2vec2(config: dict, state: dict[str, torch.Tensor],
                   device: torch.device | str = "cpu") -> Wav2Vec2FrameEncoder:
    """transformers' Wav2Vec2Model.from_pretrained with `config` (architecture fields) and the state dict as stored
    (it maps the `wav2vec2.` prefix and the weight_g/weight_v names), in float32 on `device`. lm_head.* and
    masked_spec_embed may be left over; any other missing, unexpected or mis-shaped key is a CheckpointError."""
    from transformers import Wav2Vec2Model

    dups = sorted(k for k in state if CTC_PREFIX + k in state)
    if dups:
        raise CheckpointError(f"the checkpoint holds {dups[0]} twice ({dups[0]} and {CTC_PREFIX + dups[0]}); keep one")
    with _quiet_transformers():
        model, info = Wav2Vec2Model.from_pretrained(None, config=wav2vec2_config(config), state_dict=state,
                                                    output_loading_info=True, ignore_mismatched_sizes=True)
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(UNUSED)]
    mismatched = [k if isinstance(k, str) else f"{k[0]}: file {list(k[1])} vs model {list(k[2])}"  # 4.x: names only
                  for k in info["mismatched_keys"]]
    problems = [f"{what}: {_first(sorted(keys))}" for what, keys in (
        ("missing keys", info["missing_keys"]), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys]
    if problems:
        raise CheckpointError("checkpoint does not match wav2vec2-base-960h: " + " | ".join(problems) +
                              ". Use facebook/wav2vec2-base-960h (its folder or its model.safetensors)")
    return Wav2Vec2FrameEncoder(model.to(device=device, dtype=torch.float32).eval().requires_grad_(False))


@contextmanager
def _quiet_transformers():
    """No progress bar and no load report (it lists the CTC head the encoder never uses) while loading."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _first(items: list[str], count: int = 10) -> str:
    return ", ".join(items[:count]) + (f" ... ({len(items)} in all)" if len(items) > count else "")
