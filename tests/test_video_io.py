"""The MP4 writer (atomic, streaming, audio trimmed to the video), file facts, and frame conversions."""

from __future__ import annotations

import errno
import os
import tracemalloc

import av
import numpy as np
import pytest
import torch

from flashhead_core.errors import VideoWriteError
from flashhead_core.media.frames import images_to_uint8, video_to_images
from flashhead_core.media.video_io import AudioStream, VideoWriter, read_video_info

WIDTH, HEIGHT = 64, 48


def _frames(count: int, value: int = 100) -> np.ndarray:
    return np.full((count, HEIGHT, WIDTH, 3), value, np.uint8)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- written files, read back with PyAV ----------------------------------------------------------------------------

def test_frames_fps_size_and_audio_trimmed_to_the_video(tmp_path):
    audio = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1  # 3 s for 2 s of video
    with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=(audio, 16000)) as writer:
        writer.write(_frames(28))
        writer.write(torch.rand(22, HEIGHT, WIDTH, 3))  # float 0..1 chunks work too
    info = read_video_info(tmp_path / "out.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (50, 25.0, WIDTH, HEIGHT)
    assert info.duration == 2.0
    assert info.audio_duration == 2.0  # exactly 50 / 25 s = 32000 samples, not the 3 s given
    assert (info.audio_sample_rate, info.audio_channels) == (16000, 1)
    assert _files(tmp_path) == ["out.mp4"]


@pytest.mark.parametrize("channels_first", [False, True])
def test_short_stereo_audio_is_padded_to_the_video(tmp_path, channels_first):
    audio = np.zeros((44100 // 2, 2), np.float32)  # 0.5 s for 1.2 s of video
    with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=(audio.T if channels_first else audio, 44100)) as w:
        w.write(_frames(30))
    info = read_video_info(tmp_path / "out.mp4")
    assert (info.frames, info.audio_duration, info.audio_sample_rate, info.audio_channels) == (30, 1.2, 44100, 2)


def test_audio_stream_is_read_as_the_video_goes(tmp_path):
    """An AudioStream's pieces (any sizes) are pulled only as far as the frames written need."""
    pulled = []

    def pieces():
        for index in range(100):  # 100 x 0.1 s at 16 kHz, far more than the video needs
            pulled.append(index)
            yield np.full((1600, 1), 0.1, np.float32)

    with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=AudioStream(pieces(), 16000, 1)) as writer:
        writer.write(_frames(5))
        assert len(pulled) == 2  # 0.2 s of video
        writer.write(_frames(20))
    info = read_video_info(tmp_path / "out.mp4")
    assert (info.frames, info.audio_duration, info.audio_sample_rate, info.audio_channels) == (25, 1.0, 16000, 1)
    assert len(pulled) == 10


def test_video_without_audio_and_decoded_colours(tmp_path):
    colour = np.array([200, 40, 90], np.uint8)
    with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT) as writer:
        writer.write(np.broadcast_to(colour, (3, HEIGHT, WIDTH, 3)))
    info = read_video_info(tmp_path / "out.mp4")
    assert info.frames == 3 and info.audio_duration is None and info.audio_channels is None
    with av.open(str(tmp_path / "out.mp4")) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(decoded.astype(int) - colour).max() <= 3  # BT.709 tagged and converted consistently


def test_missing_or_foreign_video_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        read_video_info(tmp_path / "nothere.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="cannot read .*notes.mp4"):
        read_video_info(tmp_path / "notes.mp4")


# --- the partial file ----------------------------------------------------------------------------------------------

def test_partial_file_naming_and_atomic_rename(tmp_path):
    (tmp_path / "out.mp4").write_bytes(b"old")  # replaced only on success
    with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT) as writer:
        writer.write(_frames(60))  # enough to get past x264's lookahead, so packets reach the file
        names = _files(tmp_path)
        partial = [n for n in names if n != "out.mp4"]
        assert len(partial) == 1 and partial[0].startswith(".out.mp4.") and partial[0].endswith(".partial")
        assert (tmp_path / "out.mp4").read_bytes() == b"old"
    assert _files(tmp_path) == ["out.mp4"] and read_video_info(tmp_path / "out.mp4").frames == 60


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_write_leaves_nothing(tmp_path, error):
    with pytest.raises(error):
        with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=(np.zeros(16000, np.float32), 16000)) as w:
            w.write(_frames(60))
            raise error()
    assert _files(tmp_path) == []


def test_abort_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    (tmp_path / "out.mp4").write_bytes(b"old")
    writer = VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT)
    writer.write(_frames(60))
    assert len(_files(tmp_path)) == 2  # out.mp4 and the partial file
    writer.abort()
    writer.close()  # no-op after abort
    assert _files(tmp_path) == ["out.mp4"] and (tmp_path / "out.mp4").read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(_frames(1))


