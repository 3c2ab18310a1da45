"""Continuing a video from a state (flashhead_core/state.py): the two halves equal one long run, bit for bit, on the
tiny models; a split off a chunk boundary; the refusals (once mode, another variant or size) before any chunk."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from support import SIZE

from flashhead_core.config import SAMPLES_PER_FRAME
from flashhead_core.errors import ContinuationError, FlashHeadError
from flashhead_core.pipeline import load_pipeline, write_talking_video
from flashhead_core.generation.session import StreamingSession
from flashhead_core.generation.continuation import ContinuationState, check_state
from flashhead_core.generation.run import speech_run, stream_talking_head
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_portrait, synthetic_speech, write_wav
from flashhead_core.media.video_io import read_video_info

CONTEXT = 2.0  # a short audio context keeps wav2vec2 cheap; the split still crosses it (2 s < the first half)


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    return synthetic_portrait(tmp_path_factory.mktemp("face") / "face.png", 96)


@pytest.fixture(scope="module", params=["lite", "pro"])
def pipeline(request, tmp_path_factory):
    root = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return load_pipeline(root, variant=request.param)


def session(pipeline, seed=5, size=SIZE):
    return StreamingSession(pipeline.model, pipeline.vae, height=size, width=size, seed=seed)


def first_run(pipeline, face, samples, seed=5):
    s = session(pipeline, seed)
    s.add_identity("face", face)
    run = speech_run(s, pipeline.audio_encoder, samples, context_seconds=CONTEXT, keep_state=True)
    return torch.cat(list(run)), run.state


def continued(pipeline, state, samples, image=None):
    s = session(pipeline, seed=999)  # the seed is not used: the state carries the generators
    portraits = None if image is None else {0: ("portrait", image)}
    run = speech_run(s, pipeline.audio_encoder, samples, context_seconds=CONTEXT, state=state, portraits=portraits,
                     keep_state=True)
    return torch.cat(list(run)), run.state


def long_run(pipeline, face, samples, seed=5):
    s = session(pipeline, seed)
    s.add_identity("face", face)
    return torch.cat(list(stream_talking_head(s, pipeline.audio_encoder, samples, "stream", CONTEXT)))


def test_two_halves_equal_one_long_run_bit_for_bit(pipeline, face):
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    speech = synthetic_speech(4 * step / 16000 + 0.3)
    whole = long_run(pipeline, face, speech)
    # the run without a state is the ordinary run
    first, state = first_run(pipeline, face, speech[:3 * step])
    assert torch.equal(first, whole[:len(first)]) and len(first) == 3 * pipeline.model.config.new_frames
    assert state.chunk_index == 3 and len(state.leftover) == 0 and state.skip_frames == 0
    state = pickle.loads(pickle.dumps(state))  # a state survives a process boundary (ComfyUI caches, files)
    second, end = continued(pipeline, state, speech[3 * step:], image=face)  # the same portrait: no cut
    assert torch.equal(torch.cat([first, second]), whole)
    assert end.frames_emitted == len(whole)


def test_a_split_off_the_chunk_boundary_carries_the_leftover(pipeline, face):
    """The state stays before the partial chunk and keeps its samples: the second half equals the long run's frames
    exactly; only the first half's last frames (made from a zero-padded slice) may differ."""
    new = pipeline.model.config.new_frames
    step = new * SAMPLES_PER_FRAME
    speech = synthetic_speech(3 * step / 16000 + 0.2)
    whole = long_run(pipeline, face, speech)
    cut = step + 10 * SAMPLES_PER_FRAME + 100  # 10 frames (and a bit) into the second chunk
    first, state = first_run(pipeline, face, speech[:cut])
    assert len(first) == round(cut / SAMPLES_PER_FRAME) == new + 10
    assert state.chunk_index == 1 and len(state.leftover) == cut - step and state.skip_frames == 10
    assert torch.equal(first[:new], whole[:new])
    second, _ = continued(pipeline, state, speech[cut:])
    assert torch.equal(second, whole[len(first):])


def test_a_chain_of_three_runs(pipeline, face):
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    speech = synthetic_speech(3 * step / 16000)
    whole = long_run(pipeline, face, speech)
    a, state = first_run(pipeline, face, speech[:step])
    b, state = continued(pipeline, state, speech[step:2 * step])
    c, state = continued(pipeline, state, speech[2 * step:])
    assert torch.equal(torch.cat([a, b, c]), whole)


