"""The identity timeline (flashhead_core.generation.timeline): several portraits in one run, switching at chunk boundaries with
a clean cut. Each segment equals a run with that portrait alone where it should: the first segment is the first
portrait's own run, frame for frame; a later segment is that portrait's run started at the switching chunk (the same
noise draws and audio windows, the motion restarting from its reference). Bad timelines fail before any chunk,
leaving nothing written. Tiny models at 64x64."""

from __future__ import annotations

import pytest
import torch

from flashhead_core.pipeline import load_pipeline, write_talking_video
from flashhead_core.generation.session import StreamingSession
from flashhead_core.generation.chunks import audio_chunks, new_images
from flashhead_core.generation.run import stream_talking_head
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_speech
from flashhead_core.generation.timeline import (
    Timeline,
    TimelineError,
    chunk_of_frame,
    first_new_frame,
    parse_timeline,
    switch_plan,
)

SIZE = 64


@pytest.fixture(scope="module", params=["pro", "lite"])
def pipeline(request, tmp_path_factory):
    root = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return load_pipeline(root, variant=request.param)


def track(samples):
    """A ComfyUI AUDIO dict of 16 kHz mono samples."""
    return {"waveform": torch.from_numpy(samples)[None, None].float(), "sample_rate": 16000}


def portrait(seed: int) -> torch.Tensor:
    return torch.rand(1, 80, 72, 3, generator=torch.Generator().manual_seed(seed))


def alone(pipeline, image, samples, mode="stream", from_chunk=0, seed=0) -> torch.Tensor:
    """One portrait's frames from chunk `from_chunk` on, as a run that started there: the noise RNG advanced by the
    earlier chunks' draws (5 each), the motion starting from the portrait's reference."""
    session = StreamingSession(pipeline.model, pipeline.vae, height=SIZE, width=SIZE, seed=seed)
    session.add_identity("face", image)
    if from_chunk == 0:
        return torch.cat(list(stream_talking_head(session, pipeline.audio_encoder, samples, mode)))
    for _ in range(5 * from_chunk):
        torch.randn(session.latent_shape, generator=session.noise_generator)
    total = round(len(samples) * 25 / 16000)
    emitted = first_new_frame(from_chunk, mode, session.config.new_frames)
    out = []
    for index, windows in enumerate(audio_chunks(pipeline.audio_encoder, samples, mode, session.config.new_frames)):
        if index < from_chunk or emitted >= total:
            continue
        out.append(new_images(session.generate_chunk(windows), index, mode, session.config.motion_frames,
                              total - emitted))
        emitted += out[-1].shape[0]
    return torch.cat(out)


def test_rounding_and_the_switch_plan():
    # stream: chunk j's new frames are [j * n, (j + 1) * n); once: chunk 0 holds 0-32, then 33 + (j - 1) * n
    assert [chunk_of_frame(f, "stream", 28) for f in (0, 27, 28, 55, 56)] == [0, 0, 1, 1, 2]
    assert [chunk_of_frame(f, "once", 24) for f in (0, 32, 33, 56, 57)] == [0, 0, 1, 1, 2]
    assert [first_new_frame(c, "once", 24) for c in (0, 1, 2)] == [0, 33, 57]
    timeline = Timeline.of([("a", 0), ("b", 1.1), ("c", 2.3)])  # frames 0, 28 (1.1 * 25 = 27.5, half to even), 58
    assert switch_plan(timeline, 100, "stream", 28) == {0: 0, 1: 1, 2: 2}
    with pytest.raises(TimelineError, match="same chunk"):  # 1.08 s -> frame 27, still chunk 0
        switch_plan(Timeline.of([("a", 0), ("b", 1.08)]), 100, "stream", 28)
    assert switch_plan(Timeline.of([("a", 0), ("b", 2.2)]), 100, "once", 24) == {0: 0, 1: 1}  # frame 55: chunk 1


@pytest.mark.parametrize("timeline, message", [
    ([("a", 0), ("b", 3.0)], "past the end of the audio"),
    ([("a", 0), ("b", 2.0), ("c", 1.5)], "out of order"),
    ([("a", 0.5), ("b", 2.0)], "must start at 0"),
    ([("a", 0), ("b", 0.2)], "same chunk"),
    ([("a", 0), ("b", float("nan"))], "finite"),
    ([], "empty"),
])
def test_bad_timelines_are_refused(timeline, message):
    with pytest.raises(TimelineError, match=message):
        switch_plan(Timeline.of(timeline), 75, "stream", 28)  # 3 s of audio


def test_parse_timeline():
    timeline = parse_timeline("faces/anna.png@0, faces/ben@work.png@4.5")
    assert [(e.image, e.start, e.label) for e in timeline.entries] == [
        ("faces/anna.png", 0.0, "faces/anna.png"), ("faces/ben@work.png", 4.5, "faces/ben@work.png")]
    for bad in ("anna.png", "anna.png@soon"):
        with pytest.raises(TimelineError, match="timeline entry"):
            parse_timeline(bad)


