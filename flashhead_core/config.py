"""Configuration dataclasses: the DiT geometry (Lite / Pro presets) and the video constants.

Everything that differs between Lite and Pro is a field here; no other module forks on the variant name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import InputError

# Video / audio constants of the published model (docs/algorithm.md#constants).
FPS = 25
AUDIO_SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // FPS  # 640
CHUNK_FRAMES = 33
MOTION_LATENTS = 2
AUDIO_WINDOW = 5  # each video frame sees audio frames i-2..i+2
WAV2VEC2_LAYERS = 12
WAV2VEC2_CHANNELS = 768
DIT_HEAD_DIM = 128  # num_heads = dim / 128 when a checkpoint does not say
MAX_SEED = 2**64 - 1  # torch.Generator's range and ComfyUI's seed widget (0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of one FlashHead DiT (WanModelAudioProject). Field names follow the released config.json."""

    variant: str  # "lite" or "pro"
    in_dim: int  # noisy latent channels + reference latent channels
    out_dim: int  # latent channels of the VAE
    patch_size: tuple[int, int, int]  # (t, h, w)
    vae_stride: tuple[int, int, int]  # (t, h, w) of the paired VAE
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    num_heads: int = 12
    num_layers: int = 30
    eps: float = 1e-6
    # Audio projection (AudioProjModel): hard-coded in the release, read from weight shapes for tiny models.
    audio_intermediate_dim: int = 512
    audio_context_tokens: int = 32
    audio_channels: int = WAV2VEC2_CHANNELS  # wav2vec2 hidden size (768 for base-960h; tiny test models differ)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"head_dim {self.dim // self.num_heads} must be even for RoPE")
        if self.variant not in ("lite", "pro"):
            raise ValueError(f"variant must be 'lite' or 'pro', got {self.variant!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def t_stride(self) -> int:
        """Audio frames per latent frame (temporal VAE stride)."""
        return self.vae_stride[0]

    @property
    def spatial_multiple(self) -> int:
        """Height and width must be multiples of this (VAE stride x patch): 16 for Pro, 32 for Lite."""
        return self.vae_stride[1] * self.patch_size[1]

    @property
    def motion_frames(self) -> int:
        """Pixel frames carried from one chunk to the next: 5 for Pro, 9 for Lite."""
        return (MOTION_LATENTS - 1) * self.t_stride + 1

    @property
    def new_frames(self) -> int:
        """New frames each 33-frame chunk adds: 28 for Pro, 24 for Lite."""
        return CHUNK_FRAMES - self.motion_frames

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


PRO = ModelConfig(variant="pro", in_dim=32, out_dim=16, patch_size=(1, 2, 2), vae_stride=(4, 8, 8))
LITE = ModelConfig(variant="lite", in_dim=256, out_dim=128, patch_size=(1, 1, 1), vae_stride=(8, 32, 32))
PRESETS = {"lite": LITE, "pro": PRO}

# The latent channel count identifies the VAE family, and with it the variant and its strides.
VARIANT_BY_LATENT_CHANNELS = {16: "pro", 128: "lite"}


def parse_size(text: str) -> tuple[int, int]:
    """'512x512' (WIDTHxHEIGHT, as on the command line) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"size must be WIDTHxHEIGHT, e.g. 512x512, not {text!r}") from None
    return height, width
