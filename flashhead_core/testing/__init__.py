"""Test support shipped with the package: tiny checkpoints with random weights in exactly the released layouts, random
full-size models for benchmarks, and synthetic media, so tests, the demo and the workflows exercise the real loading
code without downloading anything. Nothing here is a trained model, and the runtime never imports it.

    dit.py   Model_Lite/ / Model_Pro/      vae.py     VAE_Wan/ and VAE_LTX/       wav2vec2.py   wav2vec2-base-960h/
    random.py  seeded random weights       media.py   a drawn portrait, speech-like audio, WAV files
"""

from __future__ import annotations

from pathlib import Path

from .dit import write_tiny_dit
from .vae import write_tiny_ltx_vae, write_tiny_wan_vae
from .wav2vec2 import write_tiny_wav2vec2


def write_tiny_checkpoint(directory: str | Path, variant: str, *, seed: int = 0) -> Path:
    """A complete tiny checkpoint root in the released layout: Model_Lite/ or Model_Pro/, the matching VAE
    (VAE_LTX/ or VAE_Wan/Wan2.1_VAE.pth) and wav2vec2-base-960h/. Returns the root."""
    root = Path(directory)
    write_tiny_dit(root, variant, seed=seed)
    (write_tiny_ltx_vae if variant == "lite" else write_tiny_wan_vae)(root, seed=seed)
    write_tiny_wav2vec2(root, seed=seed)
    return root
