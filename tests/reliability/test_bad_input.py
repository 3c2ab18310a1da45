"""Bad input through the whole job, by the public API (load_pipeline / write_talking_video) and by the command line
(`flashhead generate`): each is refused with one message naming the problem and the fix, before any chunk is
generated, and leaves the output folder empty. And the unusual inputs that must work do: grey, RGBA and 16-bit
images, an 8k x 8k portrait (decoded without a memory spike), 8-channel, 8 kHz and 192 kHz audio, the largest seed.

The loaders' own checks are tested at their level in tests/test_image.py, test_audio.py, test_dit.py and
test_vae.py; here the same kinds of input go through the job, as a user gives them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from support import (
    SIZE,
    assert_user_error,
    flashhead,
    generate_args,
    generated_frames,
    run_child,
    write_audio,
    write_png16,
)

from flashhead_core.audio.decode import load_audio
from flashhead_core.config import AUDIO_SAMPLE_RATE, FPS, MAX_SEED
from flashhead_core.errors import AttentionBackendError, AudioInputError, CheckpointError, ImageError, SizeError
from flashhead_core.pipeline import Pipeline, load_pipeline, write_talking_video
from flashhead_core.testing.media import synthetic_speech, write_wav
from flashhead_core.testing.vae import write_tiny_wan_vae
from flashhead_core.tools.cli import main as cli_main
from flashhead_core.media.video_io import read_video_info

from .conftest import SPEECH_SECONDS

FRAMES = round(SPEECH_SECONDS * FPS)


@dataclass(frozen=True)
class Job:
    """One talking-head job as a user states it. checkpoint None: the good tiny checkpoint of `variant`."""

    image: Path
    audio: Path
    variant: str = "lite"
    checkpoint: Path | None = None
    height: int = SIZE
    width: int = SIZE
    seed: int = 0
    attention: str = "auto"

    def run_api(self, checkpoints, pipelines, out: Path) -> dict:
        pipeline = pipelines[self.variant]
        if self.checkpoint is not None or self.attention != "auto":
            pipeline = load_pipeline(self.checkpoint or checkpoints[self.variant], variant=self.variant,
                                     attention=self.attention)
        return write_talking_video(pipeline, self.image, self.audio, out, height=self.height, width=self.width,
                                   seed=self.seed)

    def cli_args(self, checkpoints, out: Path) -> list[str]:
        return generate_args(self.checkpoint or checkpoints[self.variant], self.image, self.audio, out,
                             "--variant", self.variant, "--seed", self.seed, "--attention", self.attention,
                             width=self.width, height=self.height)


# --- the bad inputs: each makes its files in `folder` and returns the job ---------------------------------------------

def damaged_checkpoint(checkpoint: Path, folder: Path, damage: Callable[[Path], None]) -> Path:
    """A copy of a checkpoint root with `damage(root)` applied."""
    root = shutil.copytree(checkpoint, folder / "damaged")
    damage(root)
    return root


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def image_vae_state() -> dict[str, torch.Tensor]:
    """The key set of a Stable Diffusion-style image VAE (2-D convolutions): a foreign safetensors file."""
    return {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "encoder.conv_in.bias": torch.zeros(8),
            "encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(8, 8, 3, 3),
            "quant_conv.weight": torch.zeros(8, 8, 1, 1), "post_quant_conv.weight": torch.zeros(4, 4, 1, 1),
            "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}


def truncated_portrait(job, folder, checkpoints):
    image = shutil.copy(job.image, folder / "face.png")
    truncate(image)
    return replace(job, image=image)


def not_an_image(job, folder, checkpoints):
    image = folder / "face.jpg"
    image.write_bytes(bytes(range(256)) * 8)
    return replace(job, image=image)


def one_pixel_image(job, folder, checkpoints):
    Image.new("RGB", (1, 1), (200, 150, 120)).save(folder / "dot.png")
    return replace(job, image=folder / "dot.png")


def decompression_bomb(job, folder, checkpoints):
    """196 million pixels (Pillow refuses above 179 M) in a 24 kB file."""
    Image.new("1", (14000, 14000)).save(folder / "huge.png")
    return replace(job, image=folder / "huge.png")


def empty_audio(job, folder, checkpoints):
    return replace(job, audio=write_wav(folder / "empty.wav", np.zeros(0, np.float32)))


def nan_audio(job, folder, checkpoints):
    samples = np.full((1, AUDIO_SAMPLE_RATE), np.nan)
    return replace(job, audio=write_audio(folder / "nan.wav", samples, AUDIO_SAMPLE_RATE, "flt"))


def inf_audio(job, folder, checkpoints):
    samples = np.where(np.arange(AUDIO_SAMPLE_RATE) % 2, np.inf, -np.inf)[None]
    return replace(job, audio=write_audio(folder / "inf.wav", samples, AUDIO_SAMPLE_RATE, "flt"))


def blip_audio(job, folder, checkpoints):
    """200 samples (12.5 ms): shorter than half a frame, so the video would have no frame at all."""
    return replace(job, audio=write_audio(folder / "blip.wav", synthetic_speech(0.0125)[None], AUDIO_SAMPLE_RATE))


def off_grid_size(job, folder, checkpoints):
    return replace(job, height=100, width=100)


def odd_size_pro(job, folder, checkpoints):
    return replace(job, variant="pro", height=63, width=65)


def negative_seed(job, folder, checkpoints):
    return replace(job, seed=-1)


def seed_above_64_bits(job, folder, checkpoints):
    return replace(job, seed=MAX_SEED + 1)


def unknown_attention(job, folder, checkpoints):
    return replace(job, attention="flash_attn_9")


def truncated_dit(job, folder, checkpoints):
    root = damaged_checkpoint(checkpoints["lite"], folder,
                              lambda r: truncate(r / "Model_Lite" / "diffusion_pytorch_model.safetensors"))
    return replace(job, checkpoint=root)


def truncated_wav2vec2(job, folder, checkpoints):
    root = damaged_checkpoint(checkpoints["lite"], folder,
                              lambda r: truncate(r / "wav2vec2-base-960h" / "model.safetensors"))
    return replace(job, checkpoint=root)


def renamed_dit_weights(job, folder, checkpoints):
    model = "Model_Lite/diffusion_pytorch_model.safetensors"
    root = damaged_checkpoint(checkpoints["lite"], folder, lambda r: (r / model).rename(r / "Model_Lite" / "lite.st"))
    return replace(job, checkpoint=root)


def renamed_wav2vec2(job, folder, checkpoints):
    root = damaged_checkpoint(checkpoints["lite"], folder,
                              lambda r: (r / "wav2vec2-base-960h").rename(r / "wav2vec2"))
    return replace(job, checkpoint=root)


def lite_with_wan_vae(job, folder, checkpoints):
    def swap(root):
        shutil.rmtree(root / "VAE_LTX")
        write_tiny_wan_vae(root)

    return replace(job, checkpoint=damaged_checkpoint(checkpoints["lite"], folder, swap))


def foreign_file_as_model(job, folder, checkpoints):
    save_file(image_vae_state(), str(folder / "sd_vae.safetensors"))
    return replace(job, checkpoint=folder / "sd_vae.safetensors")


def foreign_file_as_vae(job, folder, checkpoints):
    root = damaged_checkpoint(checkpoints["lite"], folder, lambda r: save_file(
        image_vae_state(), str(r / "VAE_LTX" / "diffusion_pytorch_model.safetensors")))
    return replace(job, checkpoint=root)


# (make the job, the exception, phrases of the message: the problem and the fix)
BAD_INPUTS = {
    "truncated-image": (truncated_portrait, ImageError, ("face.png", "truncated", "export it again")),
    "not-an-image": (not_an_image, ImageError, ("face.jpg", "not an image Pillow can read", "re-save it")),
    "1x1-image": (one_pixel_image, ImageError, ("1x1 pixels", "at least 16 pixels per side")),
    "decompression-bomb": (decompression_bomb, ImageError, ("too large to decode safely", "downscale it first")),
    "empty-audio": (empty_audio, AudioInputError, ("empty.wav", "no samples", "some duration")),
    "nan-audio": (nan_audio, AudioInputError, ("16000 NaN or infinite samples", "re-export the audio")),
    "inf-audio": (inf_audio, AudioInputError, ("16000 NaN or infinite samples", "re-export the audio")),
    "audio-shorter-than-a-frame": (blip_audio, AudioInputError, ("less than one video frame", "longer track")),
    "off-grid-size": (off_grid_size, SizeError, ("height 100 is not a multiple of 32: use 96 or 128",
                                                 "width 100 is not a multiple of 32: use 96 or 128")),
    "odd-size": (odd_size_pro, SizeError, ("height 63 is not a multiple of 16: use 48 or 64",
                                           "width 65 is not a multiple of 16: use 64 or 80")),
    "negative-seed": (negative_seed, ValueError, (f"seed must be between 0 and {MAX_SEED}", "got -1")),
    "seed-above-64-bits": (seed_above_64_bits, ValueError, (f"between 0 and {MAX_SEED}", f"got {MAX_SEED + 1}")),
    "unknown-attention": (unknown_attention, AttentionBackendError, ("unknown attention backend 'flash_attn_9'",
                                                                     "choose 'auto'")),
    "truncated-model": (truncated_dit, CheckpointError, ("Model_Lite/diffusion_pytorch_model.safetensors",
                                                         "truncated", "download it again")),
    "truncated-wav2vec2": (truncated_wav2vec2, CheckpointError, ("wav2vec2-base-960h/model.safetensors",
                                                                 "truncated", "download it again")),
    "renamed-model-weights": (renamed_dit_weights, CheckpointError, ("weights missing in",
                                                                     "diffusion_pytorch_model.safetensors",
                                                                     "download them again")),
    "renamed-wav2vec2": (renamed_wav2vec2, CheckpointError, ("wav2vec2 not found", "flashhead download")),
    "lite-with-wan-vae": (lite_with_wan_vae, CheckpointError, ("the FlashHead lite model",
                                                               "needs the LTX-Video 0.9.0 VAE (VAE_LTX/)")),
    "foreign-file-as-model": (foreign_file_as_model, CheckpointError, ("not a FlashHead DiT checkpoint",
                                                                       "Model_Lite/ or Model_Pro/")),
    "foreign-file-as-vae": (foreign_file_as_vae, CheckpointError, ("an image VAE", "not a video VAE",
                                                                   "Lite needs the LTX-Video 0.9.0 VAE")),
}


@pytest.fixture(params=BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def bad_input(request, tmp_path, checkpoints, portrait, speech):
    """(job, exception, phrases) of one bad input, its files in a folder of their own."""
    make, error, phrases = request.param
    folder = tmp_path / "bad"
    folder.mkdir()
    return make(Job(portrait, speech), folder, checkpoints), error, phrases


def test_api_refuses_bad_input_before_any_work(bad_input, checkpoints, pipelines, out_dir, no_generation):
    job, error, phrases = bad_input
    with pytest.raises(error) as caught:
        job.run_api(checkpoints, pipelines, out_dir / "talk.mp4")
    for phrase in phrases:
        assert phrase in str(caught.value)
    assert list(out_dir.iterdir()) == []


def test_cli_refuses_bad_input_in_one_line(bad_input, checkpoints, out_dir, no_generation, capsys):
    job, _, phrases = bad_input
    assert cli_main(job.cli_args(checkpoints, out_dir / "talk.mp4")) == 1
    assert_user_error(capsys.readouterr().err, *phrases)
    assert list(out_dir.iterdir()) == []


def test_a_real_process_exits_1_without_a_traceback(checkpoints, portrait, speech, out_dir):
    run = run_child(flashhead(*Job(portrait, speech, seed=-1).cli_args(checkpoints, out_dir / "talk.mp4")))
    assert run.returncode == 1
    assert_user_error(run.stderr, "seed must be between 0 and", "got -1")
    assert list(out_dir.iterdir()) == []


def test_lite_model_with_the_pro_vae_object_is_refused(pipelines, portrait, speech, out_dir, no_generation):
    lite, pro = pipelines["lite"], pipelines["pro"]
    mixed = Pipeline(lite.model, pro.vae, lite.audio_encoder)
    with pytest.raises(CheckpointError, match=r"VAE mismatch: the FlashHead lite model needs the LTX-Video .* but "
                                              r"the loaded VAE is the Wan2.1 VAE .* Load the VAE that matches"):
        write_talking_video(mixed, portrait, speech, out_dir / "talk.mp4", height=SIZE, width=SIZE)
    assert list(out_dir.iterdir()) == []


# --- unusual input that must work -------------------------------------------------------------------------------------

def grey_image(folder: Path, portrait: Path) -> Path:
    Image.open(portrait).convert("L").save(folder / "grey.png")
    return folder / "grey.png"


def rgba_image(folder: Path, portrait: Path) -> Path:
    rgba = Image.open(portrait).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(folder / "rgba.png")
    return folder / "rgba.png"


def grey16_image(folder: Path, portrait: Path) -> Path:
    grey = np.asarray(Image.open(portrait).convert("L")).astype(np.uint16) * 257
    write_png16(folder / "grey16.png", grey[..., None])
    return folder / "grey16.png"


def rgb16_image(folder: Path, portrait: Path) -> Path:
    write_png16(folder / "rgb16.png", np.asarray(Image.open(portrait).convert("RGB")).astype(np.uint16) * 257)
    return folder / "rgb16.png"


@pytest.mark.parametrize("make", [grey_image, rgba_image, grey16_image, rgb16_image])
def test_grey_rgba_and_16_bit_images_are_converted(make, pipelines, portrait, speech, tmp_path, out_dir):
    image = make(tmp_path, portrait)
    write_talking_video(pipelines["lite"], image, speech, out_dir / "talk.mp4", height=SIZE, width=SIZE)
    assert read_video_info(out_dir / "talk.mp4").frames == FRAMES


# audio files as stored -> (sample rate, channels) of the MP4's track. A track AAC cannot carry as it is (more than
# two channels, a rate outside AAC's list) is muxed as the model hears it: the 16 kHz mono mixdown.
AUDIO_FORMATS = {"8-channel-44.1k": (44100, 8, (16000, 1)), "mono-8k": (8000, 1, (8000, 1)),
                 "stereo-192k": (192000, 2, (16000, 1))}


@pytest.mark.parametrize("rate, channels, muxed", AUDIO_FORMATS.values(), ids=AUDIO_FORMATS.keys())
def test_any_channel_count_and_rate_is_mixed_down_and_resampled(rate, channels, muxed, pipelines, portrait,
                                                                 tmp_path, out_dir):
    import soxr

    speech = synthetic_speech(SPEECH_SECONDS)
    at_rate = soxr.resample(speech, AUDIO_SAMPLE_RATE, rate)
    # each channel a louder copy of the speech, their mean 0.7 x the speech
    gains = np.linspace(0.4, 1.0, channels)[:, None] if channels > 1 else np.full((1, 1), 0.7)
    audio = write_audio(tmp_path / "voice.wav", gains * at_rate, rate)

    heard = load_audio(audio)  # what write_talking_video feeds the model
    assert heard.shape == (len(speech),)
    assert np.corrcoef(heard, speech)[0, 1] > 0.98
    assert np.std(heard) == pytest.approx(0.7 * np.std(speech), rel=0.05)

    write_talking_video(pipelines["lite"], portrait, audio, out_dir / "talk.mp4", height=SIZE, width=SIZE)
    info = read_video_info(out_dir / "talk.mp4")
    assert info.frames == FRAMES and (info.audio_sample_rate, info.audio_channels) == muxed
    assert info.audio_duration == pytest.approx(FRAMES / FPS, abs=1 / FPS)


def test_the_largest_seed_works(pipelines, checkpoints, portrait, speech, out_dir):
    """ComfyUI's seed widget goes up to 2**64 - 1 (torch would take -1 as that same seed, which is why negative seeds
    are refused): it gives its own reproducible noise, by the API and on the command line."""
    samples = load_audio(speech)
    largest = generated_frames(pipelines["lite"], portrait, samples, seed=MAX_SEED)
    assert torch.equal(generated_frames(pipelines["lite"], portrait, samples, seed=MAX_SEED), largest)
    assert not torch.equal(generated_frames(pipelines["lite"], portrait, samples, seed=0), largest)
    write_talking_video(pipelines["lite"], portrait, speech, out_dir / "api.mp4", height=SIZE, width=SIZE,
                        seed=MAX_SEED)
    assert cli_main(Job(portrait, speech, seed=MAX_SEED).cli_args(checkpoints, out_dir / "cli.mp4")) == 0
    assert read_video_info(out_dir / "api.mp4").frames == read_video_info(out_dir / "cli.mp4").frames == FRAMES


# --- an 8k x 8k portrait: downscaled, without a memory spike ----------------------------------------------------------

BIG_SIDE = 8192
IMAGE_MEMORY_SCRIPT = """
import json, resource, sys
from flashhead_core.media.image import reference_tensor

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

