"""FlashHead's own wires, all of them: each type's name (the V1 names, so saved links still connect), its V3
declaration (io.Custom) and the object that travels on it.

    FLASHHEAD_MODEL  FLASHHEAD_VAE  FLASHHEAD_AUDIO_ENCODER  FLASHHEAD_AUDIO_EMBEDS   the loaders' and Audio Encode's
    FLASHHEAD_STATE      a flashhead_core ContinuationState (Talking Video's state in and out)
    FLASHHEAD_TIMELINE   FlashHeadTimeline (Identity Timeline -> Talking Video)
    FLASHHEAD_FACE_CROP  a flashhead_core FaceCrop (Face Crop -> Talking Video, Paste Back)
    BBOX                 the box type detector packs (Florence-2, SAM2, ...) output, taken by Face Crop

ComfyUI caches node outputs and hands the same objects to every later run, so these are frozen: nodes read them and
never change them. Per-run state (motion latents, the noise generator, the audio ring buffer) lives in a
flashhead_core StreamingSession created inside the node that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..flashhead_core import Timeline
from ._io import io

Model = io.Custom("FLASHHEAD_MODEL")
Vae = io.Custom("FLASHHEAD_VAE")
AudioEncoder = io.Custom("FLASHHEAD_AUDIO_ENCODER")
AudioEmbeds = io.Custom("FLASHHEAD_AUDIO_EMBEDS")
State = io.Custom("FLASHHEAD_STATE")
TimelineWire = io.Custom("FLASHHEAD_TIMELINE")
FaceCropWire = io.Custom("FLASHHEAD_FACE_CROP")
Bbox = io.Custom("BBOX")


@dataclass(frozen=True)
class FlashHeadModel:
    """A loaded DiT. `patcher` is ComfyUI's (Core)ModelPatcher; the DiT itself is `patcher.model.inner`."""
    patcher: object
    source: str  # the COMBO value it was loaded from
    # Built with ComfyUI's casting layers (_host.operations()): ComfyUI may load it only in part (lowvram, --novram).
    offloadable: bool = False

    @property
    def dit(self):
        return self.patcher.model.inner

    @property
    def config(self):
        return self.dit.config


@dataclass(frozen=True)
class FlashHeadVAE:
    """A loaded video VAE (flashhead_core.vae interface: normalised latents in and out). `patcher` manages
    `vae.model`, the network."""
    patcher: object
    vae: object
    source: str


@dataclass(frozen=True)
class FlashHeadAudioEncoder:
    """A loaded wav2vec2 encoder (flashhead_core.audio)."""
    patcher: object
    encoder: object
    source: str


@dataclass(frozen=True)
class FlashHeadAudioEmbeds:
    """The DiT's audio input for a whole track: one window tensor [1, 33, 5, 12, 768] float32 (CPU) per chunk, in
    order, exactly what the sampler feeds the model. They depend on the model's chunk geometry (new frames per
    chunk), so they were computed for one variant (`variant`, `new_frames`)."""
    windows: tuple[torch.Tensor, ...]
    total_frames: int  # round(seconds * 25): the video covers exactly the audio
    mode: str  # "stream" or "once"
    context_seconds: float
    variant: str
    new_frames: int
    seconds: float


@dataclass(frozen=True)
class FlashHeadTimeline:
    """Portraits (each a ComfyUI IMAGE [1, H, W, 3] float 0..1, CPU) and their start times in seconds."""
    portraits: tuple[torch.Tensor, ...]
    starts: tuple[float, ...]

    def with_first(self, image) -> Timeline:
        """The core Timeline: `image` from 0 s, then these portraits (or only these when the first starts at 0)."""
        items = list(zip(self.portraits, self.starts))
        labels = [f"timeline portrait {i + 1}" for i in range(len(items))]
        if not items or self.starts[0] != 0:
            items, labels = [(image, 0.0)] + items, ["the image input"] + labels
        return Timeline.of(items, labels)
