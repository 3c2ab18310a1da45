"""Per-frame audio features -> the 5-frame windows the DiT reads, and the 'once' audio mode (the whole track
encoded in one pass). The 'stream' mode is `context_cache`.

    windows = frame_windows(features, start, stop)         # [1, stop - start, 5, 12, 768]
    for windows in once_mode_chunks(encoder, samples, new_frames): ...   # [1, 33, 5, 12, 768] per chunk
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..config import AUDIO_WINDOW, CHUNK_FRAMES, SAMPLES_PER_FRAME
from .wav2vec2 import Wav2Vec2FrameEncoder


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
