"""Benchmarks: `flashhead bench NAME`. Each benchmark prints one JSON line of numbers (and nothing is asserted:
speed targets are reported, not tested). Full-size models are built with random weights, never downloaded."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.utils.benchmark

from ..audio import AudioContextCache, once_mode_chunks, stream_chunks
from ..config import AUDIO_SAMPLE_RATE, CHUNK_FRAMES, PRESETS, SAMPLES_PER_FRAME, parse_size
from ..media.frames import video_to_images
from ..pipeline import load_pipeline, write_talking_video
from ..generation.session import StreamingSession
from ..generation.chunks import frames_to_keep
from ..testing import write_tiny_checkpoint
from ..testing.media import synthetic_portrait, synthetic_speech, write_wav
from ..testing.random import random_dit, random_ltx_vae, random_wan_vae, random_wav2vec2
from .gpu_bench import bench_gpu, gpu_options
from .live_bench import bench_live, live_options
from .stage_timer import StageTimer

def time_call(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds over `repeats` calls after `warmup` (torch.utils.benchmark
    synchronises CUDA around each call)."""
    timer = torch.utils.benchmark.Timer(stmt="fn()", globals={"fn": fn})
    if warmup:
        timer.timeit(warmup)
    return statistics.median(timer.timeit(1).median for _ in range(repeats)) * 1e3


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak device memory since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20

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


def _add_full_size_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the full-size random-weight benches (dit, vae)."""
    parser.add_argument("--variant", choices=["lite", "pro", "both"], default="both")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=3)


def _full_size_setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, int, int, list[str]]:
    """(device, dtype, height, width, variants) from the shared options."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    height, width = parse_size(args.size)
    return device, dtype, height, width, (["lite", "pro"] if args.variant == "both" else [args.variant])


# ---------------------------------------------------------------------------------------------------------------
# The benchmarks, one section per stage.


# --- DiT -----------------------------------------------------------------------------------------------------------

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
    _add_full_size_options(parser)
    parser.add_argument("--frames", type=int, default=33, help="pixel frames of the chunk")
    parser.add_argument("--layers", type=int, default=None, help="fewer than 30 blocks (reported) for quick CPU runs")
    parser.add_argument("--attention", default="auto")


