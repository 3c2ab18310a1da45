"""`flashhead bench gpu`: every speed lever of the chunk loop, measured in one run on full-size random-weight models
(docs/performance.md#gpu-fast-path): one JSON on stdout, one table on stderr.

    flashhead bench gpu [--device cuda] [--size 512x512] [--chunks 4] [--budget 450] [--out gpu.json]
    flashhead bench gpu --quick --device cpu      # the tiny models at 64x64 / 32x32 (CI: it cannot rot)

For Lite and Pro, each path runs real sessions (`StreamingSession`, `generate_chunks`: audio projection, the 4 steps,
VAE decode, colour correction, motion re-encode) on seeded inputs, and reports chunk time, FPS (new frames per
chunk / chunk time), time to first frame (a fresh session: identity encode + its first chunk, after any compilation),
compile time (the first chunk of the first session minus a steady chunk), peak memory and the PSNR of the first
chunk's frames against bf16 eager (and bf16 eager against float32):
    float32, eager (bf16, SDPA's own choice), sdpa:flash, sdpa:efficient, sdpa:cudnn, each other attention kernel that
    imports (flash_attn_3/2, sage), compiled (the static step without CUDA graphs), cuda_graphs (the static step
    replayed), fp8 compute (per-row scales; eager and with the best static path), Pro: the TAEHV tiny decoder
    instead of the Wan VAE (decode time of both, ratio), Lite: 1, 2, 4 and 8 streams batched (aggregate FPS), and the
    decode overlap (one stream's DiT chunk beside another's VAE decode on a second CUDA stream, against in order).
A path that cannot run here (CUDA graphs on the CPU, a kernel that is absent) is reported with its reason; a path
that fails records the error and the run goes on; paths that would start after `--budget` seconds are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Callable

import torch

from .. import layers
from ..attention import available_backends
from ..checkpoint import fp8_weight_names
from ..config import CHUNK_FRAMES, PRESETS, parse_size
from ..generation.sampler import SamplerConfig, motion_inputs, sample_chunk, shifted_timesteps
from ..generation.session import StreamingSession, generate_chunks
from ..testing.dit import tiny_config
from ..testing.random import random_dit, random_ltx_vae, random_wan_vae
from ..testing.vae import TINY_LTX_CHANNELS, TINY_LTX_LAYERS, TINY_WAN_DIM
from ..vae.taehv import TinyDecodeVAE, TinyVideoDecoder
from .fp8_report import psnr

SDPA_KERNELS = ("flash", "efficient", "cudnn")
BATCH_STREAMS = (1, 2, 4, 8)
QUICK_SIZE = {"lite": 64, "pro": 32}  # the smallest sizes each VAE takes


def gpu_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT in pixels (default 512x512)")
    parser.add_argument("--variant", choices=["lite", "pro", "both"], default="both")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per timed session (default 4)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: paths that would start later are skipped (default 450; none with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny one-block models (Lite 64x64, Pro 32x32), 2 chunks, no warm-up of the eager "
                             "paths (CI)")
    parser.add_argument("--out", default=None, help="also write the JSON here")


def environment(device: torch.device) -> dict:
    """Device name, driver, torch, CUDA and cuDNN versions, the attention kernels that import."""
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None, "attention_kernels": available_backends(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory
                   / 2**30, 1), multiprocessors=props.multi_processor_count)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["threads"] = torch.get_num_threads()
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One variant's models and inputs, and the paths measured on them."""

    def __init__(self, variant: str, args: argparse.Namespace, device: torch.device, deadline: float):
        self.variant, self.device, self.deadline = variant, device, deadline
        self.quick = args.quick
        self.config = tiny_config(variant).with_(num_layers=1) if args.quick else PRESETS[variant]
        self.height, self.width = (QUICK_SIZE[variant],) * 2 if args.quick else parse_size(args.size)
        self.chunks = 2 if args.quick else args.chunks
        self.dtype = torch.bfloat16
        self.vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.vae = self._vae()
        self.portrait = torch.rand(1, self.height, self.width, 3, generator=torch.Generator().manual_seed(0))
        latent_frames = 1 + (CHUNK_FRAMES - 1) // self.config.t_stride
        g = torch.Generator().manual_seed(1)
        self.windows = [torch.randn(1, 1 + self.config.t_stride * (latent_frames - 1), 5, 12,
                                    self.config.audio_channels, generator=g) for _ in range(self.chunks + 1)]
        self.model = random_dit(self.config, device, torch.float32, attention="sdpa")
        self.reference: torch.Tensor | None = None  # bf16 eager's first-chunk frames
        self.rows: list[dict] = []

    def _vae(self):
        if self.variant == "pro":
            return random_wan_vae(TINY_WAN_DIM if self.quick else 96, device=self.device, dtype=self.vae_dtype)
        if self.quick:
            return random_ltx_vae(TINY_LTX_CHANNELS, TINY_LTX_LAYERS, device=self.device, dtype=self.vae_dtype)
        return random_ltx_vae(device=self.device, dtype=self.vae_dtype)

    def session(self, seed: int = 0, static: str = "off", vae=None) -> StreamingSession:
        session = StreamingSession(self.model, vae or self.vae, height=self.height, width=self.width, seed=seed,
                                   sampler=SamplerConfig(static=static), device=self.device)
        session.add_identity("portrait", self.portrait)
        return session

    def time_chunks(self, sessions: list[StreamingSession], chunks: int) -> tuple[list[float], torch.Tensor]:
        """Seconds of each of `chunks` batched chunks, and the first row's first-chunk frames."""
        seconds, first = [], None
        for k in range(chunks):
            start = time.perf_counter()
            frames = generate_chunks(sessions, [self.windows[k]] * len(sessions))
            sync(self.device)
            seconds.append(time.perf_counter() - start)
            first = frames[0].float().cpu() if first is None else first
        return seconds, first

    def measure(self, path: str, static: str = "off", streams: int = 1, vae=None, context=nullcontext,
                reference: bool = True, chunks: int | None = None) -> tuple[dict, torch.Tensor]:
        """One path: a warm-up session (compilation; none when chunks == 1), then fresh sessions timed from the
        identity encode on. Returns its row and the first stream's first-chunk frames."""
        chunks = chunks or self.chunks
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with context():
            warm_s = [0.0]
            if chunks > 1 and (static != "off" or not self.quick):
                warm_s, _ = self.time_chunks([self.session(static=static, vae=vae)], 1 if static == "off" else 2)
            start = time.perf_counter()
            sessions = [self.session(seed=s, static=static, vae=vae) for s in range(streams)]
            seconds, frames = self.time_chunks(sessions, chunks)
            ttff = time.perf_counter() - start - sum(seconds[1:])
        chunk_s = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        row = {"path": path, "streams": streams, "chunk_ms": round(chunk_s * 1e3, 1),
               "fps": round(self.config.new_frames / chunk_s, 1),
               "aggregate_fps": round(streams * self.config.new_frames / chunk_s, 1), "ttff_s": round(ttff, 3),
               "compile_s": None if static == "off" else round(max(0.0, warm_s[0] - chunk_s), 1),
               "peak_mem_mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20)
               if self.device.type == "cuda" else None}
        if reference and self.reference is not None:
            row["psnr_vs_bf16_db"] = round(psnr(frames, self.reference), 1)
        return row, frames

    def run(self, path: str, fn: Callable[[], dict | None], estimate_s: float = 0.0) -> None:
        """Run one path, recording its row, the reason it cannot run, its error, or that the budget ran out."""
        if time.perf_counter() + estimate_s > self.deadline:
            self.rows.append({"path": path, "skipped": "time budget"})
            return
        started = time.perf_counter()
        try:
            row = fn()
        except Exception as error:  # one failing path must not cost the rest of a 15-minute GPU lease
            row = {"path": path, "error": f"{type(error).__name__}: {str(error)[:300]}"}
            torch._dynamo.reset()
        if row is not None:
            row.setdefault("path", path)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            self.rows.append(row)
            print(f"flashhead bench gpu: {self.variant} {json.dumps(row)}", file=sys.stderr, flush=True)

    # --- the paths ---------------------------------------------------------------------------------------------

    def float32_then_bf16(self) -> dict:
        """float32 first (its frames), then the model in bf16: bf16 eager is the reference of every other path."""
        row32, frames32 = self.measure("float32", reference=False, chunks=1)
        self.model.to(self.dtype)
        row, self.reference = self.measure("eager")
        self.rows.append({**row32, "psnr_vs_bf16_db": None})
        row["psnr_bf16_vs_float32_db"] = round(psnr(self.reference, frames32), 1)
        return row

    def sdpa(self, kernel: str) -> dict:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION}[kernel]
        return self.measure(f"sdpa:{kernel}", context=lambda: sdpa_kernel(backend))[0]

    def kernel(self, backend: str) -> dict:
        self.model.attention_backend = backend
        try:
            return self.measure(f"kernel:{backend}")[0]
        finally:
            self.model.attention_backend = "sdpa"

    def static(self, mode: str) -> dict:
        """The static step, "compiled" (no CUDA graphs) or "cuda_graphs" (CUDA only)."""
        if mode == "cuda_graphs" and self.device.type != "cuda":
            return {"unavailable": "CUDA only"}
        return self.measure(mode, static=mode)[0]

    def fp8(self, static: str) -> dict:
        names = fp8_weight_names(self.model)
        layers.use_fp8_compute(self.model, "row", names)
        try:
            return self.measure("fp8_row" + ("" if static == "off" else f":{static}"), static=static)[0]
        finally:
            layers.use_fp8_compute(self.model, None, names)

    def tiny_decoder(self) -> dict:
        """Decode time per chunk, Wan VAE against TAEHV (random weights in the published layout), and the FPS."""
        decoder = TinyVideoDecoder().to(self.device, self.vae_dtype)  # timing only: random-weight frames
        for p in decoder.parameters():
            torch.nn.init.normal_(p, std=p[0].numel() ** -0.5 if p.dim() > 1 else 0.01)
        fast = TinyDecodeVAE(self.vae, decoder)
        latents = torch.randn(self.session().latent_shape, device=self.device)
        decode_ms = {}
        for name, vae in (("vae", self.vae), ("taehv", fast)):
            vae.decode(latents)
            sync(self.device)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                vae.decode(latents)
                sync(self.device)
                times.append(time.perf_counter() - start)
            decode_ms[name] = statistics.median(times) * 1e3
        row = self.measure("taehv_decode", vae=fast, reference=False)[0]
        row.update(vae_decode_ms=round(decode_ms["vae"], 1), taehv_decode_ms=round(decode_ms["taehv"], 1),
                   decode_cost_ratio=round(decode_ms["taehv"] / decode_ms["vae"], 4))
        return row

    def decode_overlap(self) -> dict:
        """One stream's 4-step update beside another stream's VAE decode: in order, then on two CUDA streams (events
        only, no host sync in between). On the CPU both run in order and give the same latents and frames."""
        session = self.session()
        shape = session.latent_shape
        g = torch.Generator().manual_seed(3)
        noise = torch.randn((5, *shape), generator=g).to(self.device, self.dtype)
        ref = session.identities["portrait"].ref_latent
        motion, mask = motion_inputs([ref[:, :, :1]], shape[2])
        timesteps = shifted_timesteps(SamplerConfig(), self.dtype).to(self.device)
        with torch.no_grad():
            tokens = self.model.audio_proj(self.windows[0].to(self.device))
        other = torch.randn(shape, generator=g).to(self.device)

        def dit():
            return sample_chunk(self.model, tokens, ref, motion, mask, noise, timesteps)

        def decode():
            return self.vae.decode(other)

        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

        def overlapped():
            if side is None:
                return dit(), decode()
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                frames = decode()
            latents = dit()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return latents, frames

        def timed(fn) -> tuple[float, tuple]:
            with torch.no_grad():
                fn()
                sync(self.device)
                start = time.perf_counter()
                out = fn()
                sync(self.device)
            return time.perf_counter() - start, out

        serial_s, (lat_a, fr_a) = timed(lambda: (dit(), decode()))
        overlap_s, (lat_b, fr_b) = timed(overlapped)
        return {"path": "decode_overlap", "in_order_ms": round(serial_s * 1e3, 1),
                "overlapped_ms": round(overlap_s * 1e3, 1), "saved_ms": round((serial_s - overlap_s) * 1e3, 1),
                "same_output": bool(torch.equal(lat_a, lat_b) and torch.equal(fr_a, fr_b))}


