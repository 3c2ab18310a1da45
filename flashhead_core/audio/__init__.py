"""Speech in, per-frame features and chunk windows out.

    decode.py          any audio source -> float32 mono 16 kHz samples (files streamed piece by piece)
    wav2vec2.py        wav2vec2-base-960h: loading and one feature vector per video frame and layer
    windows.py         the 5-frame windows the DiT reads, and the 'once' mode (whole track in one pass)
    context_cache.py   the 'stream' mode: the Temporal Audio Context Cache (8 s of context per chunk)
"""

from .context_cache import DEFAULT_CONTEXT_SECONDS, AudioContextCache, SpeechWindows, stream_chunks, stream_slices
from .decode import (AudioFile, decode_pieces, load_audio, mono_16k_pieces, probe_audio_file, read_audio,
                     to_mono_16k)
from .wav2vec2 import Wav2Vec2FrameEncoder, load_wav2vec2
from .windows import frame_windows, once_mode_chunks, pad_for_once_mode

__all__ = ["DEFAULT_CONTEXT_SECONDS", "AudioContextCache", "AudioFile", "SpeechWindows", "Wav2Vec2FrameEncoder", "decode_pieces",
           "frame_windows", "load_audio", "load_wav2vec2", "mono_16k_pieces", "once_mode_chunks", "pad_for_once_mode",
           "probe_audio_file", "read_audio", "stream_chunks", "stream_slices", "to_mono_16k"]
