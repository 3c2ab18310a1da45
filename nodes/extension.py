"""The pack's V3 registration: ComfyUI calls `comfy_entrypoint()` (the root __init__ exposes it) and registers every
node of `FlashHeadExtension.get_node_list()` under its schema's node_id. Each node's user errors reach ComfyUI's error
panel by their class name and sentence (`_errors.plain_errors`)."""

from __future__ import annotations

from ._errors import plain_errors
from ._io import ComfyExtension, io
from .audio import FlashHeadAudioEncode
from .batch import FlashHeadAudioBatch, FlashHeadBatchSampler
from .examples import install_example_inputs
from .face import FlashHeadFaceCrop, FlashHeadPasteBack
from .loaders import FlashHeadAudioEncoderLoader, FlashHeadModelLoader, FlashHeadVAELoader
from .lora import FlashHeadLoraLoader
from .sampler import FlashHeadSampler, FlashHeadVAEDecode
from .timeline import FlashHeadIdentityTimeline
from .video import FlashHeadTalkingVideo

NODES: list[type[io.ComfyNode]] = [plain_errors(node) for node in (
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
    FlashHeadAudioBatch,
    FlashHeadFaceCrop,
    FlashHeadPasteBack,
)]


class FlashHeadExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> FlashHeadExtension:
    install_example_inputs()
    return FlashHeadExtension()
