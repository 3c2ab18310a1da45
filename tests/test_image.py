"""Reference-image loading, the official resize + centre crop, size checks and colour correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from support import write_png16

from flashhead_core.errors import ImageError, SizeError
from flashhead_core.media.image import (
    LARGE_IMAGE_PIXELS,
    MIN_SIDE,
    check_size,
    load_image,
    match_colors,
    reference_tensor,
    resize_and_centercrop,
)
from flashhead_core.tools.parity import verify_file


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- reference parity ----------------------------------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("case", ["color_correction", "resize_and_centercrop"])
def test_reference_parity(reference_dir, case):
    result = verify_file(reference_dir / "fixtures" / f"{case}.safetensors")
    assert result["ok"], result
    assert all(r < 1e-5 for r in result["rel"].values())
    if case == "resize_and_centercrop":
        assert len(result["rel"]) == 8 and all(r == 0.0 for r in result["rel"].values())  # bit-exact


@pytest.mark.reference
def test_reference_tensor_is_the_fixture_resize_mapped_to_unit_range(reference_dir):
    tensors = load_file(str(reference_dir / "fixtures" / "resize_and_centercrop.safetensors"))
    source = tensors["input.down.image_uint8_hwc"].numpy()
    expected = (tensors["output.down.pil_path"].float() / 255 - 0.5) * 2
    ours = reference_tensor(source, 64, 48)
    assert ours.shape == (1, 3, 1, 64, 48) and ours.dtype == torch.float32
    assert torch.equal(ours, expected)


# --- resize geometry -----------------------------------------------------------------------------------------------

def test_resize_rounds_up_and_crops_half_to_even():
    # ceil((25/11)*11) = 26 rows; crop offset round(0.5) = 0, so the top row is kept and the last one dropped
    column = np.arange(11, dtype=np.uint8)[:, None, None].repeat(30, 1).repeat(3, 2) * 20
    ours = resize_and_centercrop(torch.from_numpy(column).permute(2, 0, 1).float(), 25, 40)
    full = torch.nn.functional.interpolate(torch.from_numpy(column).permute(2, 0, 1).float()[None], size=(26, 69))[0]
    assert torch.equal(ours, full[:, :25, 14:54])  # left offset round(29/2) = round(14.5) = 14


# --- loading -------------------------------------------------------------------------------------------------------

def test_corrupt_file_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(b"definitely not a png" * 10)
    with pytest.raises(ImageError, match="face.png.*not an image.*re-save"):
        load_image(path)


def test_truncated_file_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(_random_rgb(64, 64)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:800])
    with pytest.raises(ImageError, match="cut.jpg.*truncated.*again"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found.*nothere.png"):
        load_image(tmp_path / "nothere.png")


@pytest.mark.parametrize("size", [(1, 1), (MIN_SIDE - 1, 64), (64, MIN_SIDE - 1)])
def test_tiny_images_are_rejected(size):
    with pytest.raises(ImageError, match=f"at least {MIN_SIDE} pixels"):
        load_image(Image.new("RGB", size))
    assert load_image(Image.new("RGB", (MIN_SIDE, MIN_SIDE))).size == (MIN_SIDE, MIN_SIDE)


def test_grayscale_becomes_rgb():
    grey = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    image = load_image(Image.fromarray(grey))
    assert image.mode == "RGB"
    assert all(np.array_equal(np.asarray(image)[..., c], grey) for c in range(3))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :5, 3] = 0  # transparent -> white
    rgba[:, 5:10, 3] = 255  # opaque -> unchanged
    rgba[:, 10:, 3] = 128  # half -> between
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA"))).astype(int)
    assert (out[:, :5] == 255).all()
    assert (out[:, 5:10] == (10, 200, 30)).all()
    assert np.allclose(out[0, 15], [10 * 0.5 + 127.5, 200 * 0.5 + 127.5, 30 * 0.5 + 127.5], atol=2)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    assert (np.asarray(load_image(image)) == 255).all()


def test_16bit_grey_png_keeps_the_high_byte(tmp_path):
    values = np.array([[0x0000, 0x07FF, 0x8001, 0xFF00]], np.uint16).repeat(16, 0).repeat(4, 1)[..., None]
    write_png16(tmp_path / "grey16.png", values)
    out = np.asarray(load_image(tmp_path / "grey16.png"))
    assert out.shape == (16, 16, 3)
    assert list(out[0, ::4, 0]) == [0, 7, 128, 255]  # Pillow's own convert would clip everything to 0 or 255


def test_16bit_rgb_png(tmp_path):
    pixels = np.zeros((16, 16, 3), np.uint16)
    pixels[...] = (65535, 32896, 257 * 7)
    write_png16(tmp_path / "rgb16.png", pixels)
    assert (np.asarray(load_image(tmp_path / "rgb16.png")) == (255, 128, 7)).all()


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    out = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() > 240 and out[25:].mean() < 15  # the white half is now on top


def test_comfyui_image_tensor_round_trips_exactly():
    pixels = _random_rgb(24, 32)
    comfy = torch.from_numpy(pixels).float()[None] / 255  # what ComfyUI's LoadImage gives
    assert np.array_equal(np.asarray(load_image(comfy)), pixels)
    assert np.array_equal(np.asarray(load_image(comfy[0])), pixels)
    assert np.array_equal(np.asarray(load_image(pixels)), pixels)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 24, 32, 3), "batch of 2"),
    (torch.rand(24, 32, 3) * 255, "0..1.*255"),
    (torch.full((24, 32, 3), float("nan")), "NaN"),
    (torch.rand(3, 24, 32), r"\[H, W, 3\]"),
    (np.zeros((24, 32, 3), np.int32), "uint8.*float"),
    ("not a path object".encode(), "bytes"),
])
def test_bad_array_inputs(bad, message):
    with pytest.raises(ImageError, match=message):
        load_image(bad)


def test_large_images_take_the_approximate_memory_light_path(tmp_path):
    """Above LARGE_IMAGE_PIXELS the JPEG is decoded at reduced scale and the result stays within a few levels."""
    small = _random_rgb(40, 50)
    pixels = np.asarray(Image.fromarray(small).resize((5000, 4000), Image.BICUBIC))
    assert 5000 * 4000 > LARGE_IMAGE_PIXELS
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    # covering size 256 x 320; the draft picks JPEG scale 1/4, the smallest >= 3 x that (1/8 would be 625 wide)
    assert load_image(tmp_path / "big.jpg", target_hw=(256, 256)).size == (1250, 1000)
    assert load_image(tmp_path / "big.jpg").size == (5000, 4000)
    exact = np.asarray(Image.open(tmp_path / "big.jpg").resize((320, 256), Image.BILINEAR))[:, 32:288]
    approx = ((reference_tensor(tmp_path / "big.jpg", 256, 256)[0, :, 0].permute(1, 2, 0) + 1) / 2 * 255).round()
    difference = (approx - torch.from_numpy(exact.astype(np.float32))).abs()
    assert 0 < difference.max() <= 4 and difference.mean() < 0.5


# --- size checks ---------------------------------------------------------------------------------------------------

def test_off_grid_sizes_name_the_nearest_valid_ones():
    with pytest.raises(SizeError, match="height 500 is not a multiple of 32: use 480 or 512"):
        check_size(500, 512, 32)
    with pytest.raises(SizeError, match="width 8 is not a multiple of 16: use 16"):
        check_size(512, 8, 16)
    with pytest.raises(SizeError, match="height 520.*512 or 528.*width 90.*80 or 96"):
        check_size(520, 90, 16)
    check_size(512, 512, 32)
    check_size(528, 720, 16)


@pytest.mark.parametrize("height, width", [(0, 512), (512, -32), (512.0, 512), ("512", 512)])
def test_invalid_sizes(height, width):
    with pytest.raises(SizeError):
        check_size(height, width, 16)


# --- colour correction ---------------------------------------------------------------------------------------------

def _video(frames: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, frames, 12, 16, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def test_strength_zero_is_identity_and_strength_is_checked():
    frames, reference = _video(), _video(1, seed=1)
    assert match_colors(frames, reference, 0.0) is frames
    for strength in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            match_colors(frames, reference, strength)


def test_matching_a_frame_to_itself_changes_nothing():
    frames = _video(1)
    assert torch.allclose(match_colors(frames, frames, 1.0), frames, atol=1e-4)


def test_colour_cast_is_removed_and_frames_are_independent():
    reference = _video(1, seed=3) * 0.6
    cast = reference.repeat(1, 1, 4, 1, 1).clone()
    cast[:, 0, 1] += 0.15  # red cast on frame 1
    cast[:, 2, 3] -= 0.15  # less blue on frame 3
    corrected = match_colors(cast, reference, 1.0)
    for t in range(4):
        error_before = (cast[:, :, t] - reference[:, :, 0]).abs().mean()
        error_after = (corrected[:, :, t] - reference[:, :, 0]).abs().mean()
        assert error_after < (1e-5 if t in (0, 2) else error_before / 3)
        assert torch.allclose(corrected[:, :, t:t + 1], match_colors(cast[:, :, t:t + 1], reference, 1.0), atol=1e-6)
    half = match_colors(cast, reference, 0.5)
    assert torch.allclose(half, (cast + corrected) / 2, atol=1e-5)


def test_low_precision_frames_keep_their_dtype():
    frames, reference = _video(2), _video(1, seed=1)
    out = match_colors(frames.bfloat16(), reference.bfloat16(), 1.0)
    assert out.dtype == torch.bfloat16
    assert (out.float() - match_colors(frames, reference, 1.0)).abs().max() < 0.05


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, 3, 1, H, W\]"):
        match_colors(_video(2), _video(2), 1.0)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        match_colors(_video(2)[0], _video(1), 1.0)


def test_constant_frame_takes_the_reference_mean_colour():
    """A flat frame has Lab std 0 (in float64): the std floor keeps it finite, the frame becomes the reference mean."""
    reference = _video(1, seed=2).double() * 0.5
    flat = torch.full((1, 3, 2, 12, 16), 0.1, dtype=torch.float64)
    out = match_colors(flat, reference, 1.0)
    assert torch.isfinite(out).all()
    assert (out - out[..., :1, :1]).abs().max() < 1e-6  # still flat
