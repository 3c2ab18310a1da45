"""The geometry of chunks: which decoded frames are new, how many chunks and frames a track makes, and the audio
modes' chunk windows of a whole track. The loop that uses them is `run.py`.

A chunk decodes 33 frames; the first `motion_frames` of each repeat the end of the previous chunk and are dropped
(except in chunk 0 of once mode), and the last chunk is trimmed so the video has exactly round(seconds * 25)
frames (docs/algorithm.md#chunks).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ..audio import DEFAULT_CONTEXT_SECONDS, Wav2Vec2FrameEncoder, once_mode_chunks, stream_chunks
from ..config import AUDIO_SAMPLE_RATE, CHUNK_FRAMES, FPS, SAMPLES_PER_FRAME
from ..errors import AudioInputError, CheckpointError, InputError
from ..media.frames import video_to_images


def frames_to_keep(chunk_index: int, mode: str, motion_frames: int) -> slice:
    """Which of a chunk's 33 decoded frames are new: stream mode drops the motion frames of every chunk, once mode
    keeps all of chunk 0 (docs/algorithm.md#chunks)."""
    if mode == "once" and chunk_index == 0:
        return slice(0, CHUNK_FRAMES)
    return slice(motion_frames, CHUNK_FRAMES)


def chunk_count(total_frames: int, mode: str, new_frames: int) -> int:
    """How many chunks cover `total_frames`: each adds `new_frames`, except chunk 0 of once mode, which adds all 33."""
    first = CHUNK_FRAMES if mode == "once" else new_frames
    return 1 + max(0, -(-(total_frames - first) // new_frames))


def new_images(frames: torch.Tensor, chunk_index: int, mode: str, motion_frames: int, remaining: int,
               skip: int = 0) -> torch.Tensor:
    """A chunk's decoded frames [1, 3, 33, H, W] in [-1, 1] -> its new frames as images [n, H, W, 3] float32 in 0..1
    on the CPU: motion frames dropped (`frames_to_keep`), then `skip` more (shown by a previous run), at most
    `remaining` (the end of the audio)."""
    kept = frames[:, :, frames_to_keep(chunk_index, mode, motion_frames).start + skip:]
    return video_to_images(kept[:, :, :max(0, remaining)])


AUDIO_MODES = ("stream", "once")


def video_frame_count(num_samples: int) -> int:
    """Frames that cover a 16 kHz track exactly: round(seconds * 25). A track that rounds to no frame at all (320
    samples, 20 ms, or less) raises AudioInputError: there would be no video to write."""
    frames = round(num_samples * FPS / AUDIO_SAMPLE_RATE)
    if frames < 1:
        milliseconds = num_samples / AUDIO_SAMPLE_RATE * 1000
        raise AudioInputError(f"the audio lasts {milliseconds:.1f} ms ({num_samples} samples at 16 kHz), less than "
                              f"one video frame ({1000 // FPS} ms, {SAMPLES_PER_FRAME} samples): use a longer track "
                              f"(padding it with silence is fine)")
    return frames


def audio_chunks(encoder: Wav2Vec2FrameEncoder, samples: np.ndarray | Iterable[np.ndarray], mode: str,
                 new_frames: int, context_seconds: float = DEFAULT_CONTEXT_SECONDS) -> Iterator[torch.Tensor]:
    """The chunk windows [1, 33, 5, 12, 768] of a 16 kHz mono track in 'stream' (Temporal Audio Context Cache) or
    'once' mode, lazily: stream mode encodes each chunk's 8-s context only when the chunk is generated. The track is
    an array [N]; stream mode also takes it as an iterable of pieces [t] (read as the chunks need them)."""
    if mode == "stream":
        return stream_chunks(encoder, samples, new_frames, context_seconds)
    if mode == "once":
        return once_mode_chunks(encoder, samples, new_frames)
    raise InputError(f"audio mode must be one of {', '.join(AUDIO_MODES)}, not {mode!r}")


def check_encoder_fits(encoder: Wav2Vec2FrameEncoder, config) -> None:
    """The encoder's feature width must be what the DiT's audio projection reads (768: wav2vec2-base-960h)."""
    hidden = encoder.model.config.hidden_size
    if hidden != config.audio_channels:
        raise CheckpointError(f"the audio encoder gives {hidden}-wide features but the DiT's audio projection takes "
                         f"{config.audio_channels}: use the wav2vec2 that belongs to this checkpoint "
                         f"(facebook/wav2vec2-base-960h for the released models)")
