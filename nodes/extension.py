"""The pack's V3 registration: ComfyUI calls `comfy_entrypoint()` (the root __init__ exposes it) and registers every
node of `FlashHeadExtension.get_node_list()` under its schema's node_id."""

from __future__ import annotations

from ._io import ComfyExtension, io
from .audio import FlashHeadAudioEncode
from .loaders import FlashHeadAudioEncoderLoader, FlashHeadModelLoader, FlashHeadVAELoader
from .sampler import FlashHeadSampler, FlashHeadVAEDecode
from .video import FlashHeadTalkingVideo
from .lora import FlashHeadLoraLoader
from .timeline import FlashHeadIdentityTimeline
from .batch import FlashHeadBatchSampler

NODES: list[type[io.ComfyNode]] = [
    FlashHeadModelLoader,
    FlashHeadVAELoader,
    FlashHeadAudioEncoderLoader,
    FlashHeadAudioEncode,
    FlashHeadSampler,
    FlashHeadVAEDecode,
    FlashHeadTalkingVideo,
    FlashHeadLoraLoader,
    FlashHeadIdentityTimeline,
    FlashHeadBatchSampler,
]


class FlashHeadExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> FlashHeadExtension:
    return FlashHeadExtension()
