"""Batched streams (flashhead_core/batch.py): a batched DiT forward equals per-sample forwards, each stream's frames
equal its single-stream run, streams of different lengths, and unequal counts refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import SIZE

from flashhead_core.audio import load_audio
from flashhead_core.generation.batch import batch_talking_heads, check_pairs, check_sessions, stack_tracks
from flashhead_core.errors import AudioInputError, BatchError, InputError
from flashhead_core.pipeline import load_pipeline
from flashhead_core.generation.session import StreamingSession
from flashhead_core.generation.run import stream_talking_head
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech

CONTEXT = 2.0
# Not bit-exact: the matrix multiplications round differently with N rows than with one (the first difference is in
# the audio projection's first Linear, 3e-8), and each chunk's motion latents carry the difference into the next,
# where the random weights amplify it. Measured on the tiny models (CPU): DiT forward max |diff| 1.7e-6 (Lite) /
# 2.2e-6 (Pro) in float32; frames (0..1) after 2 chunks 3.8e-5 / 3.4e-5; over 8 chunks see LONG_RUN_PSNR.
FORWARD_TOLERANCE = 1e-5
FRAME_TOLERANCE = 2e-4
# Frame PSNR (dB, frames in 0..1) of a batched stream against its single run over 8 chunks, with the margin below
# what was measured (2 streams, 64x64): float32 69-93 dB (Lite), bfloat16 24-26 dB (Lite).
LONG_RUN_PSNR = {torch.float32: 55.0, torch.bfloat16: 15.0}


@pytest.fixture(scope="module", params=["lite", "pro"])
def pipeline(request, tmp_path_factory):
    root = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return load_pipeline(root, variant=request.param)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 200
    return [synthetic_portrait(root / "a.png", 96), red, synthetic_portrait(root / "b.png", 72)]


def test_batched_forward_equals_per_sample_forwards(pipeline):
    model, config = pipeline.model, pipeline.model.config
    g = torch.Generator().manual_seed(0)
    shape = (3, config.out_dim, 1 + (33 - 1) // config.t_stride, SIZE // config.vae_stride[1],
             SIZE // config.vae_stride[2])
    z, ref = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    windows = torch.randn(3, 33, 5, 12, config.audio_channels, generator=g)
    with torch.no_grad():
        tokens = model.audio_proj(windows)
        batched = model(z, torch.tensor([937.5]), ref, model.audio_context(tokens))
        single = torch.cat([model(z[i:i + 1], torch.tensor([937.5]), ref[i:i + 1], model.audio_proj(windows[i:i + 1]))
                            for i in range(3)])
    difference = (batched - single).abs().max().item()
    print(f"batched vs per-sample DiT forward: max |diff| = {difference:.2e}")
    assert difference <= FORWARD_TOLERANCE * max(1.0, single.abs().max().item())


def single_stream(pipeline, image, samples, seed):
    s = StreamingSession(pipeline.model, pipeline.vae, height=SIZE, width=SIZE, seed=seed)
    s.add_identity("face", image)
    return torch.cat(list(stream_talking_head(s, pipeline.audio_encoder, samples, "stream", CONTEXT)))


def test_each_stream_equals_its_single_stream_run(pipeline, faces):
    new = pipeline.model.config.new_frames
    tracks = [synthetic_speech(2 * new / 25 + 0.2, seed=1), synthetic_speech(new / 25, seed=2),  # unequal lengths
              synthetic_speech(2 * new / 25, seed=3)]
    batched = batch_talking_heads(pipeline.model, pipeline.vae, pipeline.audio_encoder, faces, tracks, height=SIZE,
                                  width=SIZE, seed=10, context_seconds=CONTEXT)
    worst = 0.0
    for i, (image, track) in enumerate(zip(faces, tracks)):
        alone = single_stream(pipeline, image, track, 10 + i)
        assert batched[i].shape == alone.shape == (round(len(track) / 640), SIZE, SIZE, 3)
        worst = max(worst, (batched[i] - alone).abs().max().item())
    print(f"batched vs single-stream frames: max |diff| = {worst:.2e}")
    assert worst <= FRAME_TOLERANCE


def test_unequal_counts_are_refused_before_any_work(pipeline, faces):
    with pytest.raises(BatchError, match="3 portrait.*2 audio track.*as many of each"):
        batch_talking_heads(pipeline.model, pipeline.vae, pipeline.audio_encoder, faces,
                            [synthetic_speech(0.5)] * 2, height=SIZE, width=SIZE)
    with pytest.raises(BatchError, match="no stream"):
        check_pairs([], [])
    assert issubclass(BatchError, InputError)
    lite_session = StreamingSession(pipeline.model, pipeline.vae, height=SIZE, width=SIZE)
    other = StreamingSession(pipeline.model, pipeline.vae, height=2 * SIZE, width=2 * SIZE)
    with pytest.raises(BatchError, match="one size"):
        check_sessions([lite_session, other])


def test_stacked_tracks_are_what_the_model_hears_padded_with_silence_to_the_longest():
    rng = np.random.default_rng(0)
    stereo_44k = rng.uniform(-0.5, 0.5, (2, 44100)).astype(np.float32)  # 1 s
    mono_24k = rng.uniform(-0.5, 0.5, (1, 12000)).astype(np.float32)  # 0.5 s
    tracks = [{"waveform": torch.from_numpy(stereo_44k)[None], "sample_rate": 44100},
              {"waveform": torch.from_numpy(mono_24k)[None], "sample_rate": 24000}]
    waveform, rate = stack_tracks(tracks)
    assert rate == 16000 and waveform.shape == (2, 1, 16000) and waveform.dtype == np.float32
    np.testing.assert_array_equal(waveform[0, 0], load_audio(tracks[0]))
    np.testing.assert_array_equal(waveform[1, 0, :8000], load_audio(tracks[1]))
    assert not waveform[1, 0, 8000:].any()
    with pytest.raises(BatchError, match="at least one"):
        stack_tracks([])
    with pytest.raises(AudioInputError, match="batch of 2 tracks"):  # each input must be one track
        stack_tracks([{"waveform": torch.zeros(2, 1, 1600), "sample_rate": 16000}])


@pytest.mark.slow
@pytest.mark.parametrize("variant, dtype", [("lite", torch.float32), ("pro", torch.float32), ("lite", torch.bfloat16)],
                         ids=["lite-float32", "pro-float32", "lite-bf16"])  # bf16 on the CPU is slow: one variant
def test_over_eight_chunks_a_batched_stream_stays_within_the_stated_bound_of_its_single_run(variant, dtype, faces,
                                                                                            tmp_path):
    """The README's promise for batched streams: float32 within LONG_RUN_PSNR of the single run after 8 chunks, and
    the first chunk within FRAME_TOLERANCE; bf16 only within LONG_RUN_PSNR[bf16] (a different, equally valid video)."""
    model = load_pipeline(write_tiny_checkpoint(tmp_path / variant, variant), variant=variant, dtype=dtype)
    new = model.model.config.new_frames
    tracks = [synthetic_speech(8 * new / 25, seed=s) for s in (4, 5)]
    batched = batch_talking_heads(model.model, model.vae, model.audio_encoder, faces[:2], tracks, height=SIZE,
                                  width=SIZE, seed=20, context_seconds=CONTEXT)
    for i in range(2):
        alone = single_stream(model, faces[i], tracks[i], 20 + i)
        mse = ((batched[i] - alone) ** 2).mean().item()
        psnr = 10 * np.log10(1 / mse) if mse else float("inf")
        first_chunk = (batched[i][:new] - alone[:new]).abs().max().item()
        print(f"{variant} {dtype} stream {i}: {psnr:.1f} dB over 8 chunks, first chunk max |diff| {first_chunk:.1e}")
        assert psnr >= LONG_RUN_PSNR[dtype]
        if dtype == torch.float32:
            assert first_chunk <= FRAME_TOLERANCE
