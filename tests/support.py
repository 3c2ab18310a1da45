"""Helpers shared by several test files (imported as `support`; no test file imports another): the command line in
a subprocess with its memory sampled, audio files of any rate, channel count and sample format, 16-bit PNGs, the
frames of one generation, and the check every user error must pass."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from flashhead_core.generation.session import StreamingSession
from flashhead_core.generation.run import stream_talking_head

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # on the grid of both variants (multiples of 32 and 16) and small enough for two CPU cores
LAYOUTS = {1: "mono", 2: "stereo", 8: "7.1"}


# --- the command line -------------------------------------------------------------------------------------------------

def flashhead(*args) -> list[str]:
    """The command `python -m flashhead_core ARGS` (what the `flashhead` script runs)."""
    return [sys.executable, "-m", "flashhead_core", *map(str, args)]


def generate_args(checkpoint, image, audio, out, *extra, width: int = SIZE, height: int = SIZE) -> list[str]:
    """Arguments of `flashhead generate` on the CPU (SIZE x SIZE unless told)."""
    return [str(a) for a in ("generate", "--checkpoint", checkpoint, "--image", image, "--audio", audio, "--out", out,
                             "--size", f"{width}x{height}", "--device", "cpu", *extra)]


def child_environment() -> dict[str, str]:
    """The test's environment with one intra-op thread: the machine is shared and small, and a child spinning two
    OpenMP threads against other processes runs many times slower (memory does not depend on it)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def assert_user_error(stderr: str, *phrases: str) -> None:
    """A user error on the command line: one `flashhead: error:` line naming the problem and the fix, no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("flashhead: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"


@dataclass
class Run:
    """A finished child process: exit code, output, wall time and its memory, sampled once a `interval`."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: list[float] = field(default_factory=list)  # VmRSS at each sample
    peak_mb: float = 0.0  # VmHWM, the kernel's high-water mark of the RSS, at the last sample


class Child:
    """A child process (cwd: the repository) whose stdout and stderr go to temporary files, not pipes: a long run's
    progress bar would fill a pipe and stall the child."""

    def __init__(self, command: list[str], **popen):
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.start = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self._out, stderr=self._err, text=True, cwd=REPO,
                                        env=child_environment(), **popen)
        self.rss_mb: list[float] = []
        self.peak_mb = 0.0

    def sample_memory(self) -> None:
        """Read VmRSS and VmHWM from /proc (skipped if the child has just exited)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        if len(fields) == 2:  # a zombie has no memory lines
            self.rss_mb.append(int(fields["VmRSS"]) / 1024)
            self.peak_mb = max(self.peak_mb, int(fields["VmHWM"]) / 1024)

    def stderr_so_far(self) -> str:
        """What the child wrote to stderr so far. pread, not seek + read: the child shares the file's offset, and
        moving it would make the child write over its own output."""
        fd = self._err.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def wait(self, timeout: float, interval: float = 1.0) -> Run:
        """Sample the memory every `interval` seconds until the child exits (killed after `timeout`)."""
        deadline = time.perf_counter() + timeout
        while self.process.poll() is None:
            self.sample_memory()
            if time.perf_counter() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"child ran over {timeout:.0f} s: {self.stderr_so_far()[-2000:]}")
            try:
                self.process.wait(interval)  # returns as soon as the child exits, not at the end of the interval
            except subprocess.TimeoutExpired:
                pass
        seconds = time.perf_counter() - self.start
        self._out.seek(0)
        return Run(self.process.returncode, self._out.read(), self.stderr_so_far(), seconds, self.rss_mb,
                   self.peak_mb)


def run_child(command: list[str], timeout: float = 600.0, interval: float = 1.0, **popen) -> Run:
    return Child(command, **popen).wait(timeout, interval)


# --- audio files ------------------------------------------------------------------------------------------------------

def write_audio(path: Path, channels: np.ndarray, rate: int, sample_format: str = "s16") -> Path:
    """A WAV file of `channels` [C, T] float (C in 1, 2, 8) at `rate`: 16-bit PCM (s16) or 32-bit float (flt),
    which keeps NaN and inf as they are."""
    channels = np.atleast_2d(np.asarray(channels, dtype=np.float32))
    codec = {"s16": "pcm_s16le", "flt": "pcm_f32le"}[sample_format]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=rate, layout=LAYOUTS[channels.shape[0]])
        if channels.shape[1]:
            data = channels.T.reshape(1, -1)  # interleaved
            if sample_format == "s16":
                data = (np.clip(data, -1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format,
                                               layout=LAYOUTS[channels.shape[0]])
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --- media and generations ---------------------------------------------------------------------------------------------

def write_png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (Pillow cannot write 16-bit RGB): pixels uint16 [H, W, C], C = 1 (grey), 3 or 4."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def generated_frames(pipeline, image, samples, mode: str = "stream", seed: int = 0) -> torch.Tensor:
    """All frames [n, SIZE, SIZE, 3] of one generation with the pipeline's model, VAE and audio encoder."""
    session = StreamingSession(pipeline.model, pipeline.vae, height=SIZE, width=SIZE, seed=seed)
    session.add_identity("face", image)
    return torch.cat(list(stream_talking_head(session, pipeline.audio_encoder, samples, mode)))


def dit_inputs(model, frames: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> tuple:
    """Seeded inputs of one DiT evaluation: (z, timestep, reference latent [1, C, frames, h, w], audio windows
    [1, 1 + t_stride * (frames - 1), 5, 12, audio_channels]), float32 on the CPU."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (1, config.out_dim, frames, height // config.vae_stride[1], width // config.vae_stride[2])
    windows = torch.randn(1, 1 + config.t_stride * (frames - 1), 5, 12, config.audio_channels, generator=g)
    return torch.randn(shape, generator=g), torch.tensor([937.5]), torch.randn(shape, generator=g), windows


def dit_flow(model, inputs: tuple) -> torch.Tensor:
    """The DiT's flow for `dit_inputs` (cast to the model's compute dtype)."""
    z, t, ref, windows = inputs
    with torch.no_grad():
        return model(z.to(model.dtype), t, ref.to(model.dtype), model.audio_proj(windows.to(model.dtype)))