def bench_dit(args: argparse.Namespace) -> dict:
    """One DiT evaluation of the full-size model with random weights: ms, tokens, TFLOP/s, peak memory."""
    device, dtype, height, width, variants = _full_size_setup(args)
    results = {}
    for variant in variants:
        config = PRESETS[variant]
        if args.layers:
            config = config.with_(num_layers=args.layers)
        model = random_dit(config, device, dtype, args.attention)
        latent_frames = 1 + (args.frames - 1) // config.t_stride
        shape = (1, config.out_dim, latent_frames, height // config.vae_stride[1], width // config.vae_stride[2])
        z, ref = torch.randn(shape, device=device), torch.randn(shape, device=device)
        windows = torch.randn(1, 1 + config.t_stride * (latent_frames - 1), 5, 12, 768, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            tokens_audio = model.audio_proj(windows)
            ms = time_call(lambda: model(z, torch.tensor([937.5], device=device), ref, tokens_audio),
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


# --- audio ---------------------------------------------------------------------------------------------------------

def _audio_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-frames", type=int, default=28, help="frames per chunk: 28 Pro, 24 Lite")
    parser.add_argument("--context-seconds", type=float, default=8.0, help="Temporal Audio Context Cache length")
    parser.add_argument("--seconds", type=float, default=30.0, help="track length for the once-mode timing")
    parser.add_argument("--repeats", type=int, default=5)


def bench_audio(args: argparse.Namespace) -> dict:
    """wav2vec2-base-960h with random weights in float32: one stream chunk (push a slice, re-encode the whole context)
    and a whole track in 'once' mode (one encoder pass, attention over the whole track)."""


    device = torch.device(args.device)
    encoder = random_wav2vec2(device)
    rng = np.random.default_rng(0)
    cache = AudioContextCache(encoder, args.context_seconds)
    piece = (0.1 * rng.standard_normal(args.new_frames * SAMPLES_PER_FRAME)).astype(np.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    chunk_ms = time_call(lambda: cache.push(piece), repeats=args.repeats)
    chunk_seconds = args.new_frames * SAMPLES_PER_FRAME / AUDIO_SAMPLE_RATE
    track = (0.1 * rng.standard_normal(round(args.seconds * AUDIO_SAMPLE_RATE))).astype(np.float32)
    once_ms = time_call(lambda: list(once_mode_chunks(encoder, track, args.new_frames)),
                        repeats=max(1, args.repeats // 2))
    return {"stream": {"ms_per_chunk": round(chunk_ms, 2), "context_seconds": args.context_seconds,
                       "new_frames": args.new_frames,
                       "ms_per_second_of_audio": round(chunk_ms / chunk_seconds, 2)},
            "once": {"seconds": args.seconds, "ms_total": round(once_ms, 1),
                     "ms_per_second_of_audio": round(once_ms / args.seconds, 2)},
            "params": sum(p.numel() for p in encoder.model.parameters()),
            "peak_memory_mb": round(peak_memory_mb(device), 1)}


# --- VAEs ----------------------------------------------------------------------------------------------------------

def _vae_options(parser: argparse.ArgumentParser) -> None:
    _add_full_size_options(parser)  # --variant lite: the LTX-Video 0.9.0 VAE, pro: the Wan2.1 VAE
    parser.add_argument("--tiling", action=argparse.BooleanOptionalAction, default=True,
                        help="the exact tiled decode (only acts above 512x512; --no-tiling decodes whole frames)")
    parser.add_argument("--warmup", type=int, default=1)


def bench_vae(args: argparse.Namespace) -> dict:
    """Full-size VAEs with random weights: decode one 33-frame chunk and encode the motion frames (5 Pro, 9 Lite)."""
    device, dtype, height, width, variants = _full_size_setup(args)
    results = {}
    for variant in variants:
        config = PRESETS[variant]
        build = random_wan_vae if variant == "pro" else random_ltx_vae
        vae = build(device=device, dtype=dtype, tiling=args.tiling)
        t_stride, s, _ = vae.stride
        latents = torch.randn(1, vae.latent_channels, 1 + (CHUNK_FRAMES - 1) // t_stride, height // s, width // s,
                              device=device)
        frames = torch.rand(1, 3, config.motion_frames, height, width, device=device) * 2 - 1
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        decode_ms = time_call(lambda: vae.decode(latents), repeats=args.repeats, warmup=args.warmup)
        encode_ms = time_call(lambda: vae.encode(frames), repeats=args.repeats, warmup=args.warmup)
        results[variant] = {f"decode_{CHUNK_FRAMES}_frames_ms": round(decode_ms, 1),
                            f"encode_{config.motion_frames}_frames_ms": round(encode_ms, 1),
                            "params": sum(p.numel() for p in vae.model.parameters()),
                            "peak_memory_mb": round(peak_memory_mb(device), 1)}
        del vae
    return {"size": f"{width}x{height}", "dtype": str(dtype).replace("torch.", ""), "tiling": args.tiling, **results}


# --- the whole loop at full size: per-stage times, FPS, time to first frame ------------------------------------------

CPU_E2E_LAYERS = 2  # the CPU default: a full-width DiT with 2 of its 30 blocks (said in the output)
CPU_E2E_SIZE = "128x128"


def _e2e_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["lite", "pro"], default="lite")
    parser.add_argument("--size", default=None, help=f"WIDTHxHEIGHT (default 512x512; {CPU_E2E_SIZE} on CPU)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks generated; the first is warm-up")
    parser.add_argument("--layers", type=int, default=None,
                        help=f"DiT blocks (default 30; {CPU_E2E_LAYERS} on CPU)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="DiT and VAE dtype (wav2vec2 stays float32); default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT (the first chunk compiles)")
    parser.add_argument("--table", action="store_true", help="also print a readable table (stderr)")


def bench_e2e(args: argparse.Namespace) -> dict:
    """Full-size models with random weights (DiT, the variant's VAE, wav2vec2), a synthetic portrait and speech,
    stream mode: per-stage milliseconds per chunk (median of the chunks after the first), new frames per second of
    wall time in the steady state, time to first frame (the first chunk, cold) and peak memory."""


    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    dtype = getattr(torch, args.dtype or ("float32" if on_cpu else "bfloat16"))
    height, width = parse_size(args.size or (CPU_E2E_SIZE if on_cpu else "512x512"))
    config = PRESETS[args.variant]
    layers = args.layers or (CPU_E2E_LAYERS if on_cpu else config.num_layers)
    config = config.with_(num_layers=layers)
    model = random_dit(config, device, dtype, args.attention)
    if args.compile:
        model.compile_blocks()
    vae = (random_wan_vae if args.variant == "pro" else random_ltx_vae)(device=device, dtype=dtype)
    encoder = random_wav2vec2(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timer = StageTimer(device)
    session = StreamingSession(model, vae, height=height, width=width, seed=0, stage=timer.stage)
    with tempfile.TemporaryDirectory(prefix="flashhead-bench-") as tmp:
        with timer.stage("prepare_reference"):
            session.add_identity("portrait", synthetic_portrait(Path(tmp) / "face.png"))
    timer.end_chunk()
    seconds = args.chunks * config.new_frames * SAMPLES_PER_FRAME / AUDIO_SAMPLE_RATE
    windows = stream_chunks(encoder, synthetic_speech(seconds), config.new_frames)
    chunk_walls = []  # ms per chunk: audio in -> new frames on the CPU
    for index in range(args.chunks):
        start = time.perf_counter()
        with timer.stage("audio_encode"):
            chunk_windows = next(windows)
        frames = session.generate_chunk(chunk_windows)
        with timer.stage("frame_handoff"):  # new frames to the CPU as [n, H, W, 3] float32 (what writers take)
            video_to_images(frames[:, :, frames_to_keep(index, "stream", config.motion_frames)])
        wall_ms = (time.perf_counter() - start) * 1e3  # video_to_images synchronises: the frames are on the CPU
        chunk_walls.append(wall_ms)
        timer.end_chunk()

    per_chunk = timer.per_chunk()
    stages = timer.medians(skip_chunks=2)  # chunk 0 of the timer is the reference preparation, chunk 1 is warm-up
    warm = sorted(chunk_walls[1:] or chunk_walls)
    steady = warm[len(warm) // 2]
    result = {
        "variant": args.variant, "size": f"{width}x{height}", "dtype": str(dtype).replace("torch.", ""),
        "layers": layers, "attention": model.attention_backend, "compile": args.compile, "chunks": args.chunks,
        "new_frames_per_chunk": config.new_frames,
        "fps": round(config.new_frames / (steady / 1e3), 2),
        "chunk_ms": round(steady, 1),
        "time_to_first_frame_ms": round(chunk_walls[0], 1),  # the first chunk, cold (compiles when --compile)
        "prepare_reference_ms": round(per_chunk[0]["prepare_reference"], 1),
        "stages_ms": {name: round(ms, 2) for name, ms in stages.items()},
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    if layers != PRESETS[args.variant].num_layers:
        result["reduced"] = (f"DiT with {layers} of {PRESETS[args.variant].num_layers} blocks: the DiT stages and the "
                             f"FPS are not the full model's")
    if args.table:
        print(_stage_table(result), file=sys.stderr)
    return result


def _stage_table(result: dict) -> str:
    """The e2e result as a readable table: stage, ms per chunk, share of the chunk."""
    total = sum(result["stages_ms"].values())
    lines = [f"FlashHead {result['variant']} {result['size']} {result['dtype']}, {result['layers']} blocks, "
             f"attention {result['attention']}, compile {result['compile']}",
             f"{'stage':<20}{'ms/chunk':>12}{'share':>9}"]
    lines += [f"{name:<20}{ms:>12.2f}{ms / total:>9.1%}" for name, ms in result["stages_ms"].items()]
    lines += [f"{'FPS (steady)':<20}{result['fps']:>12.2f}",
              f"{'first frame (ms)':<20}{result['time_to_first_frame_ms']:>12.1f}",
              f"{'peak memory (MB)':<20}{result['peak_memory_mb']:>12.1f}"]
    if "reduced" in result:
        lines.append("note: " + result["reduced"])
    return "\n".join(lines)


# --- streaming generation on a tiny checkpoint: speed and memory versus audio length --------------------------------

def _stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["lite", "pro"], default="lite")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic speech")
    parser.add_argument("--size", default="64x64", help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--mode", choices=["stream", "once"], default="stream")


def bench_stream(args: argparse.Namespace) -> dict:
    """The whole job (tiny random checkpoint, synthetic portrait and speech, MP4 written incrementally): frames per
    second and the process's peak RSS. Run it for two lengths (or `bench stream-memory`) to see memory stay flat."""
    height, width = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="flashhead-bench-") as tmp:
        tmp = Path(tmp)
        pipeline = load_pipeline(write_tiny_checkpoint(tmp, args.variant), variant=args.variant,
                                 device=args.device)
        image = synthetic_portrait(tmp / "face.png")
        speech = write_wav(tmp / "speech.wav", synthetic_speech(args.seconds))
        summary = write_talking_video(pipeline, image, speech, tmp / "out.mp4", height=height, width=width,
                                      mode=args.mode)
    return {**summary.as_dict(), "audio_seconds": args.seconds, "peak_rss_mb": round(peak_memory_mb(torch.device("cpu")), 1),
            "note": "tiny random-weight model"}


def _stream_memory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["lite", "pro"], default="lite")
    parser.add_argument("--short", type=float, default=10.0, help="seconds of audio of the first run")
    parser.add_argument("--long", type=float, default=120.0, help="seconds of audio of the second run")
    parser.add_argument("--size", default="64x64")


def bench_stream_memory(args: argparse.Namespace) -> dict:
    """`bench stream` for a short and a long track, each in a fresh process: peak RSS of both and their ratio."""
    runs = {}
    for seconds in (args.short, args.long):
        command = [sys.executable, "-m", "flashhead_core", "bench", "stream", "--variant", args.variant,
                   "--seconds", str(seconds), "--size", args.size, "--device", args.device]
        runs[seconds] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout
                                   .strip().splitlines()[-1])
    short, long = runs[args.short], runs[args.long]
    return {"variant": args.variant, "size": args.size, "short_seconds": args.short, "long_seconds": args.long,
            "short_peak_rss_mb": short["peak_rss_mb"], "long_peak_rss_mb": long["peak_rss_mb"],
            "ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3), "long_fps": long["fps"]}


def _chunk_memory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["lite", "pro", "both"], default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square sizes in pixels")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child's single measurement


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def bench_chunk_memory(args: argparse.Namespace) -> dict:
    """Working memory of one chunk beside the loaded weights, the figure behind `session.BYTES_PER_PIXEL_FRAME`:
    for each variant and size, a fresh process loads a tiny checkpoint (RSS after loading), generates one chunk
    (peak RSS) and the difference is fitted as bytes per output pixel and chunk frame (a line through the sizes)."""
    if args.one is not None:
        variant = args.variant
        with tempfile.TemporaryDirectory(prefix="flashhead-bench-") as tmp:
            tmp = Path(tmp)
            pipeline = load_pipeline(write_tiny_checkpoint(tmp, variant), variant=variant, device=args.device)
            image = synthetic_portrait(tmp / "face.png")
            speech = write_wav(tmp / "speech.wav", synthetic_speech(PRESETS[variant].new_frames / 25))
            loaded = _rss_mb()
            write_talking_video(pipeline, image, speech, tmp / "out.mp4", height=args.one, width=args.one)
        return {"extra_mb": round(peak_memory_mb(torch.device("cpu")) - loaded, 1)}
    results = {}
    for variant in (["lite", "pro"] if args.variant == "both" else [args.variant]):
        extra = {}
        for size in args.sizes:
            command = [sys.executable, "-m", "flashhead_core", "bench", "chunk-memory", "--variant", variant,
                       "--one", str(size), "--device", args.device]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            extra[size] = json.loads(output.strip().splitlines()[-1])["extra_mb"]
        pixels = [size * size * CHUNK_FRAMES for size in args.sizes]
        slope = np.polyfit(pixels, [extra[s] * 2**20 for s in args.sizes], 1)[0] if len(pixels) > 1 else \
            extra[args.sizes[0]] * 2**20 / pixels[0]
        results[variant] = {"extra_mb": extra, "bytes_per_pixel_frame": round(float(slope), 1)}
    return {"chunk_memory": results, "note": "tiny random-weight checkpoints, float32, tiled decode on"}


# --- batched streams: N portraits x N tracks, one DiT call per step for all -----------------------------------------

def _batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=4, help="portraits x tracks generated together")
    parser.add_argument("--variant", choices=["lite", "pro"], default="lite")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each synthetic speech track")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 64x64 tiny, 512x512 with --full-size)")
    parser.add_argument("--full-size", action="store_true",
                        help="full-size random-weight DiT, VAE and wav2vec2 (flashhead_core.testing.random; a GPU)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")


def bench_batch(args: argparse.Namespace) -> dict:
    """Aggregate and per-stream frames per second of `--streams` batched streams against one stream alone (the same
    models, size and track length); the audio encode and the VAE are included, the MP4 writing is not."""
    from ..generation.batch import batch_talking_heads

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    height, width = parse_size(args.size or ("512x512" if args.full_size else "64x64"))
    with tempfile.TemporaryDirectory(prefix="flashhead-bench-") as tmp:
        tmp = Path(tmp)
        if args.full_size:
            config = PRESETS[args.variant]
            model = random_dit(config, device, dtype)
            vae = (random_ltx_vae if args.variant == "lite" else random_wan_vae)(device=device, dtype=dtype)
            encoder = random_wav2vec2(device)
        else:
            pipeline = load_pipeline(write_tiny_checkpoint(tmp, args.variant), variant=args.variant, device=device,
                                     dtype=dtype)
            model, vae, encoder = pipeline.model, pipeline.vae, pipeline.audio_encoder
        image = synthetic_portrait(tmp / "face.png")
        track = synthetic_speech(args.seconds)

        def timed(streams: int) -> tuple[float, int]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = batch_talking_heads(model, vae, encoder, [image] * streams, [track] * streams, height=height,
                                      width=width, seed=0, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start, sum(len(frames) for frames in out)

        timed(1)  # warm-up (kernels, allocator, RoPE tables)
        single_seconds, single_frames = timed(1)
        batch_seconds, batch_frames = timed(args.streams)
    single_fps = single_frames / single_seconds
    aggregate = batch_frames / batch_seconds
    return {"variant": args.variant, "size": f"{width}x{height}", "dtype": str(dtype).removeprefix("torch."),
            "streams": args.streams, "frames_per_stream": single_frames, "audio_seconds": args.seconds,
            "single_stream_fps": round(single_fps, 2), "aggregate_fps": round(aggregate, 2),
            "per_stream_fps": round(aggregate / args.streams, 2), "speedup": round(aggregate / single_fps, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "note": "full-size random weights" if args.full_size else "tiny random-weight model"}


# name -> (function(args) -> dict of results, function(parser) adding its options)
BENCHES: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[argparse.ArgumentParser], None]]] = {
    "dit": (bench_dit, _dit_options),
    "audio": (bench_audio, _audio_options),
    "vae": (bench_vae, _vae_options),
    "e2e": (bench_e2e, _e2e_options),
    "stream": (bench_stream, _stream_options),
    "stream-memory": (bench_stream_memory, _stream_memory_options),
    "chunk-memory": (bench_chunk_memory, _chunk_memory_options),
    "batch": (bench_batch, _batch_options),
    "live": (bench_live, live_options),
    "gpu": (bench_gpu, gpu_options),
}
