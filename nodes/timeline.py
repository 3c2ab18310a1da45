"""FlashHead Identity Timeline: several portraits in one video, each taking over at its start time.

The node makes a FLASHHEAD_TIMELINE (portraits + start times) for FlashHead Talking Video's optional `timeline`
input. The Talking Video's own `image` is the portrait from 0 s until the first timeline portrait takes over; a
timeline whose first time is 0 replaces it from the start. Switching is flashhead_core.generation.timeline's: a clean cut at the
chunk whose new frames hold frame round(t * 25) (up to 0.92 s early for Lite, 1.08 s for Pro). Times past the audio,
out of order or in one chunk are an error before anything is generated, nothing written.
"""

from __future__ import annotations

import torch

from ..flashhead_core import parse_times, Timeline, TimelineError
from ._io import CATEGORY, io
from ._wires import FlashHeadTimeline, TimelineWire

class FlashHeadIdentityTimeline(io.ComfyNode):
    """Portraits that take over at given times, for FlashHead Talking Video."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadIdentityTimeline", display_name="FlashHead Identity Timeline", category=CATEGORY,
            description=("Several portraits in one video: each image of the batch takes over at its start time "
                         "(seconds). Connect to FlashHead Talking Video's timeline input; its own image plays until "
                         "the first time here (a first time of 0 replaces it). Switches happen between chunks, as a "
                         "clean cut (rounded down to the chunk holding that frame: up to 0.92 s Lite, 1.08 s Pro)."),
            inputs=[
                io.Image.Input("images", tooltip=(
                    "The portraits, one per start time, in order (a batch: combine images of different sizes "
                    "with Image Batch; each is resized and centre-cropped like the main portrait).")),
                io.String.Input("start_times", default="4.5", tooltip=(
                    "When each portrait takes over, in seconds, comma-separated and increasing, e.g. '4.5, 9'. "
                    "Times must lie within the audio; portraits switch only between chunks, so keep them about "
                    "1.1 s apart or more.")),
            ],
            outputs=[TimelineWire.Output(display_name="timeline", tooltip=(
                "Connect to FlashHead Talking Video's timeline input."))],
        )

    @classmethod
    def execute(cls, images, start_times) -> io.NodeOutput:
        starts = parse_times(start_times, "start_times")
        if images.ndim != 4 or images.shape[-1] not in (3, 4):
            raise TimelineError(f"images must be a ComfyUI IMAGE batch [B, H, W, 3], got {tuple(images.shape)}")
        if len(starts) != images.shape[0]:
            raise TimelineError(f"{len(starts)} start times for {images.shape[0]} portraits: give one time per "
                                f"image of the batch, e.g. '4.5, 9' for two")
        portraits = tuple(images[i:i + 1].detach().to("cpu", torch.float32).clone() for i in range(images.shape[0]))
        return io.NodeOutput(FlashHeadTimeline(portraits, tuple(starts)))
