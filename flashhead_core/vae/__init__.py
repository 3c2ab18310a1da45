"""Video VAEs: Wan2.1 (Pro) and LTX-Video 0.9.0 (Lite) behind one interface.

    base.py     VideoVAE: encode/decode in normalised latent space, tiled decode above 512 px
    tiling.py   the exact halo-tiled decode        keymap.py   original <-> diffusers key names
    wan.py      Wan2.1                             ltx.py      LTX-Video 0.9.0
    loading.py  load_vae (every accepted layout), check_vae_matches_model
    taehv.py    the tiny decoder of Wan 2.1 latents (TAEHV layout): previews and an opt-in fast decode for Pro
"""

from .base import VideoVAE
from .loading import NEEDED_VAE, check_vae_matches_model, find_vae_file, load_vae, vae_from_state_dict

__all__ = ["NEEDED_VAE", "VideoVAE", "check_vae_matches_model", "find_vae_file", "load_vae", "vae_from_state_dict"]
