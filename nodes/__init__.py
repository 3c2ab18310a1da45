"""ComfyUI node adapters over flashhead_core (V1 node API). Each module adapts ComfyUI types and calls the core:

    loaders.py  FlashHeadModelLoader, FlashHeadVAELoader, FlashHeadAudioEncoderLoader
    audio.py    FlashHeadAudioEncode
    sampler.py  FlashHeadSampler, FlashHeadVAEDecode   (the LATENT semantics are written there)
    video.py    FlashHeadTalkingVideo
    _host.py    the only module that imports ComfyUI (folders, devices, ModelPatcher, progress, interrupts)
    _wires.py   the objects on FlashHead's own wires
"""

from .audio import FlashHeadAudioEncode
from .loaders import FlashHeadAudioEncoderLoader, FlashHeadModelLoader, FlashHeadVAELoader
from .sampler import FlashHeadSampler, FlashHeadVAEDecode
from .video import FlashHeadTalkingVideo

NODE_CLASS_MAPPINGS = {
    "FlashHeadModelLoader": FlashHeadModelLoader,
    "FlashHeadVAELoader": FlashHeadVAELoader,
    "FlashHeadAudioEncoderLoader": FlashHeadAudioEncoderLoader,
    "FlashHeadAudioEncode": FlashHeadAudioEncode,
    "FlashHeadSampler": FlashHeadSampler,
    "FlashHeadVAEDecode": FlashHeadVAEDecode,
    "FlashHeadTalkingVideo": FlashHeadTalkingVideo,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FlashHeadModelLoader": "FlashHead Model Loader",
    "FlashHeadVAELoader": "FlashHead VAE Loader",
    "FlashHeadAudioEncoderLoader": "FlashHead Audio Encoder Loader",
    "FlashHeadAudioEncode": "FlashHead Audio Encode",
    "FlashHeadSampler": "FlashHead Sampler",
    "FlashHeadVAEDecode": "FlashHead VAE Decode",
    "FlashHeadTalkingVideo": "FlashHead Talking Video",
}
