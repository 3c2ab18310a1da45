"""The TAEHV tiny decoder for Wan 2.1 latents (madebyollin/taehv's `taew2_1` / lightx2v's `lighttaew2_1` files, the
ones ComfyUI's VAE Loader lists from `models/vae_approx`): an opt-in fast decode for Pro, about 1/50 of the Wan
VAE's decode cost (docs/performance.md#tiny-decoder), at the price of softer frames.

    decoder = load_tiny_decoder("lighttaew2_1.safetensors", device="cuda", dtype=torch.float16)
    fast = TinyDecodeVAE(wan_vae, decoder)      # a VideoVAE: decode by the tiny decoder, encode by the Wan VAE
    frames = fast.decode(latents)               # normalised [B, 16, t, h, w] -> [B, 3, 1 + 4(t-1), 8h, 8w] in [-1, 1]

The published decoder (only the `decoder.*` half of a file is read; `encoder.*` is ignored) is a stack of 2-D
convolutions over every frame at once, with time entering in two ways:
- a memory block mixes each frame's features with the previous frame's (zeros before the first):
  relu(conv3(relu(conv3(relu(conv3(cat(x_t, x_{t-1})))))) + x_t), convolutions 3x3 with bias;
- a time-grow layer (1x1 convolution C -> s*C, no bias) turns each frame into s frames (the s channel groups, in
  order).
Layout of `decoder.N` (N = position in the published Sequential; only positions with weights have keys):
    0 tanh(x/3)*3   1 conv3 16->256   2 relu   3-5 memory blocks 256   6 upsample x2 (nearest)   7 time-grow x1
    8 conv3 256->128 (no bias)   9-11 memory 128   12 upsample   13 time-grow x2   14 conv3 128->64 (no bias)
    15-17 memory 64   18 upsample   19 time-grow x2   20 conv3 64->64 (no bias)   21 relu   22 conv3 64->3
A memory block's keys are `conv.0`, `conv.2`, `conv.4` (weight, bias); a time-grow's `conv.weight`.
t latent frames become 4t frames, of which the first 3 are dropped: 1 + 4(t - 1), the Wan VAE's count. The decoder
takes the Wan VAE's *unnormalised* latents (as ComfyUI passes them for `lighttaew2_1`) and gives frames in [0, 1].

A tiny decoder for LTX-Video 0.9 latents (Lite) is not published: the TAEHV family has `taeltx_2` / `taeltx2_3` for
LTX-2.x, whose latent space differs from 0.9's (madebyollin/taehv issue 4 asks for one), so Lite keeps its VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .wan import LATENT_MEAN, LATENT_STD

LATENT_CHANNELS = 16  # Wan 2.1
WIDTHS = (256, 128, 64, 64)
TIME_GROWTH = (1, 2, 2)  # per stage: frames per input frame
MEMORY_BLOCKS = 3  # per stage


def conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class MemoryBlock(nn.Module):
    """x [B*T, C, H, W] and the previous frame's x (same shape) -> [B*T, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv3(2 * channels, channels), nn.ReLU(), conv3(channels, channels), nn.ReLU(),
                                  conv3(channels, channels))

    def forward(self, x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, previous], dim=1)) + x)


class TimeGrow(nn.Module):
    """[B*T, C, H, W] -> [B*T*factor, C, H, W]: each frame becomes `factor` frames."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(channels, channels * factor, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).reshape(-1, x.shape[1], *x.shape[2:])


class SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _decoder_layers() -> list[nn.Module]:
    """The published decoder Sequential, position by position (the positions are the state-dict keys)."""
    layers: list[nn.Module] = [SoftClamp(), conv3(LATENT_CHANNELS, WIDTHS[0]), nn.ReLU()]
    for stage, factor in enumerate(TIME_GROWTH):
        width = WIDTHS[stage]
        layers += [MemoryBlock(width) for _ in range(MEMORY_BLOCKS)]
        layers += [nn.Upsample(scale_factor=2), TimeGrow(width, factor), conv3(width, WIDTHS[stage + 1], bias=False)]
    return layers + [nn.ReLU(), conv3(WIDTHS[-1], 3)]


class TinyVideoDecoder(nn.Module):
    """Unnormalised Wan 2.1 latents [B, 16, t, h, w] -> frames [B, 3, 1 + 4(t-1), 8h, 8w] in about [0, 1]."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Sequential(*_decoder_layers())
        self.frames_to_trim = 1
        for layer in self.decoder:
            self.frames_to_trim *= getattr(layer, "factor", 1)
        self.frames_to_trim -= 1

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        batch = latents.shape[0]
        x = latents.movedim(1, 2).flatten(0, 1)  # [B*t, C, h, w], frames of one stream consecutive
        for layer in self.decoder:
            if isinstance(layer, MemoryBlock):
                frames = x.unflatten(0, (batch, -1))
                previous = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].flatten(0, 1)
                x = layer(x, previous)
            else:
                x = layer(x)
        return x.unflatten(0, (batch, -1))[:, self.frames_to_trim:].movedim(2, 1)


def load_tiny_decoder(path: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> TinyVideoDecoder:
    """A TAEHV file for Wan 2.1 latents (.safetensors or .pth, published key layout) -> TinyVideoDecoder on device."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    decoder = {k: v for k, v in state.items() if k.startswith("decoder.")}
    first = decoder.get("decoder.1.weight")
    if first is None or first.dim() != 4:
        raise CheckpointError(f"{path.name} is not a TAEHV tiny autoencoder (no decoder.1.weight): use taew2_1 / "
                              f"lighttaew2_1 from madebyollin/taehv or lightx2v/Autoencoders")
    if first.shape[1] != LATENT_CHANNELS:
        raise CheckpointError(f"{path.name} decodes {first.shape[1]}-channel latents, not Wan 2.1's 16 (48: Wan 2.2, "
                              f"128: LTX-2): use taew2_1 / lighttaew2_1 for FlashHead Pro")
    model = TinyVideoDecoder()
    missing, unexpected = model.load_state_dict(decoder, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path.name} does not have the TAEHV decoder layout: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class TinyDecodeVAE:
    """The Wan VAE with the tiny decoder's decode (opt-in fast decode for Pro). Everything else (encode of the
    reference and of the motion frames, dtype, device, family) is the Wan VAE's, so a session uses it as its VAE."""

    def __init__(self, vae, decoder: TinyVideoDecoder):
        if vae.family != "wan":
            raise CheckpointError(f"the tiny decoder decodes Wan 2.1 latents (Pro); this is the {vae.family} VAE "
                                  f"(no tiny decoder exists for LTX-Video 0.9 latents)")
        self.vae, self.decoder = vae, decoder

    def __getattr__(self, name: str):
        return getattr(self.vae, name)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
        """Normalised latents [B, 16, t, h, w] -> frames [B, 3, 1 + 4(t-1), 8h, 8w] in [-1, 1], float32."""
        if on_tile is not None:
            on_tile()
        weight = self.decoder.decoder[1].weight
        mean = torch.tensor(LATENT_MEAN, device=weight.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(LATENT_STD, device=weight.device).view(1, -1, 1, 1, 1)
        z = latents.to(weight.device, torch.float32) * std + mean
        frames = self.decoder(z.to(weight.dtype)).float()
        return (frames * 2 - 1).clamp(-1, 1)
