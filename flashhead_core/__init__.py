"""flashhead_core: SoulX-FlashHead inference in plain PyTorch (no ComfyUI import anywhere in this package).

    pipeline = load_pipeline("SoulX-FlashHead-1_3B", variant="lite", device="cuda", dtype=torch.bfloat16)
    write_talking_video(pipeline, "face.png", "speech.wav", "out.mp4", height=512, width=512, seed=42)

This module is the public API: the ComfyUI nodes and the `flashhead` command line import from here (and the live
stream library from `flashhead_core.live`), nothing deeper (tests/test_layout.py holds them to it). The README's
module map says where each stage lives; docs/algorithm.md explains the algorithm.
"""

from .attention import BACKENDS
from .audio import load_audio, load_wav2vec2
from .checkpoint import WEIGHT_DTYPES, is_scaled_fp8, load_dit
from .config import AUDIO_SAMPLE_RATE, FPS, parse_size
from .errors import FaceError, FlashHeadError, InputError, check_range
from .generation.batch import batch_talking_heads, check_pairs, stack_tracks
from .generation.chunks import audio_chunks, check_encoder_fits, chunk_count, new_images, video_frame_count
from .generation.run import ChunkRun, speech_run, stream_talking_head
from .generation.sampler import STATIC_MODES, GenerationCancelled, SamplerConfig
from .generation.session import StreamingSession, check_memory, decode_chunk, memory_estimate
from .generation.timeline import Timeline, TimelineError, parse_times, parse_timeline
from .lora import LoRAError, LoRALinear, apply_loras, low_rank_terms, parse_lora_option, read_lora
from .media.face import DEFAULT_FEATHER, FaceCrop, box_from_bbox, box_from_mask, parse_face_box
from .media.frames import video_to_images
from .media.image import check_size
from .media.video_io import stop_reason
from .pipeline import Pipeline, VideoSummary, load_pipeline, write_talking_video
from .release import AUDIO_DIR, AUDIO_WEIGHT_FILES, DIT_WEIGHT_FILES, MODEL_DIRS, RELEASE_NAME, VAE_DIRS, VAE_WAN_FILE
from .vae import check_vae_matches_model, load_vae

__version__ = "0.1.0"
__all__ = [
    "AUDIO_DIR", "AUDIO_SAMPLE_RATE", "AUDIO_WEIGHT_FILES", "BACKENDS", "DEFAULT_FEATHER", "DIT_WEIGHT_FILES", "FPS",
    "MODEL_DIRS", "RELEASE_NAME", "STATIC_MODES", "VAE_DIRS", "VAE_WAN_FILE", "WEIGHT_DTYPES",
    "ChunkRun", "FaceCrop", "FaceError", "FlashHeadError", "GenerationCancelled", "InputError", "LoRAError",
    "LoRALinear", "Pipeline", "SamplerConfig", "StreamingSession", "Timeline", "TimelineError", "VideoSummary",
    "apply_loras", "audio_chunks", "batch_talking_heads", "box_from_bbox", "box_from_mask", "check_encoder_fits",
    "check_memory", "check_pairs", "check_range", "check_size", "check_vae_matches_model", "chunk_count",
    "decode_chunk", "is_scaled_fp8", "load_audio", "load_dit", "load_pipeline", "load_vae", "load_wav2vec2",
    "low_rank_terms", "memory_estimate", "new_images", "parse_face_box", "parse_lora_option", "parse_size",
    "parse_times", "parse_timeline", "read_lora", "speech_run", "stack_tracks", "stop_reason", "stream_talking_head",
    "video_frame_count", "video_to_images", "write_talking_video",
]
