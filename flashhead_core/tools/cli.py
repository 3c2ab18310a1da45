"""The `flashhead` command (also `python -m flashhead_core`). Each subcommand is a thin wrapper over a module."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from .. import (DEFAULT_FEATHER, STATIC_MODES, WEIGHT_DTYPES, FaceCrop, FlashHeadError, InputError, apply_loras,
                load_pipeline, parse_face_box, parse_lora_option, parse_size, parse_timeline, read_lora,
                write_talking_video)
from ..serve import DEFAULT_PORT, SCHEDULING, ServeOptions, check_binding
from ..serve import run as serve
from ..testing import write_tiny_checkpoint
from . import bench
from .demo import run_demo
from .download import download
from .parity import verify_file


def _cmd_verify(args: argparse.Namespace) -> int:

    failed = 0
    for path in args.files:
        result = verify_file(path)
        print(json.dumps(result), flush=True)
        failed += not result["ok"]
    return 1 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:

    bench.run(args.name, args)
    return 0


def _compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _cmd_generate(args: argparse.Namespace) -> int:

    if (args.image is None) == (args.timeline is None):
        raise InputError("give the portrait as --image FILE, or several as --timeline 'a.png@0,b.png@4.5' (not both)")
    portraits = args.image if args.timeline is None else parse_timeline(args.timeline)
    face_crop = _face_crop(args)  # the portraits and the face box are checked before the models load
    device = torch.device(args.device)
    pipeline = load_pipeline(args.checkpoint, variant=args.variant, device=device,
                             dtype=_compute_dtype(args.dtype, device), attention=args.attention,
                             wav2vec2=args.wav2vec2, weight_dtype=WEIGHT_DTYPES[args.weight_dtype],
                             static=args.static)
    if args.lora:  # every file is read and checked against the DiT before any is applied
        loras = [read_lora(path, pipeline.model, strength) for path, strength in map(parse_lora_option, args.lora)]
        apply_loras(pipeline.model, loras)
        for lora in loras:
            if lora.skipped:
                print(f"flashhead: warning: {lora.name}: skipped {len(lora.skipped)} keys for modules the FlashHead "
                      f"DiT does not have: {', '.join(lora.skipped[:8])}", file=sys.stderr)
    height, width = args.size
    with tqdm(unit="frame", desc="generating") as bar:
        def on_chunk(done: int, total: int, seconds: float) -> None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix(fps=f"{done / seconds:.1f}")

        summary = write_talking_video(pipeline, portraits, args.audio, args.out, height=height, width=width,
                                      seed=args.seed, mode=args.audio_mode, color_correction=args.color_correction,
                                      context_seconds=args.context_seconds, on_chunk=on_chunk,
                                      face_crop=face_crop)
    print(json.dumps(summary.as_dict()))
    print(f"video written to {Path(summary.out).resolve()}", file=sys.stderr)
    return 0


def _face_crop(args: argparse.Namespace) -> FaceCrop | None:
    """--face-crop (the built-in detector) or --face-box X,Y,W,H -> the crop of --image, else None."""
    if not args.face_crop and args.face_box is None:
        if args.face_feather is not None:
            raise InputError("--face-feather shapes the face crop's paste-back: add --face-crop (or --face-box)")
        return None
    if args.image is None:
        raise InputError("--face-crop and --face-box work with one portrait: give it as --image FILE")
    box = None if args.face_box is None else parse_face_box(args.face_box)
    return FaceCrop.around(args.image, box, feather=DEFAULT_FEATHER if args.face_feather is None else args.face_feather)


def _cmd_make_tiny(args: argparse.Namespace) -> int:

    for variant in (["lite", "pro"] if args.variant == "both" else [args.variant]):
        root = write_tiny_checkpoint(args.directory, variant, seed=args.seed)
    print(f"tiny {args.variant} checkpoint (random weights) written to {Path(root).resolve()}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:

    print(f"downloaded to {download(args.directory)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:

    return run_demo(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .. import check_range
    from ..serve import TOKEN_ENV, read_token

    if args.token is not None:
        raise InputError(f"a token on the command line can be read by every user of this machine (ps): give it as "
                         f"{TOKEN_ENV}=... in the environment, or in a file named by --token-file")
    token = read_token(os.environ, args.token_file)
    check_binding(args.host, token, args.public_origin)  # before loading anything
    if (args.checkpoint is None) == (not args.tiny):
        raise InputError("give the model as --checkpoint DIR, or --tiny for a tiny random-weight model to try the "
                         "server with (it shows coloured noise, not a face)")
    check_range(args.max_upload_mb, "--max-upload-mb", 0.01, 4096, "megabytes of one upload")
    check_range(args.port, "--port", 0, 65535)
    height, width = args.size or ((64, 64) if args.tiny else (512, 512))
    options = ServeOptions(width=width, height=height, max_sessions=args.max_sessions,
                           max_upload_bytes=int(args.max_upload_mb * 2**20), idle_timeout=args.idle_timeout,
                           token=token, public_origin=args.public_origin, scheduling=args.scheduling)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="flashhead-serve-") as tiny:
        variant = args.variant if not args.tiny else "lite" if args.variant == "auto" else args.variant
        checkpoint = write_tiny_checkpoint(tiny, variant) if args.tiny else args.checkpoint
        pipeline = load_pipeline(checkpoint, variant=variant, device=device,
                                 dtype=_compute_dtype(args.dtype, device), attention=args.attention,
                                 static=args.static)
        serve(pipeline, options, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="flashhead", description="SoulX-FlashHead talking heads: tools and CLI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verify", help="check parity with reference fixtures (.safetensors) and manifests (.json)")
    p.add_argument("files", nargs="+", help="fixture .safetensors files and/or manifest .json files")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("bench", help="time one stage with full-size random-weight models; prints JSON")
    bench_sub = p.add_subparsers(dest="name", required=True)
    for name, (_, add_options) in bench.BENCHES.items():
        bp = bench_sub.add_parser(name)
        bp.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
        add_options(bp)
        bp.set_defaults(func=_cmd_bench)

    p = sub.add_parser("generate", help="portrait + speech -> talking-head MP4")
    p.add_argument("--checkpoint", required=True,
                   help="the released checkpoint root (or a Model_Lite/Model_Pro folder)")
    p.add_argument("--variant", choices=["auto", "lite", "pro"], default="auto")
    p.add_argument("--image", default=None, help="the portrait (png, jpg, ...); or --timeline")
    p.add_argument("--timeline", default=None, metavar="'IMG@SEC,IMG@SEC,...'", help=(
        "several portraits, each from its start time in seconds (the first at 0), e.g. 'anna.png@0,ben.png@4.5'; "
        "each takes over at the chunk holding that frame (a clean cut, up to 0.92 s Lite / 1.08 s Pro early)"))
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]", help=(
        "a LoRA for the DiT (.safetensors: PEFT/diffusers, kohya or ComfyUI Wan-2.1 keys), strength default 1; "
        "repeat for several, applied in order"))
    p.add_argument("--face-crop", action="store_true", help=(
        "animate only the face of a large portrait: find it (OpenCV's built-in detector), generate its square crop "
        "(2 x the face width) at --size and paste it back into every frame; the MP4 has the portrait's size"))
    p.add_argument("--face-box", default=None, metavar="X,Y,W,H", help=(
        "--face-crop around this face box (portrait pixels: top-left corner, width, height) instead of detecting"))
    p.add_argument("--face-feather", type=float, default=None, help=(
        f"the paste-back's blend ramp, a fraction of the crop side (0..0.5; 0 = a hard edge; default "
        f"{DEFAULT_FEATHER})"))
    p.add_argument("--audio", required=True, help="the speech (wav, mp3, flac, m4a, ...)")
    p.add_argument("--out", required=True, help="the MP4 to write")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="WIDTHxHEIGHT (multiples of 32 Lite, 16 Pro)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-mode", choices=["stream", "once"], default="stream")
    p.add_argument("--context-seconds", type=float, default=8.0, help="Temporal Audio Context Cache length")
    p.add_argument("--color-correction", type=float, default=1.0, help="strength in [0, 1]; 0 = off")
    p.add_argument("--wav2vec2", default=None, help="default: <checkpoint>/wav2vec2-base-960h")
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU (wav2vec2 always float32)")
    p.add_argument("--weight-dtype", choices=list(WEIGHT_DTYPES), default="default", help=(
        "storage of the DiT blocks' Linear weights: default (the compute dtype), or fp8_e4m3fn / fp8_e5m2 (half the "
        "memory of bf16, upcast per layer, slightly different frames; a --lora then runs on the fly: docs/fp8.md)"))
    p.add_argument("--attention", default="auto", help="auto, sdpa, flash_attn_3, flash_attn_2, sage")
    _static_option(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("make-tiny-checkpoint", help="write a tiny random-weight checkpoint in the released layout")
    p.add_argument("directory")
    p.add_argument("--variant", choices=["lite", "pro", "both"], default="both")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_tiny)

    p = sub.add_parser("download", help="download the released weights and wav2vec2-base-960h (needs network)")
    p.add_argument("directory")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("demo", help="self-contained end-to-end run on a tiny random-weight model")
    p.add_argument("--workdir", default=None,
                   help="where to write the videos, their inputs and the tiny checkpoints (default: ./flashhead-demo)")
    p.add_argument("--reference", default=None, help="also verify every fixture and manifest in this reference folder")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("serve", help="live talking-head server with one page: portraits + speech in, video played "
                                     "as it is generated (docs/live.md)")
    p.add_argument("--checkpoint", default=None, help="the released checkpoint root (or --tiny)")
    p.add_argument("--tiny", action="store_true", help="a tiny random-weight model, to try the server (no download)")
    p.add_argument("--variant", choices=["auto", "lite", "pro"], default="auto")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback, a token is required)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token-file", default=None, metavar="FILE", help=(
        "a file whose first line is the secret every request must carry (?token= or Authorization: Bearer); or set "
        "FLASHHEAD_TOKEN. Required with a --host beyond loopback or a --public-origin"))
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused with the reason (ps shows it)
    p.add_argument("--public-origin", default=None, metavar="URL", help=(
        "behind a TLS proxy: the page's origin as the browser shows it, e.g. https://avatar.example.com (requests "
        "from it are the server's own; docs/live.md#running-it-safely)"))
    p.add_argument("--max-sessions", type=int, default=4, help="live sessions at once (more get a 'busy' answer)")
    p.add_argument("--scheduling", choices=SCHEDULING, default=SCHEDULING[0], help=(
        "batched: the sessions with a chunk ready (same size) share its DiT calls; round-robin: one chunk at a time"))
    p.add_argument("--size", type=parse_size, default=None,
                   help="WIDTHxHEIGHT: a session's default and largest size (default 512x512; 64x64 with --tiny)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest portrait or speech file")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds after which a session nobody uses (no request, no audio socket) is freed")
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU (wav2vec2 always float32)")
    p.add_argument("--attention", default="auto", help="auto, sdpa, flash_attn_3, flash_attn_2, sage")
    _static_option(p)
    p.set_defaults(func=_cmd_serve)
    return parser


def _static_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--static", choices=STATIC_MODES, default="off", help=(
        "a chunk's 4 steps: off (eager), auto (compiled once, replayed as a CUDA graph on CUDA), compiled, "
        "cuda_graphs; the first chunk then compiles (minutes for the full model): docs/performance.md"))


def _cuda_available() -> bool:
    return torch.cuda.is_available()


# Options whose value may start with "-" (a face box reaching past the portrait's left or top edge): argparse takes
# "--face-box -40,10,200,200" for an option without its value, so such a value is attached: "--face-box=-40,...".
NEGATIVE_VALUE_OPTIONS = ("--face-box",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (default sys.argv[1:]) as `main` reads it."""
    attached: list[str] = []
    for arg in sys.argv[1:] if argv is None else argv:
        if attached and attached[-1] in NEGATIVE_VALUE_OPTIONS and re.match(r"-[\d.]", arg):
            attached[-1] = f"{attached[-1]}={arg}"
        else:
            attached.append(arg)
    return build_parser().parse_args(attached)


EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Bad input, a missing or foreign file or a full disk (FlashHeadError, with the problem and
    the fix in the message) print one line to stderr and exit 1; Ctrl-C exits 130. Anything else is a bug and keeps
    its traceback."""
    args = parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("flashhead: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FlashHeadError as e:
        print(f"flashhead: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
