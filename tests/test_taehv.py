"""The TAEHV tiny decoder for Wan 2.1 latents (vae/taehv.py): frame count, causality, refusals, the fast-decode VAE, and
parity with ComfyUI's own implementation inside the real 0.33.0 host on one random-weight file in the published
layout."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import save_file

from flashhead_core.errors import CheckpointError
from flashhead_core.testing.random import random_wan_vae
from flashhead_core.vae.taehv import TinyDecodeVAE, TinyVideoDecoder, load_tiny_decoder


def random_decoder_file(path, channels: int = 16, seed: int = 0):
    """A decoder-only TAEHV file with seeded random weights (convolutions N(0, 1/fan_in), biases small)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in TinyVideoDecoder().state_dict().items():
        shape = list(value.shape)
        if key == "decoder.1.weight":
            shape[1] = channels
        fan_in = max(1, value[0].numel()) if value.dim() > 1 else 1
        state[key] = torch.randn(shape, generator=g) * (fan_in ** -0.5 if value.dim() > 1 else 0.05)
    save_file(state, str(path))
    return path


def test_frames_and_causality(tmp_path):
    decoder = load_tiny_decoder(random_decoder_file(tmp_path / "lighttaew2_1.safetensors"))
    latents = torch.randn(2, 16, 3, 4, 5)
    frames = decoder(latents)
    assert frames.shape == (2, 3, 9, 32, 40)  # 1 + 4 * (3 - 1) frames, 8x the latent size
    # the memory blocks only look back: the first two latent frames decode to the same first 5 frames
    torch.testing.assert_close(decoder(latents[:, :, :2]), frames[:, :, :5], rtol=1e-5, atol=1e-6)
    # each stream of a batch is decoded alone
    torch.testing.assert_close(decoder(latents[1:]), frames[1:], rtol=1e-5, atol=1e-6)


def test_refuses_other_latent_spaces_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="48-channel latents, not Wan 2.1's 16.*lighttaew2_1"):
        load_tiny_decoder(random_decoder_file(tmp_path / "taew2_2.safetensors", channels=48))
    save_file({"encoder.0.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a TAEHV tiny autoencoder"):
        load_tiny_decoder(tmp_path / "other.safetensors")


def test_fast_decode_vae(tmp_path):
    vae = random_wan_vae(base_dim=8)
    fast = TinyDecodeVAE(vae, load_tiny_decoder(random_decoder_file(tmp_path / "t.safetensors")))
    assert fast.family == "wan" and fast.dtype == vae.dtype and fast.model is vae.model  # the session's VAE lock
    calls = []
    frames = fast.decode(torch.randn(1, 16, 3, 4, 4), on_tile=lambda: calls.append(1))
    assert frames.shape == (1, 3, 9, 32, 32) and frames.dtype == torch.float32 and calls == [1]
    assert frames.min() >= -1 and frames.max() <= 1
    latents = fast.encode(torch.zeros(1, 3, 5, 32, 32))  # encode stays the Wan VAE's
    torch.testing.assert_close(latents, vae.encode(torch.zeros(1, 3, 5, 32, 32)))


# ComfyUI's implementation, loaded by its own VAE class from one random-weight file in the published layout (encoder
# and decoder, float32: ComfyUI treats it as lighttaew2_1, raw Wan latents in), decoding frame by frame (its default).
HOST_SCRIPT = """
import math, sys, torch
from safetensors.torch import load_file, save_file
from comfy.cli_args import args
args.cpu = True  # as main.py --cpu
import comfy.sd, comfy.taesd.taehv
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
state = {}
for key, value in comfy.taesd.taehv.TAEHV(16).state_dict().items():
    fan_in = value[0].numel() if value.dim() > 1 else 1
    state[key] = torch.randn(value.shape, generator=g) * (fan_in ** -0.5 if value.dim() > 1 else 0.05)
save_file(state, out + "/lighttaew2_1.safetensors")
vae = comfy.sd.VAE(sd=load_file(out + "/lighttaew2_1.safetensors"))
assert isinstance(vae.first_stage_model, comfy.taesd.taehv.TAEHV), type(vae.first_stage_model)
latents = torch.randn(1, 16, 3, 4, 6, generator=g) * 2
with torch.no_grad():
    frames = vae.first_stage_model.decode(latents)
torch.save({"latents": latents, "frames": frames.float().cpu()}, out + "/host.pt")
"""


@pytest.mark.slow
def test_parity_with_comfyui_host(tmp_path):
    from test_comfy_host import HOSTS, SHARED_HOST, _host_ready

    spec = HOSTS[1]
    if not (SHARED_HOST / "setup.sh").is_file():
        pytest.skip(f"{SHARED_HOST} is absent: the host parity test needs the shared ComfyUI kit")
    if not _host_ready(spec):
        pytest.skip(f"the ComfyUI {spec.version} host is not built at {spec.dir} (tests/test_comfy_host.py builds it)")
    result = subprocess.run([str(spec.dir / "venv" / "bin" / "python"), "-c", HOST_SCRIPT, str(tmp_path)],
                            cwd=spec.dir / "ComfyUI", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    host = torch.load(tmp_path / "host.pt")
    ours = load_tiny_decoder(tmp_path / "lighttaew2_1.safetensors")(host["latents"])
    assert ours.shape == host["frames"].shape == (1, 3, 9, 32, 48)
    torch.testing.assert_close(ours, host["frames"], rtol=1e-4, atol=1e-5 * host["frames"].abs().max().item())
