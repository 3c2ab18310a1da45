"""Audio in -> per-frame wav2vec2 features -> 5-frame windows (spec §3).

    samples = load_audio(source)                           # np.ndarray [N] float32, mono, 16 kHz
    channels, rate = read_audio(source)                    # [C, T] float32 as stored (e.g. to mux the original)
    track = probe_audio_file(path)                         # a file checked in one decoding pass, nothing kept
    for piece in mono_16k_pieces(decode_pieces(track), track.sample_rate): ...   # [t] float32, 16 kHz, streamed
    encoder = load_wav2vec2("wav2vec2-base-960h")          # transformers' Wav2Vec2Model, float32, eval
    features = encoder.encode(samples)                     # [n, 12, 768], n = int(N * 25 / 16000) video frames
    windows = frame_windows(features, start, stop)         # [1, stop - start, 5, 12, 768]
    for windows in once_mode_chunks(encoder, samples, new_frames): ...   # [1, 33, 5, 12, 768] per chunk

The streaming mode (the Temporal Audio Context Cache) is `audio_context_cache`. wav2vec2 always runs in float32,
whatever the DiT's dtype.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, DictSource, SafetensorsSource
from .config import AUDIO_SAMPLE_RATE, AUDIO_WINDOW, CHUNK_FRAMES, FPS, SAMPLES_PER_FRAME, WAV2VEC2_LAYERS

NORMALISATION_EPS = 1e-7  # Wav2Vec2FeatureExtractor: (x - mean) / sqrt(var + 1e-7)
RESAMPLE_QUALITY = "soxr_hq"  # librosa.load's default resampler
DECODE_FRAME = 1 << 18  # samples per decoded piece (1 MB per channel)


class AudioInputError(ValueError):
    """Audio that cannot be voiced: empty, NaN/inf, several tracks at once, or an unreadable file."""


# --- audio input ----------------------------------------------------------------------------------------------------

def load_audio(source, sample_rate: float | None = None) -> np.ndarray:
    """Any audio `read_audio` takes -> mono float32 samples at 16 kHz, shape [N] (what `librosa.load(sr=16000)`
    returns): channels averaged, resampled with soxr 'HQ', cut/zero-padded to ceil(T * 16000 / rate) as librosa does.
    """
    return to_mono_16k(*read_audio(source, sample_rate))


def read_audio(source, sample_rate: float | None = None) -> tuple[np.ndarray, float]:
    """Any supported audio -> (channels [C, T] float32, sample rate), as stored: no mixdown, no resampling.

    source: a ComfyUI AUDIO dict {"waveform": Tensor [1, C, T] float, "sample_rate": int}; a float numpy array or
    tensor, [T] mono or [C, T], with `sample_rate` given; or the path of a file PyAV decodes (wav, mp3, flac, m4a...).
    Silence is valid; empty or non-finite audio, several tracks or an unreadable file raise AudioInputError.
    """
    if isinstance(source, dict):
        channels, rate = _comfy_audio_channels(source)
    elif isinstance(source, (str, os.PathLike)):
        channels, rate = _decode_file(Path(source))
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        if sample_rate is None:
            raise AudioInputError("an audio array needs its sample rate: load_audio(array, sample_rate=44100)")
        channels, rate = _as_channels(source, "audio array"), sample_rate
    else:
        raise AudioInputError(f"cannot read audio from a {type(source).__name__}: pass a ComfyUI AUDIO dict, a file "
                              f"path, or a numpy array / tensor with its sample rate")
    if not rate or rate <= 0:
        raise AudioInputError(f"sample rate must be positive, got {rate}")
    return channels, rate


def _comfy_audio_channels(audio: dict) -> tuple[np.ndarray, float]:
    """ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate"} with B = 1 -> ([C, T] float32, rate)."""
    if "waveform" not in audio or "sample_rate" not in audio:
        raise AudioInputError(f"an AUDIO dict needs 'waveform' and 'sample_rate', got keys {sorted(audio)}")
    waveform = audio["waveform"]
    if waveform.ndim != 3:
        raise AudioInputError(f"AUDIO waveform must be [batch, channels, samples], got shape {list(waveform.shape)}")
    if waveform.shape[0] != 1:
        raise AudioInputError(f"AUDIO holds a batch of {waveform.shape[0]} tracks; FlashHead voices one track per "
                              f"video: split the batch and connect a single track")
    return _as_channels(waveform[0], "AUDIO waveform"), audio["sample_rate"]