def bench_variant(variant: str, args: argparse.Namespace, device: torch.device, deadline: float) -> list[dict]:
    bench = Bench(variant, args, device, deadline)
    bench.run("eager", bench.float32_then_bf16)
    cuda = device.type == "cuda"
    for kernel in SDPA_KERNELS:
        if cuda:
            bench.run(f"sdpa:{kernel}", lambda k=kernel: bench.sdpa(k), 20)
        else:
            bench.rows.append({"path": f"sdpa:{kernel}", "unavailable": "CUDA only"})
    for backend in available_backends(device)[1:]:
        bench.run(f"kernel:{backend}", lambda b=backend: bench.kernel(b), 20)
    bench.run("cuda_graphs", lambda: bench.static("cuda_graphs"), 60)
    bench.run("compiled", lambda: bench.static("compiled"), 60)
    bench.run("fp8_row", lambda: bench.fp8("off"), 20)
    if cuda:
        bench.run("fp8_row:cuda_graphs", lambda: bench.fp8("cuda_graphs"), 60)
    if variant == "pro":
        bench.run("taehv_decode", bench.tiny_decoder, 20)
    else:
        for streams in BATCH_STREAMS:
            bench.run(f"batch:{streams}", lambda n=streams: bench.measure(f"batch:{n}", streams=n,
                                                                           reference=False)[0], 10 * streams)
    bench.run("decode_overlap", bench.decode_overlap, 10)
    return bench.rows


