"""Benchmarks: `flashhead bench NAME`. Each benchmark prints one JSON line of numbers (and nothing is asserted:
speed targets are reported, not tested). Full-size models are built with random weights, never downloaded."""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

from .attention import resolve_backend

# name -> (function(args) -> dict of results, function(parser) adding its options)
BENCHES: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[argparse.ArgumentParser], None]]] = {}


def benchmark(name: str, add_options: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn):
        BENCHES[name] = (fn, add_options)
        return fn

    return register


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds; CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak device memory since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run(name: str, args: argparse.Namespace) -> dict:
    result = {"bench": name, **BENCHES[name][0](args), **environment(torch.device(args.device))}
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------------------------
# The benchmarks, one section per stage.


# --- DiT -----------------------------------------------------------------------------------------------------------

def _parse_size(text: str) -> tuple[int, int]:
    """'512x512' -> (height, width)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def dit_flops(config, grid: tuple[int, int, int]) -> float:
    """Multiply-add FLOPs (x2) of one DiT evaluation on a (T, h, w) token grid."""
    import math

    tokens = math.prod(grid)
    audio_tokens = grid[0] * config.audio_context_tokens
    dim, ffn = config.dim, config.ffn_dim
    per_block = (2 * tokens * (6 * dim * dim + 2 * dim * ffn)  # self q,k,v,o + cross q,o + FFN
                 + 2 * audio_tokens * 2 * dim * dim  # cross k, v on the audio tokens
                 + 4 * tokens * tokens * dim  # self-attention scores and values
                 + 4 * tokens * config.audio_context_tokens * dim)  # per-frame audio attention
    patch = math.prod(config.patch_size)
    return config.num_layers * per_block + 2 * tokens * dim * patch * (config.in_dim + config.out_dim)


def _dit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["lite", "pro", "both"], default="both")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--frames", type=int, default=33, help="pixel frames of the chunk")
    parser.add_argument("--layers", type=int, default=None, help="fewer than 30 blocks (reported) for quick CPU runs")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--repeats", type=int, default=3)


@benchmark("dit", _dit_options)
def bench_dit(args: argparse.Namespace) -> dict:
    """One DiT evaluation of the full-size model with random weights: ms, tokens, TFLOP/s, peak memory."""
    from .config import PRESETS
    from .model import FlashHeadDiT
    from .tiny import randomize_

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    height, width = _parse_size(args.size)
    results = {}
    for variant in (["lite", "pro"] if args.variant == "both" else [args.variant]):
        config = PRESETS[variant]
        if args.layers:
            config = config.with_(num_layers=args.layers)
        with torch.device("meta"):
            model = FlashHeadDiT(config, attention_backend=resolve_backend(args.attention, device))
        model = randomize_(model.to_empty(device=device).to(dtype)).eval()
        latent_frames = 1 + (args.frames - 1) // config.t_stride
        shape = (1, config.out_dim, latent_frames, height // config.vae_stride[1], width // config.vae_stride[2])
        z, ref = torch.randn(shape, device=device), torch.randn(shape, device=device)
        windows = torch.randn(1, 1 + config.t_stride * (latent_frames - 1), 5, 12, 768, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            tokens_audio = model.audio_proj(windows)
            ms = time_call(lambda: model(z, torch.tensor([937.5], device=device), ref, tokens_audio), device,
                           repeats=args.repeats)
        grid = (latent_frames, shape[3] // config.patch_size[1], shape[4] // config.patch_size[2])
        flops = dit_flops(config, grid)
        results[variant] = {"ms_per_eval": round(ms, 2), "tokens": grid[0] * grid[1] * grid[2],
                            "layers": config.num_layers, "tflop_per_eval": round(flops / 1e12, 3),
                            "tflops_achieved": round(flops / (ms / 1e3) / 1e12, 3),
                            "peak_memory_mb": round(peak_memory_mb(device), 1)}
        del model
    return {"size": f"{width}x{height}", "frames": args.frames, "dtype": str(dtype).replace("torch.", ""),
            "attention": args.attention, **results}
