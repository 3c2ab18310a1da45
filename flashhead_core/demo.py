"""`flashhead demo`: a self-contained run on a fresh machine, with no downloads.

It writes tiny random-weight checkpoints in the released layout, loads them through the real loader and runs the
model, so every line of the loading and inference code runs. The weights are random: the output is not a face.
With --reference DIR (the reference fixtures and manifests), it also runs `flashhead verify` on all of them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def _model_self_check(workdir: Path) -> None:
    from .checkpoint import load_dit
    from .tiny import write_tiny_dit

    for variant in ("lite", "pro"):
        folder = write_tiny_dit(workdir, variant)
        model = load_dit(folder, variant=variant)
        config = model.config
        latent = (1, config.out_dim, 5, 64 // config.vae_stride[1], 64 // config.vae_stride[2])
        windows = torch.zeros(1, 1 + 4 * config.t_stride, 5, 12, 768)
        with torch.no_grad():
            flow = model(torch.randn(latent), torch.tensor([1000.0]), torch.randn(latent), model.audio_proj(windows))
        ok = flow.shape == latent and bool(torch.isfinite(flow).all())
        print(json.dumps({"check": f"dit_{variant}", "checkpoint": str(folder), "flow_shape": list(flow.shape),
                          "ok": ok}))
        if not ok:
            raise SystemExit(f"self-check failed for {variant}")


def _reference_checks(reference: Path) -> bool:
    from .verify import verify_file

    files = sorted((reference / "fixtures").glob("*.safetensors")) + sorted((reference / "manifests").glob("*.json"))
    all_ok = True
    for path in files:
        result = verify_file(path)
        print(json.dumps(result), flush=True)
        all_ok &= result["ok"]
    return all_ok


def run_demo(args: argparse.Namespace) -> int:
    print("FlashHead demo: tiny checkpoints with RANDOM weights (no download); this checks the code, not the model.")
    with tempfile.TemporaryDirectory(prefix="flashhead-demo-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        _model_self_check(workdir)
    if args.reference:
        return 0 if _reference_checks(Path(args.reference)) else 1
    return 0
