"""LTX-Video 0.9.0 VAE (FlashHead Lite): diffusers' `AutoencoderKLLTXVideo` plus the checkpoint's latent statistics
(docs/algorithm.md#vaes).

encode: the encoder gives 128 mean channels and one log-variance channel shared by all 128; z is the posterior mean
(default) or, in the official stochastic mode, mean + exp(0.5 * clamp(logvar, -30, 20)) * eps; then
z = (z - mean_of_means) / std_of_means. decode: decoder(z * std_of_means + mean_of_means), NOT clamped (values
beyond [-1, 1] occur). The statistics are the checkpoint's `latents_mean` / `latents_std`.

Key layouts: the released `VAE_LTX/` uses diffusers' names (`encoder.down_blocks.0.resnets.0...`, `latents_mean`);
the original LTX-Video names (`encoder.down_blocks.0.res_blocks.0...`, `norm3.norm`, `conv_shortcut`, statistics as
`per_channel_statistics.mean-of-means` or the buffers `mean_of_means`) convert one to one through `KEYS`.

Tiled decode: the 0.9.0 decoder is spatially local throughout (3x3 convolutions, per-pixel RMS / layer norms,
depth-to-space upsampling, no attention, no timestep conditioning), but its receptive radius measured from the
latents is 24 latent pixels (768 px), far too wide for a halo. So conv_in, mid_block and up blocks 0-2 (up to 1/8
of the output resolution) run whole, and up block 3 + the head (most of the compute and memory) run tile by tile,
all frames at once (the decoder is not causal).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLLTXVideo

from ..errors import CheckpointError
from ..layers import use_operations
from ..weights import build_on_meta, require_keys
from .base import VideoVAE
from .keymap import KeyMap, check_config_json
from .tiling import receptive_radius

VARIANT = "lite"
WHAT = "the LTX-Video 0.9.0 VAE (VAE_LTX/)"
# What the tensor shapes do not tell: the 0.9.0 geometry (patch 4, three spatio-temporal compressions, causal
# encoder, non-causal decoder without timestep conditioning).
VERSION_090 = dict(in_channels=3, out_channels=3, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6,
                   spatio_temporal_scaling=(True, True, True, False),
                   decoder_spatio_temporal_scaling=(True, True, True, False),
                   encoder_causal=True, decoder_causal=False, timestep_conditioning=False)
# The original block list (res_x, compress_all, res_x_y, ...) -> diffusers modules, encoder and decoder.
_ENCODER_BLOCKS = ("down_blocks.0.", "down_blocks.0.downsamplers.0.", "down_blocks.0.conv_out.", "down_blocks.1.",
                   "down_blocks.1.downsamplers.0.", "down_blocks.1.conv_out.", "down_blocks.2.",
                   "down_blocks.2.downsamplers.0.", "down_blocks.3.", "mid_block.")
_DECODER_BLOCKS = ("mid_block.", "up_blocks.0.", "up_blocks.1.upsamplers.0.", "up_blocks.1.", "up_blocks.2.conv_in.",
                   "up_blocks.2.upsamplers.0.", "up_blocks.2.", "up_blocks.3.conv_in.", "up_blocks.3.upsamplers.0.",
                   "up_blocks.3.")
KEYS = KeyMap(
    blocks=tuple((f"encoder.down_blocks.{i}.", "encoder." + b) for i, b in enumerate(_ENCODER_BLOCKS))
    + tuple((f"decoder.up_blocks.{i}.", "decoder." + b) for i, b in enumerate(_DECODER_BLOCKS))
    + (("mean_of_means", "latents_mean"), ("std_of_means", "latents_std")),
    leaves=(("res_blocks.", "resnets."), ("norm3.norm.", "norm3."), ("conv_shortcut.", "conv_shortcut.conv.")))
# Original LTX-Video files store the statistics under these names (and unused `channel` / `mean-of-stds` rows).
_STATISTICS = {"per_channel_statistics.mean-of-means": "mean_of_means",
               "per_channel_statistics.std-of-means": "std_of_means"}
_TIMESTEP_KEYS = ("time_embedder", "scale_shift_table", "timestep_scale_multiplier")
TILED_FROM_BLOCK = 3  # tiled decode: up_blocks[3:] and the head run in tiles, on features at 1/8 resolution


def layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """"original", "diffusers" or None (not an LTX VAE)."""
    if "encoder.conv_in.conv.weight" not in shapes or "decoder.conv_out.conv.weight" not in shapes:
        return None
    return "original" if any(".res_blocks." in k for k in shapes) else "diffusers"


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """Number of numbered submodules directly under `prefix` (e.g. resnets of one block)."""
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def model_kwargs(shapes: dict[str, tuple[int, ...]]) -> dict:
    """AutoencoderKLLTXVideo arguments from diffusers-named shapes: channel widths and resnets per block (the tiny
    fixtures and writers vary them); everything else is VERSION_090."""
    require_keys(shapes, ("encoder.conv_in.conv.weight", "decoder.conv_in.conv.weight"), WHAT)
    channels = [shapes["encoder.conv_in.conv.weight"][0]]
    for i in range(3):
        channels.append(shapes.get(f"encoder.down_blocks.{i}.conv_out.conv1.conv.weight", (channels[-1],))[0])
    encoder_layers = tuple(_count(shapes, f"encoder.down_blocks.{i}.resnets.") for i in range(4))
    decoder_layers = tuple(_count(shapes, f"decoder.up_blocks.{i}.resnets.") for i in (3, 2, 1, 0))
    return {**VERSION_090, "latent_channels": shapes["decoder.conv_in.conv.weight"][1],
            "block_out_channels": tuple(channels), "decoder_block_out_channels": tuple(channels),
            "layers_per_block": encoder_layers + (_count(shapes, "encoder.mid_block.resnets."),),
            "decoder_layers_per_block": decoder_layers + (_count(shapes, "decoder.mid_block.resnets."),)}


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original LTX-Video names -> diffusers names (one to one; the unused statistics rows are dropped)."""
    state = {_STATISTICS.get(k, k): v for k, v in state.items()}
    return {KEYS.to_diffusers(k): v for k, v in state.items() if not k.startswith("per_channel_statistics.")}