def test_another_portrait_is_a_clean_identity_cut(pipeline, face, tmp_path):
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    speech = synthetic_speech(2 * step / 16000)
    first, state = first_run(pipeline, face, speech[:step])
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 200
    same, _ = continued(pipeline, state, speech[step:])
    other, _ = continued(pipeline, state, speech[step:], image=red)
    assert not torch.equal(same, other) and other[..., 0].mean() > other[..., 1].mean()


def wav(tmp_path, samples, name="speech.wav"):
    return write_wav(tmp_path / name, samples)


def test_refusals_come_before_any_chunk(pipeline, face, tmp_path):
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    _, state = first_run(pipeline, face, synthetic_speech(step / 16000))
    with pytest.raises(ContinuationError, match="size 64x64 but this run has size 96x96"):
        check_state(state, session(pipeline, size=96))
    with pytest.raises(ContinuationError, match="context_seconds 2 but this run has context_seconds 8"):
        check_state(state, session(pipeline), context_seconds=8.0)
    with pytest.raises(ContinuationError, match="continuation state"):
        check_state("not a state", session(pipeline))
    # once mode: the pipeline's state refuses to continue, naming stream mode
    states = []
    write_talking_video(pipeline, face, wav(tmp_path, synthetic_speech(0.5)), tmp_path / "a.mp4", height=SIZE, width=SIZE,
                        mode="once", on_state=states.append)
    with pytest.raises(ContinuationError, match="once mode.*stream mode"):
        write_talking_video(pipeline, face, wav(tmp_path, synthetic_speech(0.5)), tmp_path / "b.mp4", height=SIZE, width=SIZE,
                            continue_from=states[0])
    assert not (tmp_path / "b.mp4").exists()
    with pytest.raises(ContinuationError, match="once mode"):
        write_talking_video(pipeline, face, wav(tmp_path, synthetic_speech(0.5)), tmp_path / "c.mp4", height=SIZE, width=SIZE,
                            mode="once", continue_from=state)


def test_a_state_from_the_other_variant_is_refused(tmp_path, face):
    lite = load_pipeline(write_tiny_checkpoint(tmp_path / "lite", "lite"), variant="lite")
    pro = load_pipeline(write_tiny_checkpoint(tmp_path / "pro", "pro"), variant="pro")
    _, state = first_run(lite, face, synthetic_speech(0.96))
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    with pytest.raises(ContinuationError, match="variant lite but this run has variant pro"):
        write_talking_video(pro, face, wav(tmp_path, synthetic_speech(0.5)), tmp_path / "x.mp4", height=SIZE, width=SIZE,
                            continue_from=state)
    assert issubclass(ContinuationError, FlashHeadError) and not list(tmp_path.glob("*.mp4"))


def test_pipeline_halves_write_the_long_video(pipeline, face, tmp_path):
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    speech = synthetic_speech(2 * step / 16000 + 0.4)
    states = []
    a = write_talking_video(pipeline, face, wav(tmp_path, speech[:step], "a.wav"), tmp_path / "a.mp4", height=SIZE, width=SIZE, seed=2,
                            context_seconds=CONTEXT, on_state=states.append)
    assert isinstance(states[0], ContinuationState)
    b = write_talking_video(pipeline, face, wav(tmp_path, speech[step:], "b.wav"), tmp_path / "b.mp4", height=SIZE, width=SIZE,
                            context_seconds=CONTEXT, continue_from=states[0], on_state=states.append)
    assert a.frames + b.frames == round(len(speech) / SAMPLES_PER_FRAME)
    assert read_video_info(tmp_path / "b.mp4").frames == b.frames
    assert states[1].frames_emitted == a.frames + b.frames


def test_a_state_from_another_checkpoint_of_the_same_variant_and_size_is_refused(pipeline, face, tmp_path):
    """Same variant, size, dtype and context, other weights (a fine-tune, another download): refused before any
    chunk, naming the model file as the fix; the state's own checkpoint, loaded again, continues."""
    step = pipeline.model.config.new_frames * SAMPLES_PER_FRAME
    _, state = first_run(pipeline, face, synthetic_speech(step / 16000))
    variant = pipeline.model.config.variant
    other = load_pipeline(write_tiny_checkpoint(tmp_path / "other", variant, seed=11), variant=variant)
    with pytest.raises(ContinuationError, match="other model weights.*model file of the first part"):
        continued(other, state, synthetic_speech(0.5))
    assert other.model.config == pipeline.model.config
    continued(pipeline, state, synthetic_speech(0.5))
