"""The 4-step sampler: schedule, noise draw order, motion latents."""

from __future__ import annotations

import pytest
import torch

from flashhead_core.generation.sampler import SamplerConfig, motion_inputs, sample_chunk, shifted_timesteps


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


def test_sample_chunk_update_rule():
    shape = (1, 2, 3, 2, 2)
    draws = [torch.full(shape, float(i + 1)) for i in range(5)]
    motion_latents = torch.full((1, 2, 1, 2, 2), -7.0)
    model = RecordingModel()
    timesteps = shifted_timesteps(SamplerConfig())
    steps_seen = []
    motion, mask = motion_inputs([motion_latents], 3)
    out = sample_chunk(model, None, None, motion, mask, torch.stack(draws), timesteps, on_step=steps_seen.append)
    assert steps_seen == [0, 1, 2, 3]
    # reference computation of the same rule, written as the paper's loop (slice assignment of the motion latents)
    z = draws[0].clone()
    sigmas = timesteps / 1000
    for i in range(4):
        z[:, :, :1] = motion_latents
        torch.testing.assert_close(model.inputs[i][0], z, rtol=0, atol=0)
        assert model.inputs[i][1].item() == timesteps[i].item()
        x0 = z - sigmas[i] * z
        z = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * draws[i + 1]
    z[:, :, :1] = motion_latents
    torch.testing.assert_close(out, z, rtol=0, atol=0)


def test_motion_inputs_pad_each_stream_to_the_chunk_with_its_own_count():
    one, two = torch.full((1, 2, 1, 2, 2), 3.0), torch.full((1, 2, 2, 2, 2), 5.0)
    motion, mask = motion_inputs([one, two], 4)
    assert motion.shape == (2, 2, 4, 2, 2) and mask.shape == (2, 1, 4, 1, 1)
    assert mask[:, 0, :, 0, 0].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert torch.equal(motion[0, :, :1], one[0]) and not motion[0, :, 1:].any()
    assert torch.equal(motion[1, :, :2], two[0]) and not motion[1, :, 2:].any()


def test_a_batched_chunk_gives_each_row_what_it_gives_alone():
    """Streams with different motion counts (one just switched identity) in one call: each row equals its own
    single-stream call (the fake model is row-wise, so any difference would be the sampler's)."""
    timesteps = shifted_timesteps(SamplerConfig())
    motions = [torch.full((1, 2, 1, 2, 2), -7.0), torch.full((1, 2, 2, 2, 2), 4.0)]
    noises = [torch.randn(5, 1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    alone = [sample_chunk(RecordingModel(), None, None, *motion_inputs([m], 3), n, timesteps)
             for m, n in zip(motions, noises)]
    together = sample_chunk(RecordingModel(), None, None, *motion_inputs(motions, 3), torch.cat(noises, dim=1),
                            timesteps)
    assert torch.equal(together, torch.cat(alone))
