"""Streaming generation end to end on tiny checkpoints: session, audio modes, identities, cancellation, video out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import SIZE, generated_frames

from flashhead_core.errors import AudioInputError, ImageError, InputError, SizeError
from flashhead_core.media.image import reference_tensor
from flashhead_core.pipeline import load_pipeline, write_talking_video
from flashhead_core.generation.sampler import GenerationCancelled
from flashhead_core.generation.session import StreamingSession
from flashhead_core.generation.chunks import video_frame_count
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech, write_wav
from flashhead_core.tools.cli import main as cli_main
from flashhead_core.media.video_io import read_video_info


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"image": synthetic_portrait(root / "face.png", 96),
            "speech": write_wav(root / "speech.wav", synthetic_speech(1.3)),
            "samples": synthetic_speech(1.3)}


@pytest.fixture(scope="module", params=["lite", "pro"])
def pipeline(request, tmp_path_factory):
    root = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return load_pipeline(root, variant=request.param)


@pytest.mark.parametrize("mode", ["stream", "once"])
def test_frame_count_covers_the_audio_exactly(pipeline, assets, mode):
    frames = generated_frames(pipeline, assets["image"], assets["samples"], mode)
    assert frames.shape == (video_frame_count(len(assets["samples"])), SIZE, SIZE, 3)
    assert frames.shape[0] == round(1.3 * 25)
    assert frames.dtype == torch.float32 and 0 <= frames.min() and frames.max() <= 1


def test_reproducible_from_seed(pipeline, assets):
    a = generated_frames(pipeline, assets["image"], assets["samples"], seed=3)
    assert torch.equal(a, generated_frames(pipeline, assets["image"], assets["samples"], seed=3))
    assert not torch.equal(a, generated_frames(pipeline, assets["image"], assets["samples"], seed=4))


def test_colours_follow_the_reference(pipeline, assets, tmp_path):
    """Colour correction pulls every frame's colour statistics to the reference (random weights make no face)."""
    reference = (reference_tensor(assets["image"], SIZE, SIZE)[0, :, 0] + 1) / 2  # [3, H, W]
    frames = generated_frames(pipeline, assets["image"], assets["samples"])
    first = frames[0].permute(2, 0, 1)
    assert torch.allclose(first.mean(dim=(1, 2)), reference.mean(dim=(1, 2)), atol=0.05)


def test_identity_switch_between_chunks(pipeline, assets, tmp_path):
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 200
    red[20:60, 20:60] = (250, 120, 120)
    session = StreamingSession(pipeline.model, pipeline.vae, height=SIZE, width=SIZE)
    session.add_identity("face", assets["image"])
    session.add_identity("red", red)
    assert session.active == "face"
    windows = torch.zeros(1, 33, 5, 12, pipeline.model.config.audio_channels)
    face_chunk = session.generate_chunk(windows)
    session.use_identity("red")
    red_chunk = session.generate_chunk(windows)
    assert session.motion_latents.shape[2] == 2
    red_mean, face_mean = red_chunk[0, 0].mean().item(), face_chunk[0, 0].mean().item()  # red channel in [-1, 1]
    assert red_mean > face_mean + 0.3
    with pytest.raises(InputError, match="unknown identity 'nobody'; prepared: face, red"):
        session.use_identity("nobody")


def test_cancellation_leaves_no_file(pipeline, assets, tmp_path):
    calls = []

    def cancel_on_third_check():
        calls.append(1)
        return len(calls) >= 3

    out = tmp_path / "cancelled.mp4"
    with pytest.raises(GenerationCancelled):
        write_talking_video(pipeline, assets["image"], assets["speech"], out, height=SIZE, width=SIZE,
                            should_cancel=cancel_on_third_check)
    assert list(tmp_path.iterdir()) == []
    # the same pipeline still works afterwards
    write_talking_video(pipeline, assets["image"], assets["speech"], out, height=SIZE, width=SIZE)
    assert read_video_info(out).frames == round(1.3 * 25)


def test_bad_inputs_fail_before_any_file(pipeline, assets, tmp_path):
    out = tmp_path / "x.mp4"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError):
        write_talking_video(pipeline, tmp_path / "broken.png", assets["speech"], out, height=SIZE, width=SIZE)
    multiple = pipeline.model.config.spatial_multiple
    with pytest.raises(SizeError, match=f"use {multiple * 2} or {multiple * 3}"):
        write_talking_video(pipeline, assets["image"], assets["speech"], out, height=multiple * 2 + 8, width=SIZE)
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioInputError):
        write_talking_video(pipeline, assets["image"], empty, out, height=SIZE, width=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "empty.wav"]


def test_cli_generate_writes_mp4_with_audio(tmp_path, assets):
    root = write_tiny_checkpoint(tmp_path / "ckpt", "pro")
    out = tmp_path / "talk.mp4"
    assert cli_main(["generate", "--checkpoint", str(root), "--image", str(assets["image"]), "--audio",
                     str(assets["speech"]), "--out", str(out), "--size", f"{SIZE}x{SIZE}", "--audio-mode",
                     "once", "--device", "cpu"]) == 0
    info = read_video_info(out)
    assert (info.frames, info.width, info.height, info.fps) == (round(1.3 * 25), SIZE, SIZE, 25.0)
    assert info.audio_duration == pytest.approx(info.duration, abs=0.05)


def test_hooks_follow_every_step_and_chunk_and_memory_is_checked_first(pipeline, assets, tmp_path):
    steps, chunks = [], []
    write_talking_video(pipeline, assets["image"], assets["speech"], tmp_path / "o.mp4", height=SIZE, width=SIZE,
                        on_step=lambda c, s, n: steps.append((c, s, n)),
                        on_frames=lambda frames, written, total: chunks.append((frames.shape, written, total)))
    total = round(1.3 * 25)
    assert chunks[-1][1:] == (total, total) and sum(shape[0] for shape, _, _ in chunks) == total
    assert steps == [(c, s, len(chunks)) for c in range(len(chunks)) for s in range(4)]
    with pytest.raises(SizeError, match="GiB of working memory"):
        write_talking_video(pipeline, assets["image"], assets["speech"], tmp_path / "big.mp4", height=SIZE,
                            width=SIZE, free_memory=1)
    assert not (tmp_path / "big.mp4").exists()


def test_demo_keeps_two_playable_videos_and_their_inputs_where_it_says(tmp_path, monkeypatch, capsys):
    """`flashhead demo` (default workdir ./flashhead-demo): both MP4s stay, with the portrait and speech they came
    from, as long as the speech; every path it printed exists."""
    monkeypatch.chdir(tmp_path)
    assert cli_main(["demo"]) == 0
    folder = tmp_path / "flashhead-demo"
    printed = capsys.readouterr().out
    for name in ("demo_lite.mp4", "demo_pro.mp4", "portrait.png", "speech.wav"):
        assert (folder / name).is_file() and str(folder / name) in printed, name
    for variant in ("lite", "pro"):
        info = read_video_info(folder / f"demo_{variant}.mp4")
        assert info.frames == 75 and abs(info.audio_duration - 3.0) < 0.05, info
