"""Wan2.1 VAE (FlashHead Pro): diffusers' `AutoencoderKLWan` plus the published latent statistics (spec §5).

encode: posterior mean mu, z = (mu - mean) * inv_std with inv_std = 1/std rounded in the VAE dtype (the official
wrapper's arithmetic). decode: decoder(z / inv_std + mean), clamped to [-1, 1]. The network is causal in time:
diffusers encodes frame 0 alone and then groups of 4 frames, decodes one latent frame at a time, and resets its
feature cache at the start of every call, as the official code does.

Key layouts: the released `Wan2.1_VAE.pth` (and ComfyUI's `wan_2.1_vae.safetensors`) use the original Wan names
(`encoder.downsamples.0.residual.2.weight`, `decoder.head.2.weight`, `conv1.weight`); diffusers files use
diffusers' names. `KEYS` maps one to the other.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from ..checkpoint import CheckpointError, build_on_meta, require_keys
from . import DiffusersVAE, KeyMap, check_config_json

VARIANT = "pro"
WHAT = "the Wan2.1 VAE (VAE_Wan/Wan2.1_VAE.pth)"
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def _key_map() -> KeyMap:
    """Wan2.1 layout (4 stages, 2 residual blocks each; the decoder has 3 per stage) <-> diffusers."""
    blocks = [("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")]
    for side in ("encoder", "decoder"):
        blocks += [(f"{side}.conv1.", f"{side}.conv_in."), (f"{side}.head.0.", f"{side}.norm_out."),
                   (f"{side}.head.2.", f"{side}.conv_out."), (f"{side}.middle.0.", f"{side}.mid_block.resnets.0."),
                   (f"{side}.middle.1.", f"{side}.mid_block.attentions.0."),
                   (f"{side}.middle.2.", f"{side}.mid_block.resnets.1.")]
    blocks += [(f"encoder.downsamples.{i}.", f"encoder.down_blocks.{i}.") for i in range(11)]
    for stage in range(4):
        blocks += [(f"decoder.upsamples.{4 * stage + r}.", f"decoder.up_blocks.{stage}.resnets.{r}.") for r in range(3)]
        if stage < 3:
            blocks.append((f"decoder.upsamples.{4 * stage + 3}.", f"decoder.up_blocks.{stage}.upsamplers.0."))
    leaves = (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
              ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))
    return KeyMap(tuple(blocks), leaves)


KEYS = _key_map()


def layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """"original", "diffusers" or None (not a Wan VAE). The `.gamma` RMS-norm gains set it apart from image VAEs."""
    if "decoder.head.0.gamma" in shapes:
        return "original"
    if "decoder.norm_out.gamma" in shapes:
        return "diffusers"
    return None


def model_kwargs(shapes: dict[str, tuple[int, ...]]) -> dict:
    """AutoencoderKLWan arguments from diffusers-named shapes (the rest of the geometry is Wan2.1's, checked by the
    key-by-key comparison)."""
    require_keys(shapes, ("encoder.conv_in.weight", "post_quant_conv.weight"), WHAT)
    return {"base_dim": shapes["encoder.conv_in.weight"][0], "z_dim": shapes["post_quant_conv.weight"][0]}


def from_state_dict(state: dict[str, torch.Tensor], layout: str, *, config_json: dict | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    tiling: bool = False) -> "WanVAE":
    if layout == "original":
        state = {KEYS.to_diffusers(k): v for k, v in state.items()}
    kwargs = model_kwargs({k: tuple(v.shape) for k, v in state.items()})
    if kwargs["z_dim"] != WanVAE.latent_channels:
        raise CheckpointError(f"a Wan VAE with {kwargs['z_dim']} latent channels (Wan2.2's has 48) is not "
                              f"{WHAT}, which has 16")
    check_config_json(config_json, kwargs, "AutoencoderKLWan", WHAT)
    model = build_on_meta(lambda: AutoencoderKLWan(**kwargs), state, device=device, dtype=dtype, what=WHAT,
                          file_names=KEYS.to_original if layout == "original" else str)
    return WanVAE(model, tiling)


class WanVAE(DiffusersVAE):
    family, variant, latent_channels, stride, clamp_output = "wan", VARIANT, 16, (4, 8, 8), True

    def __init__(self, model: AutoencoderKLWan, tiling: bool = False):
        super().__init__(model, tiling)
        channels = (1, -1, 1, 1, 1)
        self.mean = torch.tensor(LATENT_MEAN, dtype=self.dtype, device=self.device).view(channels)
        self.inv_std = (1.0 / torch.tensor(LATENT_STD, dtype=self.dtype, device=self.device)).view(channels)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """frames [B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised posterior mean [B, 16, 1 + k, H/8, W/8], float32.
        Deterministic: `generator` is accepted for the common interface and not used."""
        return self.normalise(self.posterior(frames).mean).float()

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) * self.inv_std

    def unnormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.inv_std + self.mean
