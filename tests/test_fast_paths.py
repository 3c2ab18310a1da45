"""Every fast path gives the float32 eager path's numbers (on a tiny random model, CPU): audio keys/values projected
once per chunk, torch.compile; and the stage timer that `flashhead bench e2e` reports with.

torch.compile (inductor's C++ codegen: about 20 s for its first graph) and `bench e2e` at full size are marked
`slow`: left out of the default run, run by .ci/run. `bench e2e` also runs by default on tiny models."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from flashhead_core.generation.sampler import SamplerConfig, motion_inputs, sample_chunk, shifted_timesteps
from flashhead_core.testing.dit import tiny_config
from flashhead_core.testing.random import random_dit
from flashhead_core.tools.parity import rel_error
from flashhead_core.tools.stage_timer import StageTimer


def _inputs(config, frames: int = 3, size: int = 64, seed: int = 0):
    """(z, timestep, ref, audio tokens [1, T, N, dim]) for a tiny model of `config`."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, config.out_dim, frames, size // config.vae_stride[1], size // config.vae_stride[2])
    windows = torch.randn(1, 1 + config.t_stride * (frames - 1), 5, 12, config.audio_channels, generator=g)
    return torch.randn(shape, generator=g), torch.tensor([937.5]), torch.randn(shape, generator=g), windows


@pytest.fixture(scope="module", params=["lite", "pro"])
def tiny_model(request):
    return random_dit(tiny_config(request.param), torch.device("cpu"), torch.float32, "sdpa")


def test_sampler_projects_audio_keys_once_per_chunk(tiny_model):
    """4 steps, 1 chunk: each block's audio key projection runs once (not 4 times), its self-attention keys 4 times."""
    config = tiny_model.config
    z, _, ref, windows = _inputs(config)
    calls = Counter()
    block = tiny_model.blocks[0]
    hooks = [layer.register_forward_hook(lambda module, *_: calls.update([module]))
             for layer in (block.cross_attn.k, block.self_attn.k)]
    noise = torch.randn((5, *z.shape), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            sample_chunk(tiny_model, tiny_model.audio_proj(windows), ref, *motion_inputs([ref[:, :, :1]], z.shape[2]),
                         noise, shifted_timesteps(SamplerConfig()))
    finally:
        for hook in hooks:
            hook.remove()
    assert (calls[block.cross_attn.k], calls[block.self_attn.k]) == (1, 4)


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_model):
    """torch.compile of the DiT's blocks (inductor, CPU C++ codegen), as the Model Loader's `compile` option and
    `bench e2e --compile` use it, within the module parity limit of the eager float32 path."""
    z, t, ref, windows = _inputs(tiny_model.config)
    with torch.no_grad():
        context = tiny_model.audio_context(tiny_model.audio_proj(windows))
        eager = tiny_model(z, t, ref, context)
        compiled = copy.deepcopy(tiny_model).compile_blocks()(z, t, ref, context)
    assert rel_error(compiled, eager) < 1e-5


def test_stage_timer_medians_skip_warm_up():
    timer = StageTimer("cpu")
    for chunk_ms in (50, 1, 3, 2):
        with timer.stage("decode"):
            torch.tensor(0.0)
        timer.chunks[-1]["decode"] = [(0.0, chunk_ms / 1e3)]  # replace the measured time with a known one
        with timer.stage("step"):
            pass
        timer.end_chunk()
    per_chunk = timer.per_chunk()
    assert len(per_chunk) == 4 and set(per_chunk[0]) == {"decode", "step"}
    assert timer.medians(skip_chunks=1)["decode"] == pytest.approx(2.0)
    assert timer.medians(skip_chunks=0)["decode"] == pytest.approx(2.5)


E2E_STAGES = ["audio_encode", "audio_projection", "audio_keys_values", "dit_step_0", "dit_step_1", "dit_step_2",
              "dit_step_3", "vae_decode", "color_correction", "motion_reencode", "frame_handoff"]


def _bench_e2e(capsys, *args) -> dict:
    """`flashhead bench e2e ARGS` through the command line's main -> its JSON line."""
    import json

    from flashhead_core.tools.cli import main

    assert main(["bench", "e2e", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_e2e_reports_every_stage_on_tiny_models(capsys, monkeypatch, tmp_path):
    """`flashhead bench e2e`'s whole loop (stage timer, session, stream-mode audio, frame handoff) with its models
    swapped for tiny ones (the tiny Lite DiT, LTX VAE and wav2vec2 of the test checkpoints): one JSON line with every
    stage of the chunk in order, the FPS, the time to first frame and the reduced-model warning."""
    from flashhead_core.audio import load_wav2vec2
    from flashhead_core.config import PRESETS
    from flashhead_core.testing.random import random_ltx_vae
    from flashhead_core.testing.vae import TINY_LTX_CHANNELS, TINY_LTX_LAYERS
    from flashhead_core.testing.wav2vec2 import write_tiny_wav2vec2
    from flashhead_core.tools import bench

    built = []
    wav2vec2_folder = write_tiny_wav2vec2(tmp_path)

    def tiny_ltx_vae(**kwargs):
        built.append("vae")
        return random_ltx_vae(TINY_LTX_CHANNELS, TINY_LTX_LAYERS, **kwargs)

    def tiny_wav2vec2(device):
        built.append("wav2vec2")
        return load_wav2vec2(wav2vec2_folder, device)

    config = tiny_config("lite")
    monkeypatch.setattr(bench, "PRESETS", {**PRESETS, "lite": config})
    monkeypatch.setattr(bench, "random_ltx_vae", tiny_ltx_vae)
    monkeypatch.setattr(bench, "random_wav2vec2", tiny_wav2vec2)
    result = _bench_e2e(capsys, "--variant", "lite", "--chunks", "2", "--size", "64x64", "--layers", "1")
    assert sorted(built) == ["vae", "wav2vec2"]  # the tiny models were the ones used
    assert list(result["stages_ms"]) == E2E_STAGES
    assert all(ms >= 0 for ms in result["stages_ms"].values()) and result["chunks"] == 2
    assert result["fps"] > 0 and result["time_to_first_frame_ms"] > 0 and result["layers"] == 1
    assert f"1 of {config.num_layers} blocks" in result["reduced"]


@pytest.mark.slow
def test_bench_e2e_reports_every_stage(capsys):
    """`flashhead bench e2e` end to end (full-size VAE and wav2vec2, a 1-block DiT, 64x64): one JSON line with every
    stage of the chunk, the FPS and the reduced-model warning."""
    result = _bench_e2e(capsys, "--variant", "lite", "--chunks", "2", "--size", "64x64", "--layers", "1")
    assert list(result["stages_ms"]) == E2E_STAGES
    assert result["fps"] > 0 and result["time_to_first_frame_ms"] > 0 and result["layers"] == 1
    assert "1 of 30 blocks" in result["reduced"]