def from_state_dict(state: dict[str, torch.Tensor], layout: str, *, config_json: dict | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    tiling: bool = True, operations=None) -> "LtxVAE":
    """operations: None (diffusers' torch.nn layers) or a namespace (comfy.ops.manual_cast, flashhead_core.layers)
    the Conv3d and LayerNorm layers are re-classed onto (`use_operations`); RMS norms have no weights here."""
    timestep = [k for k in state if any(t in k for t in _TIMESTEP_KEYS)]
    if timestep:
        raise CheckpointError(f"this is an LTX-Video 0.9.1 or later VAE (timestep-conditioned decoder: {timestep[0]});"
                              f" FlashHead Lite needs {WHAT} from Soul-AILab/SoulX-FlashHead-1_3B")
    if layout == "original":
        state = to_diffusers(state)
    kwargs = model_kwargs({k: tuple(v.shape) for k, v in state.items()})
    if kwargs["latent_channels"] != LtxVAE.latent_channels:
        raise CheckpointError(f"an LTX VAE with {kwargs['latent_channels']} latent channels is not {WHAT}, "
                              f"which has 128")
    check_config_json(config_json, kwargs, "AutoencoderKLLTXVideo", WHAT)
    model = build_on_meta(lambda: AutoencoderKLLTXVideo(**kwargs), state, device=device, dtype=dtype, what=WHAT,
                          file_names=KEYS.to_original if layout == "original" else str)
    if operations is not None:
        use_operations(model, operations)
    return LtxVAE(model, tiling)


class LtxVAE(VideoVAE):
    family, variant, latent_channels, stride, clamp_output = "ltx", VARIANT, 128, (8, 32, 32), False
    tiled_scale = 8  # up blocks 1 and 2 upsample 2x each: the tiles are cut at 1/8 of the output resolution

    def __init__(self, model: AutoencoderKLLTXVideo, tiling: bool = True, sample_posterior: bool = False):
        super().__init__(model, tiling)
        self.sample_posterior = sample_posterior  # True: the official stochastic encode

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each [1, 128, 1, 1, 1]: the network's buffers, on the compute device (a host keeping the
        network partly offloaded may leave the root's buffers elsewhere)."""
        device = self.device
        return (self.model.latents_mean.view(1, -1, 1, 1, 1).to(device),
                self.model.latents_std.view(1, -1, 1, 1, 1).to(device))

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None,
               eps: torch.Tensor | None = None) -> torch.Tensor:
        """frames [B, 3, 1 + 8k, H, W] in [-1, 1] -> normalised latents [B, 128, 1 + k, H/32, W/32], float32.

        Posterior mean unless `sample_posterior` is set; then eps ~ N(0, 1) is drawn from `generator` on its device
        (None: the global torch RNG, as the official code). `eps` [B, 128, 1 + k, H/32, W/32] replays a recorded
        draw (and implies sampling)."""
        posterior = self.posterior(frames)
        z = posterior.mean
        if eps is None and self.sample_posterior:
            eps = torch.randn(z.shape, generator=generator, dtype=z.dtype,
                              device=generator.device if generator is not None else z.device)
        if eps is not None:
            z = z + posterior.std * eps.to(z.device, z.dtype)
        return self.normalise(z).float()

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self.statistics()
        return (z - mean) / std

    def unnormalise(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self.statistics()
        return z * std + mean

    # --- tiled decode: diffusers' LTXVideoDecoder3d.forward in two halves (0.9.0: no timestep conditioning) ----------

    def _decode_low_resolution(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 128, t, h, w] -> [B, 256, 4t - 3, 4h, 4w] (conv_in, mid_block, up blocks 0-2)."""
        decoder = self.model.decoder
        x = decoder.mid_block(decoder.conv_in(z))
        for block in decoder.up_blocks[:TILED_FROM_BLOCK]:
            x = block(x)
        return x

    def _decode_high_resolution(self, features: torch.Tensor) -> torch.Tensor:
        """[B, 256, T', h', w'] -> frames [B, 3, 2T' - 1, 8h', 8w'] (up block 3, norm_out, conv_out and the 4x4
        unpatchify)."""
        decoder = self.model.decoder
        x = features
        for block in decoder.up_blocks[TILED_FROM_BLOCK:]:
            x = block(x)
        x = decoder.conv_out(decoder.conv_act(decoder.norm_out(x.movedim(1, -1)).movedim(-1, 1)))
        p, p_t = decoder.patch_size, decoder.patch_size_t
        batch, _, frames, height, width = x.shape  # unpatchify as in diffusers
        x = x.reshape(batch, -1, p_t, p, p, frames, height, width)
        return x.permute(0, 1, 5, 2, 6, 4, 7, 3).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def halo(self) -> int:
        """8 pixels at 1/8 resolution for the released depths: 3 then 9 3x3 convolutions (before / after the last
        upsampling)."""
        levels = [0]
        for block in self.model.decoder.up_blocks[TILED_FROM_BLOCK:]:
            levels[-1] += 2 * (block.conv_in is not None)
            if block.upsamplers is not None:
                levels[-1] += 1  # the upsampler's convolution runs before its depth-to-space
                levels.append(0)
            levels[-1] += 2 * len(block.resnets)
        levels[-1] += 1  # conv_out
        return receptive_radius(levels)
