"""A tiny random wav2vec2 written exactly like the released `facebook/wav2vec2-base-960h` folder, so that tests and
demos exercise the real audio loading code without downloading anything. Not a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Model

from ..audio.wav2vec2 import BASE_960H_CONFIG, CTC_PREFIX, wav2vec2_config
from ..release import AUDIO_DIR
from .dit import TINY_DIT
from .random import randomize_

# Small sizes, the real conv kernels/strides and 12 layers (so 12 hidden states exist). One head, as a single file
# of this size infers (hidden / 64, at least 1).
TINY_WAV2VEC2 = {**BASE_960H_CONFIG, "hidden_size": TINY_DIT["audio_channels"], "num_attention_heads": 1,
                 "intermediate_size": 64, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16,
                 "num_conv_pos_embedding_groups": 4}
CTC_VOCAB = 32  # characters of the base-960h CTC head (lm_head), unused by FlashHead
PREPROCESSOR_CONFIG = {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                       "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
                       "sampling_rate": 16000}
POS_CONV = "encoder.pos_conv_embed.conv."
# Wav2Vec2Model's weight-norm parametrization -> the old names the release stores (transformers maps them back).
STORED_WEIGHT_NORM = {POS_CONV + "parametrizations.weight.original0": POS_CONV + "weight_g",
                      POS_CONV + "parametrizations.weight.original1": POS_CONV + "weight_v"}


def write_tiny_wav2vec2(directory: str | Path, *, seed: int = 0) -> Path:
    """Write `<directory>/wav2vec2-base-960h/`: config.json, preprocessor_config.json and a Wav2Vec2ForCTC-style
    model.safetensors (`wav2vec2.` prefix, pos-conv as weight_g/weight_v, an lm_head, no masked_spec_embed).

    Returns the folder."""
    folder = Path(directory) / AUDIO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    model = randomize_(Wav2Vec2Model(wav2vec2_config(TINY_WAV2VEC2)), seed)
    state = {CTC_PREFIX + STORED_WEIGHT_NORM.get(k, k): v for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = TINY_WAV2VEC2["hidden_size"]
    state["lm_head.weight"] = 0.1 * torch.randn(CTC_VOCAB, hidden, generator=generator)
    state["lm_head.bias"] = 0.1 * torch.randn(CTC_VOCAB, generator=generator)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config = {"architectures": ["Wav2Vec2ForCTC"], "model_type": "wav2vec2", "vocab_size": CTC_VOCAB,
              "apply_spec_augment": True, "mask_time_prob": 0.05, **TINY_WAV2VEC2}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    return folder
