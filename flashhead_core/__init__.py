"""flashhead_core: SoulX-FlashHead inference in plain PyTorch (no ComfyUI import anywhere in this package).

    pipeline = load_pipeline("SoulX-FlashHead-1_3B", variant="lite", device="cuda", dtype=torch.bfloat16)
    write_talking_video(pipeline, "face.png", "speech.wav", "out.mp4", height=512, width=512, seed=42)

The README's module map says where each stage lives; docs/algorithm.md explains the algorithm.
"""

from .audio import load_audio, load_wav2vec2
from .checkpoint import load_dit
from .errors import FlashHeadError
from .pipeline import Pipeline, load_pipeline, write_talking_video
from .generation.session import StreamingSession
from .generation.run import stream_talking_head
from .vae import load_vae

__version__ = "0.1.0"
__all__ = ["FlashHeadError", "Pipeline", "StreamingSession", "load_audio", "load_dit", "load_pipeline", "load_vae",
           "load_wav2vec2", "stream_talking_head", "write_talking_video"]
