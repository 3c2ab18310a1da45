"""The static chunk step (sampler.chunk_step): one graph, no breaks, no recompilation across chunks, an identity
switch and a second stream of the same size; the same latents as the eager update."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from flashhead_core.generation.sampler import (SamplerConfig, chunk_step, cuda_graphs_default, motion_inputs,
                                               sample_chunk, shifted_timesteps)
from flashhead_core.testing.dit import tiny_config
from flashhead_core.testing.random import random_dit

LATENT = (16, 3, 4, 4)  # C, T, h, w: the Pro geometry at 32x32 with 9-frame chunks


class Stream:
    """What a session feeds the update each chunk, drawn from its own generator: audio tokens, noise, a reference
    latent per identity, and motion latents (M = 1 after a (re)start, 2 afterwards)."""

    def __init__(self, model, seed: int):
        self.model, self.generator = model, torch.Generator().manual_seed(seed)
        self.ref = {name: self.randn(1, *LATENT) for name in ("anna", "ben")}
        self.identity, self.motion = "anna", self.ref["anna"][:, :, :1]

    def randn(self, *shape):
        return torch.randn(shape, generator=self.generator)

    def chunk_inputs(self, timesteps):
        config = self.model.config
        tokens = self.randn(1, LATENT[1], config.audio_context_tokens, config.dim)
        noise = self.randn(len(timesteps), 1, *LATENT)
        motion, mask = motion_inputs([self.motion], LATENT[1])
        return tokens, self.ref[self.identity], motion, mask, noise, timesteps, 1000

    def switch(self, name):
        self.identity, self.motion = name, self.ref[name][:, :, :1]


def test_cuda_graphs_only_on_cuda():
    assert not cuda_graphs_default("cpu") and cuda_graphs_default("cuda")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device.*cuda_graphs=False"):
        chunk_step("cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="static must be one of off, auto, compiled, cuda_graphs, got 'on'"):
        SamplerConfig(static="on")


@pytest.mark.slow
@torch.no_grad()
def test_static_step_one_graph_equals_eager():
    torch._dynamo.reset()
    counters.clear()
    model = random_dit(tiny_config("pro"), torch.device("cpu"), torch.float32, attention="sdpa")
    timesteps = shifted_timesteps(SamplerConfig())
    step = chunk_step("cpu")
    anna, other = Stream(model, 1), Stream(model, 2)

    def run(stream):
        inputs = stream.chunk_inputs(timesteps)
        static = step(model, *inputs)
        eager = sample_chunk(model, *inputs)
        torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
        stream.motion = static[:, :, -2:]  # stands in for the motion re-encode (M = 2 from chunk 2 on)
        return static

    run(anna)  # chunk 1 compiles the graph
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        run(anna)  # chunks 2..N: M = 2
        run(anna)
        anna.switch("ben")  # identity switch: another reference, M = 1 again
        run(anna)
        run(other)  # a second stream of the same size
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert not counters["recompiles"], dict(counters["recompiles"])

    # through sample_chunk(static=True): progress for every step, then the same latents
    inputs = other.chunk_inputs(timesteps)
    seen = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = sample_chunk(model, *inputs, on_step=seen.append, static="auto")
    assert seen == [0, 1, 2, 3]
    torch.testing.assert_close(out, sample_chunk(model, *inputs), rtol=1e-5, atol=1e-5 * out.abs().max().item())


def test_the_pipeline_s_static_mode_reaches_every_session_it_makes(tmp_path, monkeypatch):
    """`flashhead generate/serve --static MODE` -> load_pipeline(static=MODE) -> the sessions of write_talking_video
    and of a live session run their chunks in that mode (recorded here, then run eagerly: no compile in this test);
    an unknown mode is refused before the weights load, naming the choices."""
    from flashhead_core import load_pipeline, write_talking_video
    from flashhead_core.generation import session as session_module
    from flashhead_core.live import LiveRegistry
    from flashhead_core.serve.live_session import LiveSession
    from flashhead_core.testing import write_tiny_checkpoint
    from flashhead_core.testing.media import synthetic_portrait, synthetic_speech

    modes = []
    real = session_module.sample_chunk

    def recording(*args, static="off", **kwargs):
        modes.append(static)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "sample_chunk", recording)
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", "lite")
    with pytest.raises(Exception, match="static must be one of off, auto, compiled, cuda_graphs"):
        load_pipeline(checkpoint, variant="lite", static="graphs")
    pipeline = load_pipeline(checkpoint, variant="lite", static="compiled")
    face = synthetic_portrait(tmp_path / "face.png")
    speech = {"waveform": torch.from_numpy(synthetic_speech(0.5))[None, None], "sample_rate": 16000}
    write_talking_video(pipeline, face, speech, tmp_path / "out.mp4", height=64, width=64)
    live = LiveSession(pipeline, LiveRegistry().create(), height=64, width=64)
    live.add_identity("face", face)
    live.feed(synthetic_speech(0.5))
    live.end()
    live.step()
    assert modes == ["compiled", "compiled"] and live.status()["state"] == "ended"
