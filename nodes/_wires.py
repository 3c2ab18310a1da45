"""The objects that travel on FlashHead's own wires (FLASHHEAD_MODEL, FLASHHEAD_VAE, FLASHHEAD_AUDIO_ENCODER,
FLASHHEAD_AUDIO_EMBEDS).

ComfyUI caches node outputs and hands the same objects to every later run, so these are frozen: nodes read them and
never change them. Per-run state (motion latents, the noise generator, the audio ring buffer) lives in a
flashhead_core StreamingSession created inside the node that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODEL = "FLASHHEAD_MODEL"
VAE = "FLASHHEAD_VAE"
AUDIO_ENCODER = "FLASHHEAD_AUDIO_ENCODER"
AUDIO_EMBEDS = "FLASHHEAD_AUDIO_EMBEDS"


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