@pytest.mark.parametrize("failure, raised, message", [
    (OSError(errno.ENOSPC, "No space left on device"), VideoWriteError, "out.mp4.*No space left.*disk full"),
    (KeyboardInterrupt(), KeyboardInterrupt, None),
])
def test_failing_write_outside_a_with_block_cleans_up(tmp_path, monkeypatch, failure, raised, message):
    """Disk full (ENOSPC from the muxer, simulated by wrapping the container) or Ctrl-C inside write() -> the error,
    no partial file, no output, even without a `with` block."""
    real_open = av.open

    class FailingContainer:
        def __init__(self, container):
            self.container, self.muxed = container, 0

        def mux(self, packets):
            self.muxed += bool(packets)
            if self.muxed > 3:  # after the file was created and a few packets went in
                raise failure
            self.container.mux(packets)

        def __getattr__(self, name):
            return getattr(self.container, name)

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: FailingContainer(real_open(*args, **kwargs)))
    writer = VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT)
    with pytest.raises(raised, match=message):
        for _ in range(100):
            writer.write(_frames(2))
    assert _files(tmp_path) == []


def test_bad_sizes_and_inputs(tmp_path):
    with pytest.raises(ValueError, match="even sizes"):
        VideoWriter(tmp_path / "out.mp4", 63, 48)
    with pytest.raises(VideoWriteError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "out.mp4", WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="cannot be stored as AAC"):
        VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=(np.zeros(100, np.float32), 12345))
    with pytest.raises(ValueError, match="1 or 2 channels"):
        VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=(np.zeros((100, 6), np.float32), 16000))
    with pytest.raises(ValueError, match=rf"\[T, {HEIGHT}, {WIDTH}, 3\]"):
        with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT) as writer:
            writer.write(np.zeros((2, WIDTH, HEIGHT, 3), np.uint8))
    assert _files(tmp_path) == []


# --- memory --------------------------------------------------------------------------------------------------------

def test_many_small_chunks_do_not_accumulate(tmp_path):
    """Python/numpy memory after 150 more chunks equals that after 10: no frame is kept (one chunk is 9 kB,
    150 kept chunks would be 1.4 MB)."""
    audio = np.zeros(16000 * 20, np.float32)
    with VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=(audio, 16000)) as writer:
        tracemalloc.start()
        for _ in range(10):
            writer.write(_frames(1))
        assert np.shares_memory(writer._audio._queue[0], audio)  # the audio still to mux is a view, not a copy
        warm = tracemalloc.get_traced_memory()[0]
        for i in range(150):
            writer.write(_frames(1, value=i))
        grown = tracemalloc.get_traced_memory()[0] - warm
        tracemalloc.stop()
    assert grown < 200_000, grown
    assert read_video_info(tmp_path / "out.mp4").frames == 160


# --- frame conversions ---------------------------------------------------------------------------------------------

def test_frame_conversions():
    video = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.2]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 2, 4)
    images = video_to_images(video)
    assert images.shape == (5, 2, 4, 3) and images.dtype == torch.float32
    assert images[:, 0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert images_to_uint8(video_to_images(video))[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    assert torch.equal(video_to_images(video[0]), images)
    pixels = np.arange(256, dtype=np.uint8)
    assert images_to_uint8(pixels) is pixels
    assert np.array_equal(images_to_uint8(torch.from_numpy(pixels).float() / 255), pixels)
    with pytest.raises(ValueError, match="batch of 2"):
        video_to_images(video.expand(2, -1, -1, -1, -1))


# --- reproducible bytes --------------------------------------------------------------------------------------------

def _encode_noise(path) -> bytes:
    """12 frames of noise, 128x256 (16 macroblock rows: room for several x264 slices), with a tone."""
    frames = np.random.default_rng(7).integers(0, 256, (12, 256, 128, 3), dtype=np.uint8)
    tone = (0.2 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    with VideoWriter(path, 128, 256, audio=(tone, 16000)) as writer:
        writer.write(frames[:5])
        writer.write(frames[5:])
    return path.read_bytes()


def test_the_same_frames_give_the_same_bytes_with_any_number_of_cpus(tmp_path):
    """libx264 sizes its threads (and so its slices and references) by the CPUs the process may use; the writer
    fixes the count, so one CPU and all of them write the same file (before: different H.264 packets)."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("one CPU here: the CPU count the encoder sees cannot be varied")
    everywhere = _encode_noise(tmp_path / "all.mp4")
    os.sched_setaffinity(0, {min(cpus)})  # this thread, and the encoder threads it starts
    try:
        on_one = _encode_noise(tmp_path / "one.mp4")
    finally:
        os.sched_setaffinity(0, cpus)
    assert on_one == everywhere
    assert _encode_noise(tmp_path / "again.mp4") == everywhere
