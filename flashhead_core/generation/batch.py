"""Batched streams: N portraits x N speech tracks in one batched session, one DiT call per denoising step for all
streams.

    batch = BatchedSession([StreamingSession(model, vae, height=H, width=W, seed=seed + i) for i in range(N)])
    for i, image in enumerate(images): batch.sessions[i].add_identity("face", image)
    for frames in stream_batch(batch, encoder, tracks):     # a list per chunk: [n, H, W, 3] or None (finished)
        ...

Each stream keeps its own session: identity, motion latents, noise generator (so its noise is what the single-stream
run draws), VAE generator and audio context cache. Per chunk, the streams still running are stacked on dim 0 for the
audio projection, the audio keys/values and the 4 DiT evaluations; the VAE decodes and re-encodes each stream on its
own (the Wan VAE keeps its causal cache per call; per stream, the decode equals the single-stream one exactly).
Streams whose audio ends earlier drop out of the batch. A stream's frames equal its single-stream frames up to the
batched matmuls' float rounding (tests/test_batch.py measures it).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..audio import DEFAULT_CONTEXT_SECONDS, Wav2Vec2FrameEncoder, load_audio
from ..config import AUDIO_SAMPLE_RATE
from ..errors import BatchError
from .session import StreamingSession, generate_chunks
from .chunks import audio_chunks, check_encoder_fits, new_images, video_frame_count


def check_pairs(images: Sequence, tracks: Sequence) -> int:
    """The stream count: as many portraits as audio tracks, at least one, else BatchError (before any work)."""
    if len(images) != len(tracks):
        raise BatchError(f"{len(images)} portrait(s) but {len(tracks)} audio track(s): batched streams pair the i-th "
                         f"portrait with the i-th track, so give as many of each (repeat a portrait to voice it with "
                         f"several tracks)")
    if not images:
        raise BatchError("no stream: give at least one portrait and one audio track")
    return len(images)


def stack_tracks(tracks: Sequence) -> tuple[np.ndarray, int]:
    """Several single tracks (anything `audio.load_audio` takes) -> one batch of what the model hears: waveform
    [N, 1, T] float32 mono at 16 kHz, each track padded at its end with silence to the longest (T samples), so that
    the batch is one tensor, as ComfyUI's AUDIO batches are. Each stream's video then lasts T / 16000 s."""
    if not tracks:
        raise BatchError("no audio track: give at least one")
    heard = [load_audio(track) for track in tracks]
    longest = max(len(samples) for samples in heard)
    waveform = np.zeros((len(heard), 1, longest), np.float32)
    for i, samples in enumerate(heard):
        waveform[i, 0, :len(samples)] = samples
    return waveform, AUDIO_SAMPLE_RATE


class BatchedSession:
    """Several StreamingSessions sharing one model and VAE, stepped together (same size and chunk geometry)."""

    def __init__(self, sessions: Sequence[StreamingSession]):
        if not sessions:
            raise BatchError("no stream: a batched session needs at least one session")
        first = sessions[0]
        for s in sessions[1:]:
            if s.model is not first.model or s.vae is not first.vae:
                raise BatchError("batched streams share one model and one VAE: build every session from the same ones")
            if (s.height, s.width, s.chunk_frames, s.sampler) != (first.height, first.width, first.chunk_frames,
                                                                  first.sampler):
                raise BatchError(f"batched streams share one size and sampler: {s.width}x{s.height} vs "
                                 f"{first.width}x{first.height}")
        self.sessions = list(sessions)
        self.model, self.vae, self.config = first.model, first.vae, first.config

    def generate_chunk(self, windows: Sequence[torch.Tensor], streams: Sequence[int] | None = None
                       ) -> list[torch.Tensor]:
        """One chunk for each stream of `streams` (default: all), windows[k] [1, 33, 5, 12, 768] for streams[k] ->
        their decoded frames [1, 3, 33, H, W], as each session's generate_chunk gives them."""
        streams = list(range(len(self.sessions))) if streams is None else list(streams)
        return generate_chunks([self.sessions[i] for i in streams], list(windows))


def stream_batch(batch: BatchedSession, encoder: Wav2Vec2FrameEncoder, tracks: Sequence[np.ndarray],
                 mode: str = "stream", context_seconds: float = DEFAULT_CONTEXT_SECONDS
                 ) -> Iterator[list[torch.Tensor | None]]:
    """N 16 kHz mono tracks [N_i] -> per chunk, a list of each stream's new frames [n, H, W, 3] float32 0..1 on the
    CPU (None once a stream is complete); stream i has exactly round(N_i / 16000 x 25) frames in all, those of its
    single-stream run (`stream_talking_head`)."""
    if len(tracks) != len(batch.sessions):
        raise BatchError(f"{len(batch.sessions)} session(s) but {len(tracks)} audio track(s): give one track per "
                         f"stream")
    check_encoder_fits(encoder, batch.config)
    totals = [video_frame_count(len(track)) for track in tracks]
    chunks: list[Iterator[torch.Tensor]] = [audio_chunks(encoder, track, mode, batch.config.new_frames,
                                                         context_seconds) for track in tracks]
    emitted = [0] * len(tracks)
    index = 0
    while running := [i for i in range(len(tracks)) if emitted[i] < totals[i]]:
        windows = [next(chunks[i]) for i in running]
        frames = batch.generate_chunk(windows, running)
        out: list[torch.Tensor | None] = [None] * len(tracks)
        for i, chunk in zip(running, frames):
            images = new_images(chunk, index, mode, batch.config.motion_frames, totals[i] - emitted[i])
            emitted[i] += images.shape[0]
            out[i] = images
        index += 1
        yield out


def batch_talking_heads(model, vae, encoder: Wav2Vec2FrameEncoder, images: Sequence, tracks: Sequence[np.ndarray], *,
                        height: int = 512, width: int = 512, seed: int = 0, mode: str = "stream",
                        context_seconds: float = DEFAULT_CONTEXT_SECONDS, seeds: Iterable[int] | None = None,
                        device=None, **session_options) -> list[torch.Tensor]:
    """N portraits + N tracks -> each stream's frames [F_i, H, W, 3] (all in memory). Stream i uses seed + i (or
    seeds[i]): its frames are those of a single-stream run with that seed."""
    count = check_pairs(images, tracks)
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(count)]
    if len(seeds) != count:
        raise BatchError(f"{len(seeds)} seed(s) for {count} streams: give one seed per stream")
    sessions = [StreamingSession(model, vae, height=height, width=width, seed=s, device=device, **session_options)
                for s in seeds]
    for session, image in zip(sessions, images):
        session.add_identity("reference", image)
    pieces: list[list[torch.Tensor]] = [[] for _ in range(count)]
    for out in stream_batch(BatchedSession(sessions), encoder, tracks, mode, context_seconds):
        for i, frames in enumerate(out):
            if frames is not None:
                pieces[i].append(frames)
    return [torch.cat(p) for p in pieces]