def _as_channels(array: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """[T] or [C, T] float array/tensor -> [C, T] float32 numpy, checked for emptiness and NaN/inf."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioInputError(f"{what} has dtype {array.dtype}; convert it to float in [-1, 1] first "
                              f"(int16 PCM: x / 32768)")
    channels = np.asarray(array, dtype=np.float32)
    if channels.ndim == 1:
        channels = channels[None]
    if channels.ndim != 2:
        raise AudioInputError(f"{what} must be [samples] or [channels, samples], got shape {list(channels.shape)}")
    _check_track(what, *channels.shape, non_finite=int(np.count_nonzero(~np.isfinite(channels))))
    return channels


def _check_track(what: str, channels: int, length: int, non_finite: int) -> None:
    """Refuse a track of `channels` x `length` samples that is empty, looks transposed or holds NaN/inf samples."""
    if channels * length == 0:
        raise AudioInputError(f"{what} is empty (0 samples); connect audio with some duration (silence is fine)")
    if channels > length:
        raise AudioInputError(f"{what} of shape {[channels, length]} has more channels than samples; it looks like "
                              f"[samples, channels]: pass it transposed")
    if non_finite:
        raise AudioInputError(f"{what} contains {non_finite} NaN or infinite samples; fix or re-export the audio "
                              f"upstream")


def _decode_file(path: Path) -> tuple[np.ndarray, float]:
    """Decode the first audio stream of a file with PyAV -> ([C, T] float32, its sample rate)."""
    with _opened_audio(path) as (container, stream):
        pieces, rate = list(_decoded_pieces(container, stream)), stream.rate
    if not pieces:
        raise AudioInputError(f"{path} decodes to no samples; choose a file with some duration")
    return _as_channels(np.concatenate([piece.T for piece in pieces]).T, str(path)), rate  # interleaved, as decoded


@dataclass(frozen=True)
class AudioFile:
    """An audio file checked by a decoding pass (not empty, no NaN/inf): its first audio stream's sample rate,
    channel count and length in samples per channel."""

    path: Path
    sample_rate: int
    channels: int
    length: int

    @property
    def length_16k(self) -> int:
        """Samples of its 16 kHz mono version (`mono_16k_pieces`): ceil(length * 16000 / rate)."""
        return _length_16k(self.length, self.sample_rate)


def probe_audio_file(path: str | os.PathLike) -> AudioFile:
    """First pass over a file: decode it without keeping the samples, count them and check them as `read_audio`
    does (same errors), so that a long file can then be decoded as a stream (`decode_pieces`) in constant memory."""
    path = Path(path)
    length = non_finite = channels = 0
    with _opened_audio(path) as (container, stream):
        for piece in _decoded_pieces(container, stream):
            channels, length = piece.shape[0], length + piece.shape[1]
            non_finite += int(np.count_nonzero(~np.isfinite(piece)))
        rate = stream.rate
    if not length:
        raise AudioInputError(f"{path} decodes to no samples; choose a file with some duration")
    _check_track(str(path), channels, length, non_finite)
    return AudioFile(path, rate, channels, length)


def decode_pieces(audio: AudioFile) -> Iterator[np.ndarray]:
    """Decode a probed file again, lazily: pieces [C, t] float32 at its own rate, DECODE_FRAME samples each
    (the last shorter), as stored (no mixdown, no resampling)."""
    with _opened_audio(audio.path) as (container, stream):
        yield from _decoded_pieces(container, stream)


@contextmanager
def _opened_audio(path: Path) -> Iterator[tuple]:
    """(container, its first audio stream) of a file opened with PyAV; a missing file, no audio stream or a PyAV
    error (while opening or decoding inside the block) raises AudioInputError."""
    import av

    if not path.is_file():
        raise AudioInputError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{path} has no audio stream; choose a file with sound")
            yield container, container.streams.audio[0]
    except av.FFmpegError as e:
        raise AudioInputError(f"cannot decode {path}: {e}. Re-export it as WAV, FLAC or MP3") from e


def _decoded_pieces(container, stream) -> Iterator[np.ndarray]:
    """Decode `stream` -> pieces [C, t] float32 at its rate (views of interleaved [t, C] frames)."""
    import av

    # Interleaved float32 in the same layout and rate, [samples, channels] per frame. Not planar: PyAV (18.1)
    # lists one plane too many for 8 channels and crashes the process reading it. Frames of DECODE_FRAME
    # samples: freed pieces that large go back to the system, small ones would stay resident as heap.
    packed_float = av.AudioResampler(format="flt", frame_size=DECODE_FRAME)
    for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
        for f in packed_float.resample(frame):
            yield f.to_ndarray().reshape(-1, len(f.layout.channels)).T


def to_mono_16k(channels: np.ndarray, sample_rate: float) -> np.ndarray:
    """[C, T] float32 at `sample_rate` -> [N] float32 at 16 kHz: `mono_16k_pieces` of the whole track, joined.
    Mono 16 kHz input comes back as a view of `channels` (no copy: an hour of audio is 220 MB)."""
    pieces = [piece for piece in mono_16k_pieces([channels], sample_rate) if len(piece)]
    return np.ascontiguousarray(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces)


def mono_16k_pieces(pieces: Iterable[np.ndarray], sample_rate: float) -> Iterator[np.ndarray]:
    """Pieces [C, t] float32 at `sample_rate` -> pieces [t'] float32, mono at 16 kHz, as `librosa.load(sr=16000)`
    gives the whole track: mean of the channels, soxr 'HQ' (a streaming resampler, bit-identical to the one-shot
    `soxr.resample`), cut/zero-padded at the end to ceil(T * 16000 / rate) samples in all (librosa's fix_length).
    16 kHz pieces pass through (mono ones as views)."""
    import soxr

    mono = (piece[0] if piece.shape[0] == 1 else piece.mean(axis=0) for piece in pieces)
    if sample_rate == AUDIO_SAMPLE_RATE:
        yield from mono
        return
    resampler = soxr.ResampleStream(sample_rate, AUDIO_SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    consumed = emitted = 0
    for piece in mono:
        resampled = resampler.resample_chunk(piece)
        consumed, emitted = consumed + len(piece), emitted + len(resampled)
        yield resampled
    missing = _length_16k(consumed, sample_rate) - emitted  # soxr's delayed tail, then padding
    tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)[:missing]
    yield np.pad(tail, (0, missing - len(tail)))


def _length_16k(length: int, sample_rate: float) -> int:
    """ceil(length * 16000 / rate): the samples librosa keeps after resampling to 16 kHz."""
    return int(np.ceil(length * (float(AUDIO_SAMPLE_RATE) / sample_rate)))


# --- the wav2vec2 encoder -------------------------------------------------------------------------------------------

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
    """wav2vec2 producing one feature vector per video frame (25 fps) and transformer layer (spec §3).

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
    """config.json of a released folder, after checking preprocessor_config.json asks for what §3 computes."""
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


# --- windows and the 'once' mode ------------------------------------------------------------------------------------

def frame_windows(features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """[T, L, H] per-frame features -> [1, stop - start, 5, L, H]: frame i gets frames i-2..i+2, each index clamped
    to [0, T - 1] (T = the frames of the array that was encoded: 200 in stream mode, all of them in once mode)."""
    half = AUDIO_WINDOW // 2
    index = torch.arange(start, stop)[:, None] + torch.arange(-half, half + 1)  # [stop - start, 5]
    return features[index.clamp(0, len(features) - 1).to(features.device)][None]


def once_mode_length(num_samples: int, new_frames: int) -> int:
    """Padded length for 'once' mode: the smallest 33*640 + k*new_frames*640 >= num_samples, k >= 0."""
    chunk, step = CHUNK_FRAMES * SAMPLES_PER_FRAME, new_frames * SAMPLES_PER_FRAME
    return chunk + max(0, math.ceil((num_samples - chunk) / step)) * step


def pad_for_once_mode(samples: np.ndarray, new_frames: int) -> np.ndarray:
    """[N] -> [once_mode_length(N)] with zeros appended (the padding is part of the normalisation statistics)."""
    return np.pad(samples, (0, once_mode_length(len(samples), new_frames) - len(samples)))


def once_mode_chunks(encoder: Wav2Vec2FrameEncoder, samples: np.ndarray, new_frames: int) -> Iterator[torch.Tensor]:
    """Encode the padded track in one pass ([T, 12, H], T = 33 + k*new_frames) and yield the k + 1 chunk windows
    [1, 33, 5, 12, H] of frames [j*new_frames, j*new_frames + 33), j = 0..k, windows clamped to the whole track.

    The official loop stops at k chunks and so drops the last new_frames of audio (or everything under 33 frames);
    running k + 1 covers every frame. The encoder attends over the whole track: cost grows with its square."""
    features = encoder.encode(pad_for_once_mode(samples, new_frames))
    for start in range(0, len(features) - CHUNK_FRAMES + 1, new_frames):
        yield frame_windows(features, start, start + CHUNK_FRAMES)
