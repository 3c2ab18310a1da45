"""Audio: input conversion, the wav2vec2 loader, features and windows, 'once' mode and the Temporal Audio Context
Cache."""

from __future__ import annotations

import math
import shutil
import wave

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flashhead_core.audio.context_cache import AudioContextCache, stream_chunks, stream_slices
from flashhead_core.audio.decode import decode_pieces, load_audio, mono_16k_pieces, probe_audio_file, read_audio
from flashhead_core.audio.wav2vec2 import build_wav2vec2, load_wav2vec2
from flashhead_core.audio.windows import frame_windows, once_mode_chunks, once_mode_length, pad_for_once_mode
from flashhead_core.errors import AudioInputError, CheckpointError
from flashhead_core.testing.wav2vec2 import TINY_WAV2VEC2, write_tiny_wav2vec2
from flashhead_core.tools.parity import verify_file

POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv."


def tone(seconds: float, rate: int, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_wav2vec2(tmp_path_factory.mktemp("audio"), seed=3)


@pytest.fixture(scope="module")
def encoder(tiny_folder):
    return load_wav2vec2(tiny_folder)


@pytest.fixture(scope="module")
def speech():
    """5 s of a seeded noisy signal at 16 kHz (not a multiple of a frame)."""
    rng = np.random.default_rng(7)
    return (tone(5.01, 16000, 220) + 0.05 * rng.standard_normal(80160)).astype(np.float32)


# --- reference parity ----------------------------------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("name", ["fixtures/audio_embedding.safetensors", "manifests/wav2vec2_base_960h.json"])
def test_reference_parity(reference_dir, name):
    result = verify_file(reference_dir / name)
    assert result["ok"], result
    if "rel" in result:
        assert len(result["rel"]) == 11 and all(r < 1e-5 for r in result["rel"].values())


# --- loading -------------------------------------------------------------------------------------------------------

def test_tiny_checkpoint_has_the_released_layout(tiny_folder):
    assert sorted(p.name for p in tiny_folder.iterdir()) == ["config.json", "model.safetensors",
                                                            "preprocessor_config.json"]
    keys = set(load_file(str(tiny_folder / "model.safetensors")))
    assert len(keys) == 212 and {"lm_head.weight", "lm_head.bias", POS_CONV + "weight_g", POS_CONV + "weight_v"} <= keys
    assert not any("masked_spec_embed" in k or "parametrizations" in k for k in keys)
    assert all(k.startswith(("wav2vec2.", "lm_head.")) for k in keys)


def test_folder_and_single_file_give_the_same_model(tiny_folder, tmp_path, speech):
    single = tmp_path / "audio_encoders" / "wav2vec2-base-960h.safetensors"
    single.parent.mkdir()
    shutil.copy(tiny_folder / "model.safetensors", single)
    bin_file = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(single)), bin_file)
    encoders = [load_wav2vec2(p) for p in (tiny_folder, single, bin_file)]
    for e in encoders:
        config = e.model.config
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.conv_dim,
                config.num_conv_pos_embeddings) == (32, 12, 1, [16] * 7, 16)
        assert not e.model.training and "masked_spec_embed" not in e.model.state_dict()
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in e.model.parameters())
    features = [e.encode(speech) for e in encoders]
    assert features[0].shape == (125, 12, 32)
    assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])


def test_weight_norm_names_are_mapped(encoder, tiny_folder):
    stored = load_file(str(tiny_folder / "model.safetensors"))
    conv = encoder.model.encoder.pos_conv_embed.conv
    g, v = stored[POS_CONV + "weight_g"], stored[POS_CONV + "weight_v"]
    assert torch.equal(conv.parametrizations.weight.original0, g)
    assert torch.equal(conv.parametrizations.weight.original1, v)
    torch.testing.assert_close(conv.weight, v * g / v.norm(dim=(0, 1), keepdim=True))