def bench_gpu(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    started = time.perf_counter()
    deadline = started + (args.budget or (math.inf if args.quick else 450.0))
    variants = ["lite", "pro"] if args.variant == "both" else [args.variant]
    result = {"size": "quick" if args.quick else args.size, "quick": args.quick, "environment": environment(device),
              "variants": {}}
    for variant in variants:
        # each variant gets an equal share of what is left
        share = (deadline - time.perf_counter()) / (len(variants) - variants.index(variant))
        result["variants"][variant] = bench_variant(variant, args, device, time.perf_counter() + share)
        torch._dynamo.reset()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(table(result), file=sys.stderr)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=1)
    return result


COLUMNS = ("path", "streams", "fps", "aggregate_fps", "chunk_ms", "ttff_s", "compile_s", "peak_mem_mb",
           "psnr_vs_bf16_db", "note")


def table(result: dict) -> str:
    """The result as a markdown table, one row per variant and path (notes: reasons, errors, extra figures)."""
    env = result["environment"]
    lines = [f"{env.get('gpu', env['device'])}, driver {env.get('driver')}, torch {env['torch']}, CUDA "
             f"{env['cuda']}, {result['size']}", "", "| variant | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    known = set(COLUMNS) | {"wall_s"}
    for variant, rows in result["variants"].items():
        for row in rows:
            note = ", ".join(f"{k}={v}" for k, v in row.items() if k not in known)
            cells = [row.get(c, "") for c in COLUMNS[:-1]] + [note]
            lines.append(f"| {variant} | " + " | ".join("" if v is None else str(v) for v in cells) + " |")
    return "\n".join(lines)


