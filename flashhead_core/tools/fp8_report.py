"""fp8 weight storage report (docs/fp8.md): DiT weight bytes per weight_dtype, and how far fp8 weights move two chunks'
denoised latents away from bf16 weights on a full-size DiT with random weights.

    python -m flashhead_core.tools.fp8_report [--variants lite pro] [--size 128] [--steps 4]

Two chunks through the real sampler (sample_chunk, bf16 compute, the same noise, audio and reference for every
weight_dtype); chunk 2's motion latents are chunk 1's last latent frames (a stand-in for re-encoding its last frames
through the VAE). PSNR = 10 log10(range^2 / MSE), range = max - min of the bf16 run's latents of that chunk.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..checkpoint import WEIGHT_DTYPES, build_dit, fp8_weight_names
from ..config import CHUNK_FRAMES, MOTION_LATENTS, PRESETS, ModelConfig
from ..model import FlashHeadDiT
from ..generation.sampler import SamplerConfig, motion_inputs, sample_chunk, shifted_timesteps
from ..testing.random import random_dit
from ..weights import DictSource

FP8 = {name: dtype for name, dtype in WEIGHT_DTYPES.items() if dtype is not None}


def weight_bytes(config: ModelConfig, weight_dtype: torch.dtype | None, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of the DiT's weights in `dtype`, with the blocks' Linear weights in `weight_dtype` when given."""
    with torch.device("meta"):
        model = FlashHeadDiT(config)
    fp8 = set(fp8_weight_names(model)) if weight_dtype else set()
    return sum(v.numel() * (weight_dtype if k in fp8 else dtype).itemsize for k, v in model.state_dict().items())


def psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    """10 log10(range^2 / MSE) in dB, range = the reference's max - min."""
    reference, test = reference.double(), test.double()
    mse = (test - reference).pow(2).mean()
    return float(10 * torch.log10((reference.max() - reference.min()) ** 2 / mse))


def two_chunks(model: FlashHeadDiT, height: int, width: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """Denoised latents [1, C, T, h, w] of two consecutive chunks at height x width, fixed seeded inputs."""
    config = model.config
    frames = 1 + (CHUNK_FRAMES - 1) // config.t_stride
    shape = (1, config.out_dim, frames, height // config.vae_stride[1], width // config.vae_stride[2])
    inputs = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape[:2] + (1,) + shape[3:], generator=inputs).expand(shape).to(model.dtype)
    windows = torch.randn(1, 1 + config.t_stride * (frames - 1), 5, 12, config.audio_channels, generator=inputs)
    noise = torch.Generator().manual_seed(seed + 1)
    timesteps = shifted_timesteps(SamplerConfig(steps=steps), model.dtype)
    motion, chunks = ref[:, :, :1], []
    with torch.no_grad():
        tokens = model.audio_proj(windows)
        for _ in range(2):
            draws = torch.stack([torch.randn(shape, generator=noise) for _ in range(steps + 1)]).to(model.dtype)
            latents = sample_chunk(model, tokens, ref, *motion_inputs([motion], frames), draws, timesteps)
            chunks.append(latents)
            motion = latents[:, :, -MOTION_LATENTS:]
    return chunks


def report(variants: list[str], size: int, steps: int) -> str:
    """A markdown table: weight bytes per weight_dtype and latent PSNR of fp8 against bf16 weights."""
    rows = ["| variant | weights | DiT weight bytes | chunk 1 latent PSNR | chunk 2 latent PSNR | s / chunk |",
            "|---|---|---|---|---|---|"]
    for variant in variants:
        config = PRESETS[variant]
        bf16 = random_dit(config, torch.device("cpu"), torch.bfloat16, attention="sdpa")
        start = time.perf_counter()
        reference = two_chunks(bf16, size, size, steps)
        seconds = (time.perf_counter() - start) / 2
        rows.append(f"| {variant} | bf16 | {weight_bytes(config, None) / 2**30:.2f} GiB | - | - | {seconds:.0f} |")
        for name, dtype in FP8.items():
            model = build_dit(config, DictSource(bf16.state_dict()), dtype=torch.bfloat16, attention="sdpa",
                              weight_dtype=dtype)
            start = time.perf_counter()
            chunks = two_chunks(model, size, size, steps)
            seconds = (time.perf_counter() - start) / 2
            del model
            rows.append(f"| {variant} | {name} | {weight_bytes(config, dtype) / 2**30:.2f} GiB | "
                        + " | ".join(f"{psnr(c, r):.1f} dB" for c, r in zip(chunks, reference)) + f" | {seconds:.0f} |")
            print(rows[-1], flush=True)
        del bf16
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(PRESETS), default=["lite", "pro"])
    parser.add_argument("--size", type=int, default=128, help="height = width in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    print(report(args.variants, args.size, args.steps))


if __name__ == "__main__":
    main()