def _write_modified(tiny_folder, tmp_path, change) -> str:
    state = load_file(str(tiny_folder / "model.safetensors"))
    change(state)
    path = tmp_path / "modified.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("wav2vec2.encoder.layers.3.final_layer_norm.bias"),
     "missing keys: encoder.layers.3.final_layer_norm.bias"),
    (lambda s: s.update({"wav2vec2.encoder.extra.weight": torch.zeros(3)}),
     "unexpected keys: (wav2vec2.)?encoder.extra.weight"),  # transformers 4.x drops the prefix
    (lambda s: s.update({"wav2vec2.feature_projection.projection.bias": torch.zeros(31)}),
     "shape mismatches: feature_projection.projection.bias"),
    (lambda s: s.update({"wav2vec2.feature_extractor.conv_layers.1.layer_norm.weight": torch.ones(16)}),
     "FlashHead needs wav2vec2-base-960h"),
    (lambda s: s.update({"encoder.layer_norm.weight": torch.ones(32)}), "holds encoder.layer_norm.weight twice"),
])
def test_checkpoint_errors_name_the_keys(tiny_folder, tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        load_wav2vec2(_write_modified(tiny_folder, tmp_path, change))


def test_unused_tensors_are_skipped(tiny_folder, tmp_path, encoder, speech):
    path = _write_modified(tiny_folder, tmp_path, lambda s: s.update({"wav2vec2.masked_spec_embed": torch.ones(32)}))
    assert torch.equal(load_wav2vec2(path).encode(speech), encoder.encode(speech))


def test_foreign_and_absent_checkpoints(tmp_path):
    save_file({"patch_embedding.weight": torch.zeros(4, 4)}, str(tmp_path / "dit.safetensors"))
    with pytest.raises(CheckpointError, match="not a wav2vec2 checkpoint"):
        load_wav2vec2(tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_wav2vec2(tmp_path / "absent")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_wav2vec2(tmp_path / "empty_folder")


def test_folder_needs_weights_and_the_base_preprocessor(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "w2v")
    (folder / "preprocessor_config.json").write_text('{"do_normalize": false, "sampling_rate": 16000}')
    with pytest.raises(CheckpointError, match="'do_normalize': False"):
        load_wav2vec2(folder)
    (folder / "preprocessor_config.json").unlink()  # absent: the base-960h defaults apply
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*model.safetensors or pytorch_model.bin"):
        load_wav2vec2(folder)


def test_architecture_other_than_base_is_refused():
    with pytest.raises(CheckpointError, match="num_hidden_layers': 24"):
        build_wav2vec2({**TINY_WAV2VEC2, "num_hidden_layers": 24}, {})


# --- audio input ---------------------------------------------------------------------------------------------------

def test_comfy_audio_is_mixed_down_and_resampled():
    left = tone(1.5, 44100)
    stereo = {"waveform": torch.from_numpy(np.stack([left, 0.5 * left]))[None], "sample_rate": 44100}
    samples = load_audio(stereo)
    assert samples.dtype == np.float32 and samples.shape == (24000,)
    np.testing.assert_allclose(samples[1000:-1000], 0.75 * tone(1.5, 16000)[1000:-1000], atol=2e-3)

    mono = load_audio({"waveform": torch.from_numpy(tone(1.0, 24000))[None, None], "sample_rate": 24000})
    assert mono.shape == (16000,)
    np.testing.assert_allclose(mono[500:-500], tone(1.0, 16000)[500:-500], atol=2e-3)
    assert load_audio(torch.from_numpy(tone(0.7, 22050)), sample_rate=22050).shape == (11200,)
    assert load_audio(np.zeros(1000, dtype=np.float32), sample_rate=44100).shape == (363,)  # ceil(362.8)


def test_16k_input_is_passed_through_and_silence_is_valid(encoder):
    x = tone(0.5, 16000)
    assert np.array_equal(load_audio(np.stack([x, x]), sample_rate=16000), x)
    silence = load_audio(np.zeros(16000, dtype=np.float64), sample_rate=16000)
    assert silence.dtype == np.float32 and not silence.any()
    assert torch.isfinite(encoder.encode(silence)).all()


def test_audio_file_is_decoded_with_pyav(tmp_path):
    left = tone(1.0, 22050)
    pcm = np.round(np.stack([left, -left], axis=1) * 32767).astype("<i2")  # interleaved stereo
    with wave.open(str(tmp_path / "voice.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes(pcm.tobytes())
    channels, rate = read_audio(tmp_path / "voice.wav")  # as stored
    assert rate == 22050 and channels.shape == (2, 22050) and channels.dtype == np.float32
    np.testing.assert_allclose(channels, np.stack([left, -left]), atol=1e-4)
    samples = load_audio(tmp_path / "voice.wav")
    assert samples.shape == (16000,) and np.abs(samples).max() < 1e-4  # left and -left cancel in the mean
    with wave.open(str(tmp_path / "mono.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.round(tone(0.25, 16000) * 32767).astype("<i2").tobytes())
    np.testing.assert_allclose(load_audio(str(tmp_path / "mono.wav")), tone(0.25, 16000), atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_audio_file_as_a_stream_gives_the_whole_file_numbers(tmp_path, rate):
    """Probe (counts, nothing kept), then decode and resample piece by piece: the numbers `load_audio` gives."""
    left = tone(7.0, rate)  # several decoded pieces at 44.1 kHz
    with wave.open(str(tmp_path / "voice.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(np.round(np.stack([left, 0.5 * left], axis=1) * 32767).astype("<i2").tobytes())
    track = probe_audio_file(tmp_path / "voice.wav")
    assert (track.sample_rate, track.channels, track.length, track.length_16k) == (rate, 2, 7 * rate, 112000)
    pieces = list(mono_16k_pieces(decode_pieces(track), track.sample_rate))
    assert np.array_equal(np.concatenate(pieces), load_audio(tmp_path / "voice.wav"))


@pytest.mark.parametrize("source, kwargs, message", [
    (np.zeros(0, dtype=np.float32), {"sample_rate": 16000}, "empty"),
    (np.array([0.0, np.nan, 0.1], dtype=np.float32), {"sample_rate": 16000}, "1 NaN or infinite"),
    (np.array([[0.0, np.inf, 0.1, 0.2]]), {"sample_rate": 16000}, "NaN or infinite"),
    ({"waveform": torch.zeros(2, 1, 1000), "sample_rate": 16000}, {}, "batch of 2 tracks"),
    ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, {}, "empty"),
    (np.zeros(1000, dtype=np.int16), {"sample_rate": 16000}, "x / 32768"),
    (np.zeros(1000, dtype=np.float32), {}, "needs its sample rate"),
    (np.zeros((1000, 2), dtype=np.float32), {"sample_rate": 16000}, "pass it transposed"),
    (np.zeros(1000, dtype=np.float32), {"sample_rate": 0}, "sample rate must be positive"),
    ("/nonexistent/voice.wav", {}, "not found"),
])
def test_audio_input_errors(source, kwargs, message):
    with pytest.raises(AudioInputError, match=message):
        load_audio(source, **kwargs)


def test_unreadable_file(tmp_path):
    (tmp_path / "broken.mp3").write_bytes(b"this is not audio" * 100)
    with pytest.raises(AudioInputError, match="cannot decode .*broken.mp3"):
        load_audio(tmp_path / "broken.mp3")
    assert issubclass(AudioInputError, ValueError)


# --- features and windows ------------------------------------------------------------------------------------------

def test_normalisation_and_frame_count(encoder):
    x = np.linspace(-1, 3, 20000)  # float64: cast to float32 first
    values = encoder.normalize(x)
    assert values.dtype == np.float32
    assert abs(values.mean()) < 1e-6 and abs(values.std() - 1) < 1e-5
    assert encoder.encode(x).shape == (31, 12, 32)  # int(20000 * 25 / 16000): not a 2:1 decimation
    with pytest.raises(AudioInputError, match="shorter than one video frame"):
        encoder.encode(np.zeros(639, dtype=np.float32))


def test_frame_windows_clamp_to_the_encoded_frames():
    features = torch.arange(200.0)[:, None, None]  # [T, L, H] = [200, 1, 1]
    head = frame_windows(features, 0, 3)[0, :, :, 0, 0]
    assert head.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
    tail = frame_windows(features, 167, 200)
    assert tail.shape == (1, 33, 5, 1, 1)
    assert tail[0, 0, :, 0, 0].tolist() == [165, 166, 167, 168, 169]
    assert tail[0, -1, :, 0, 0].tolist() == [197, 198, 199, 199, 199]


# --- 'once' mode ---------------------------------------------------------------------------------------------------

def test_once_mode_padding():
    assert once_mode_length(48000, 28) == 56960  # the fixture's length
    assert once_mode_length(100, 28) == once_mode_length(21120, 28) == 21120  # short audio: one whole chunk
    assert once_mode_length(21121, 24) == 21120 + 15360
    padded = pad_for_once_mode(np.ones(30000, dtype=np.float32), 24)
    assert padded.shape == (36480,) and padded[:30000].all() and not padded[30000:].any()


@pytest.mark.parametrize("num_samples, new_frames", [(5000, 28), (48000, 28), (21120 + 2 * 15360, 24), (80160, 24)])
def test_once_mode_covers_every_frame(encoder, speech, num_samples, new_frames):
    samples = speech[:num_samples]
    chunks = list(once_mode_chunks(encoder, samples, new_frames))
    features = encoder.encode(pad_for_once_mode(samples, new_frames))
    total = len(features)
    official = (total - 33) // new_frames
    assert len(chunks) == official + 1  # the official loop's k, plus the last chunk it drops
    kept = set(range(33))  # chunk 0 keeps all 33 frames, later chunks their last new_frames
    for j, windows in enumerate(chunks):
        assert windows.shape == (1, 33, 5, 12, 32)
        assert torch.equal(windows, frame_windows(features, j * new_frames, j * new_frames + 33))
        if j:
            kept |= set(range(j * new_frames + 33 - new_frames, j * new_frames + 33))
    assert kept == set(range(total)) and total >= math.ceil(num_samples / 640)


# --- the Temporal Audio Context Cache ------------------------------------------------------------------------------

def test_cache_is_a_fifo_of_the_configured_length(encoder):
    cache = AudioContextCache(encoder, context_seconds=2.0)
    assert cache.buffer.shape == (32000,) and not cache.buffer.any()
    a, b, c = (np.full(15000, v, dtype=np.float32) for v in (1.0, 2.0, 3.0))
    for piece in (a, b):
        cache.push(piece)
    assert np.array_equal(cache.buffer, np.concatenate([np.zeros(2000), a, b]))
    windows = cache.push(c)
    assert np.array_equal(cache.buffer, np.concatenate([a[-2000:], b, c]))
    features = encoder.encode(cache.buffer)
    assert len(features) == 50 and torch.equal(windows, frame_windows(features, 17, 50))
    with pytest.raises(ValueError, match="shorter than one chunk"):
        AudioContextCache(encoder, context_seconds=1.0)
    with pytest.raises(ValueError, match="at most 32000 samples"):
        cache.push(np.zeros(32001, dtype=np.float32))


def test_stream_mode_over_a_track(encoder, speech):
    new_frames, track = 28, speech[:30000]
    slices = list(stream_slices(track, new_frames))
    joined = np.concatenate(slices)
    assert [len(piece) for piece in slices] == [17920, 17920]
    assert np.array_equal(joined[:30000], track) and not joined[30000:].any()
    in_pieces = list(stream_slices(iter(np.split(track, [1000, 1000, 20000])), new_frames))  # one piece empty
    assert len(in_pieces) == 2 and all(np.array_equal(a, b) for a, b in zip(in_pieces, slices))
    chunks = list(stream_chunks(encoder, track, new_frames))
    assert len(chunks) == len(slices)
    # chunk 1 = the last 33 frames of the default 8-s context: zeros, then slices 0 and 1
    context = np.concatenate([np.zeros(128000 - 2 * 17920, dtype=np.float32), slices[0], slices[1]])
    features = encoder.encode(context)
    assert len(features) == 200
    assert chunks[1].shape == (1, 33, 5, 12, 32)
    assert torch.equal(chunks[1], frame_windows(features, 167, 200))
    assert not torch.equal(chunks[0], chunks[1])