peaks = [peak_mb()]
for image in sys.argv[1:]:
    assert reference_tensor(image, 64, 64).shape == (1, 3, 1, 64, 64)
    peaks.append(peak_mb())
print(json.dumps(peaks))
"""


@pytest.fixture(scope="module")
def big_portraits(tmp_path_factory) -> dict[str, Path]:
    """The same 8192 x 8192 picture as a JPEG and as a PNG (blocky, so both files are small and fast to write)."""
    folder = tmp_path_factory.mktemp("big")
    blocks = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((BIG_SIDE, BIG_SIDE), Image.NEAREST)
    image.save(folder / "big.jpg", quality=90)
    image.save(folder / "big.png", compress_level=1)
    return {"jpeg": folder / "big.jpg", "png": folder / "big.png"}


def test_8k_portrait_decodes_within_bounded_memory(big_portraits):
    """A JPEG is decoded at reduced scale (draft mode): almost no extra memory. A PNG must be decoded whole (192 MB
    of RGB) and is box-reduced before the resize: at most twice the decoded bitmap, never a float copy (800 MB)."""
    run = run_child([*flashhead()[:1], "-c", IMAGE_MEMORY_SCRIPT, big_portraits["jpeg"], big_portraits["png"]],
                    timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    before, after_jpeg, after_png = json.loads(run.stdout.strip().splitlines()[-1])
    bitmap_mb = BIG_SIDE * BIG_SIDE * 3 / 2**20
    assert after_jpeg - before < 32, (before, after_jpeg)
    assert after_png - after_jpeg < 2 * bitmap_mb, (after_jpeg, after_png)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_8k_portrait_makes_a_video(kind, big_portraits, pipelines, speech, out_dir):
    write_talking_video(pipelines["lite"], big_portraits[kind], speech, out_dir / "talk.mp4", height=SIZE, width=SIZE)
    assert read_video_info(out_dir / "talk.mp4").frames == FRAMES
