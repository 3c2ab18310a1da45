"""Batched streams: N portraits x N speech tracks in one batched session, one DiT call per denoising step for all
streams.

    streams = batch_talking_heads(model, vae, encoder, images, tracks, height=H, width=W, seed=seed)   # [F_i, H, W, 3]
    for outs in run_together([speech_run(session_i, encoder, track_i, portraits=...) ...]): ...     # chunk by chunk

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
from .run import run_together, speech_run
from .session import StreamingSession


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


def check_sessions(sessions: Sequence[StreamingSession]) -> None:
    """Batched streams share one model, one VAE, one size and one sampler (else BatchError, before any work)."""
    if not sessions:
        raise BatchError("no stream: batched streams need at least one session")
    first = sessions[0]
    for s in sessions[1:]:
        if s.model is not first.model or s.vae is not first.vae:
            raise BatchError("batched streams share one model and one VAE: build every session from the same ones")
        if (s.height, s.width, s.chunk_frames, s.sampler) != (first.height, first.width, first.chunk_frames,
                                                              first.sampler):
            raise BatchError(f"batched streams share one size and sampler: {s.width}x{s.height} vs "
                             f"{first.width}x{first.height}")


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
    check_sessions(sessions)
    runs = [speech_run(session, encoder, track, mode=mode, context_seconds=context_seconds,
                       portraits={0: ("reference", image)}) for session, image, track in zip(sessions, images, tracks)]
    pieces: list[list[torch.Tensor]] = [[] for _ in range(count)]
    for out in run_together(runs):
        for i, frames in enumerate(out):
            if frames is not None:
                pieces[i].append(frames)
    return [torch.cat(p) for p in pieces]
