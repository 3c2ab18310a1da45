"""The `flashhead` command (also `python -m flashhead_core`). Each subcommand is a thin wrapper over a module."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_file

    failed = 0
    for path in args.files:
        result = verify_file(path)
        print(json.dumps(result), flush=True)
        failed += not result["ok"]
    return 1 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    bench.run(args.name, args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    from .bench import BENCHES

    parser = argparse.ArgumentParser(prog="flashhead", description="SoulX-FlashHead talking heads: tools and CLI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verify", help="check parity with reference fixtures (.safetensors) and manifests (.json)")
    p.add_argument("files", nargs="+", help="fixture .safetensors files and/or manifest .json files")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("bench", help="time one stage with full-size random-weight models; prints JSON")
    bench_sub = p.add_subparsers(dest="name", required=True)
    for name, (_, add_options) in BENCHES.items():
        bp = bench_sub.add_parser(name)
        bp.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
        add_options(bp)
        bp.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="self-contained end-to-end run on a tiny random-weight model")
    p.add_argument("--workdir", default=None, help="where to write the tiny checkpoint and outputs (default: temp)")
    p.add_argument("--reference", default=None, help="also verify every fixture and manifest in this reference folder")
    p.set_defaults(func=_cmd_demo)
    return parser


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
