"""The 4-step sampler: schedule, noise draw order, motion latents."""

from __future__ import annotations

import pytest
import torch

from flashhead_core.generation.sampler import SamplerConfig, sample_chunk, shifted_timesteps


def test_shifted_timesteps_float32_and_bf16():
    torch.testing.assert_close(shifted_timesteps(SamplerConfig()),
                               torch.tensor([1000.0, 937.5, 833.3333, 625.0, 0.0]))
    assert shifted_timesteps(SamplerConfig(), torch.bfloat16).tolist() == [1000.0, 936.0, 832.0, 624.0, 0.0]
    assert (shifted_timesteps(SamplerConfig(), torch.bfloat16) / 1000)[2].item() == 0.83203125


def test_sampler_config_errors():
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\], got 1.5"):
        SamplerConfig(color_correction=1.5)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        SamplerConfig(steps=0)


class RecordingModel:
    """Returns flow = z (so x0 = (1 - sigma) z) and records the latents it is given."""

    def __init__(self):
        self.inputs = []

    def audio_context(self, audio_tokens):
        return audio_tokens

    def __call__(self, z, t, ref, audio):
        self.inputs.append((z.clone(), t.clone()))
        return z.clone()


def test_sample_chunk_update_rule_and_draw_order():
    shape = (1, 2, 3, 2, 2)
    draws = [torch.full(shape, float(i + 1)) for i in range(5)]
    it = iter(draws)
    motion = torch.full((1, 2, 1, 2, 2), -7.0)
    model = RecordingModel()
    timesteps = shifted_timesteps(SamplerConfig())
    steps_seen = []
    out = sample_chunk(model, None, None, motion, timesteps, lambda: next(it).clone(), on_step=steps_seen.append)
    assert steps_seen == [0, 1, 2, 3]
    assert next(it, None) is None, "exactly 5 draws per chunk (the last one multiplied by sigma = 0)"
    # reference computation of the same rule
    z = draws[0].clone()
    sigmas = timesteps / 1000
    for i in range(4):
        z[:, :, :1] = motion
        torch.testing.assert_close(model.inputs[i][0], z)
        assert model.inputs[i][1].item() == timesteps[i].item()
        x0 = z - sigmas[i] * z
        z = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * draws[i + 1]
    z[:, :, :1] = motion
    torch.testing.assert_close(out, z)
    assert torch.equal(out[:, :, :1], motion)