def test_each_segment_equals_that_portrait_alone(pipeline, tmp_path):
    new = pipeline.model.config.new_frames
    samples = synthetic_speech(3 * new * 640 / 16000 - 0.3, seed=1)  # three chunks, the last one trimmed
    a, b = portrait(1), portrait(2)
    cut = (new + 3) / 25  # frame new + 3 -> chunk 1: B takes over at frame `new`
    frames = []
    summary = write_talking_video(pipeline, Timeline.of([(a, 0), (b, cut)]), track(samples), tmp_path / "t.mp4",
                                   height=SIZE, width=SIZE, on_frames=lambda f, *_: frames.append(f))
    frames = torch.cat(frames)
    assert summary.timeline == [{"portrait": "portrait 1", "start": 0, "chunk": 0, "frame": 0},
                                   {"portrait": "portrait 2", "start": cut, "chunk": 1, "frame": new}]
    assert frames.shape[0] == round(len(samples) * 25 / 16000) and (tmp_path / "t.mp4").is_file()
    torch.testing.assert_close(frames[:new], alone(pipeline, a, samples)[:new], rtol=0, atol=0)
    torch.testing.assert_close(frames[new:], alone(pipeline, b, samples, from_chunk=1), rtol=0, atol=0)
    # and it really switched: the second segment is not A's continuation
    assert not torch.allclose(frames[new:], alone(pipeline, a, samples)[new:])


def test_once_mode_segments(pipeline, tmp_path):
    if pipeline.model.config.variant != "pro":
        pytest.skip("one variant is enough for once mode")
    new = pipeline.model.config.new_frames
    samples = synthetic_speech((33 + new) * 640 / 16000, seed=2)  # chunk 0 (33 frames) + chunk 1
    a, b = portrait(3), portrait(4)
    frames = []
    write_talking_video(pipeline, Timeline.of([(a, 0), (b, 34 / 25)]), track(samples), tmp_path / "o.mp4",
                         height=SIZE, width=SIZE, mode="once", on_frames=lambda f, *_: frames.append(f))
    frames = torch.cat(frames)
    torch.testing.assert_close(frames[:33], alone(pipeline, a, samples, "once")[:33], rtol=0, atol=0)
    torch.testing.assert_close(frames[33:], alone(pipeline, b, samples, "once", from_chunk=1), rtol=0, atol=0)


def test_bad_timeline_fails_before_any_chunk_and_writes_nothing(pipeline, tmp_path):
    if pipeline.model.config.variant != "pro":
        pytest.skip("one variant is enough")
    samples = synthetic_speech(2.0)
    steps = []
    out = tmp_path / "out"
    out.mkdir()
    for timeline in ([(portrait(1), 0), (portrait(2), 2.5)], [(portrait(1), 0), (portrait(2), 1.5),
                                                              (portrait(3), 1.2)]):
        with pytest.raises(TimelineError):
            write_talking_video(pipeline, Timeline.of(timeline), track(samples), out / "x.mp4", height=SIZE,
                                 width=SIZE, on_step=lambda *a: steps.append(a))
    assert steps == [] and list(out.iterdir()) == []


def test_cli_timeline(pipeline, tmp_path, capsys):
    if pipeline.model.config.variant != "pro":
        pytest.skip("one variant is enough")
    from PIL import Image

    from flashhead_core.testing.media import write_wav
    from flashhead_core.tools.cli import main

    root = write_tiny_checkpoint(tmp_path / "ckpt", "pro")
    for i in (1, 2):
        Image.fromarray((portrait(i)[0].numpy() * 255).astype("uint8")).save(tmp_path / f"f{i}.png")
    wav = write_wav(tmp_path / "s.wav", synthetic_speech(2.0))
    base = ["generate", "--checkpoint", str(root), "--audio", str(wav), "--size", f"{SIZE}x{SIZE}", "--device", "cpu"]
    timeline = f"{tmp_path / 'f1.png'}@0,{tmp_path / 'f2.png'}@1.2"
    assert main(base + ["--out", str(tmp_path / "t.mp4"), "--timeline", timeline]) == 0
    assert (tmp_path / "t.mp4").is_file()
    assert '"chunk": 1' in capsys.readouterr().out
    # past the audio: one error line, exit 1, nothing written
    assert main(base + ["--out", str(tmp_path / "bad.mp4"), "--timeline", timeline.replace("@1.2", "@2.5")]) == 1
    assert "past the end of the audio" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()
    assert main(base + ["--out", str(tmp_path / "bad.mp4"), "--timeline", timeline,
                        "--image", str(tmp_path / "f1.png")]) == 1
    assert "not both" in capsys.readouterr().err


def test_a_timeline_run_ends_in_a_state_that_continues_it(pipeline, tmp_path):
    """The one chunk loop gives timelines the continuation of single portraits: a timeline run over the first two
    chunks, continued with the portrait it ended on, equals the timeline run over all the speech."""
    new = pipeline.model.config.new_frames
    samples = synthetic_speech(3 * new * 640 / 16000, seed=5)
    a, b = portrait(5), portrait(6)
    timeline = Timeline.of([(a, 0), (b, new / 25)])
    whole, first, second, states = [], [], [], []
    write_talking_video(pipeline, timeline, track(samples), tmp_path / "whole.mp4", height=SIZE, width=SIZE,
                        on_frames=lambda f, *_: whole.append(f))
    write_talking_video(pipeline, timeline, track(samples[:2 * new * 640]), tmp_path / "a.mp4", height=SIZE,
                        width=SIZE, on_frames=lambda f, *_: first.append(f), on_state=states.append)
    write_talking_video(pipeline, b, track(samples[2 * new * 640:]), tmp_path / "b.mp4", height=SIZE, width=SIZE,
                        continue_from=states[0], on_frames=lambda f, *_: second.append(f))
    assert torch.equal(torch.cat(first + second), torch.cat(whole))
    with pytest.raises(TimelineError, match="cannot continue a state"):
        write_talking_video(pipeline, timeline, track(samples), tmp_path / "x.mp4", height=SIZE, width=SIZE,
                            continue_from=states[0])
