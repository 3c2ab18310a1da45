"""The reference image: loading any image input, the official resize + centre crop, size checks, colour correction.

    reference = reference_tensor("portrait.jpg", 512, 512)       # [1, 3, 1, 512, 512] float32 in [-1, 1]
    frames = match_colors(frames, reference, strength=1.0)        # [1, 3, T, 512, 512] in [-1, 1]

Parity with the official implementation is defined on `resize_and_centercrop` (docs/algorithm.md#reference-image): given the same RGB uint8
image it is bit-exact. Loading adds what the official loader leaves to chance: EXIF rotation is applied, alpha is
composited on white, 16-bit images keep their high byte, and sources above `LARGE_IMAGE_PIXELS` are decoded and
shrunk approximately (JPEG draft + Pillow's `reducing_gap`; at most a few uint8 levels from the exact result).
"""

from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, InputError, SizeError
from .frames import images_to_uint8

MIN_SIDE = 16  # smaller sources are rejected: nothing of a face survives, and the resize would be pure blur
# Above this many source pixels (16.8 MP, e.g. 8k x 8k or a 50 MP photo) the resize is approximate but memory-light:
# JPEGs decode at 1/2..1/8 scale (no smaller than REDUCING_GAP x the resized size) and Pillow's resize first
# box-reduces by an integer factor. Measured on an 8k image: at most 1-3 uint8 levels, mean 0.2, from the exact
# resize. Everything up to 16.8 MP (a 12 MP phone photo included) takes the exact official path.
LARGE_IMAGE_PIXELS = 4096 * 4096
REDUCING_GAP = 3.0


# --- loading -------------------------------------------------------------------------------------------------------

def load_image(source, target_hw: tuple[int, int] | None = None) -> Image.Image:
    """Any image input -> an RGB uint8 PIL image of at least MIN_SIDE per side.

    source: a path (str or Path; any format Pillow reads), a PIL image, a uint8 array [H, W], [H, W, C] or
    [1, H, W, C] (numpy or torch, C in 1, 3, 4), or a float array of the same shapes in 0..1 (a ComfyUI IMAGE
    [1, H, W, 3] included). target_hw: the (height, width) the image will be resized to; only used to decode very
    large JPEGs at a reduced scale (see LARGE_IMAGE_PIXELS).
    """
    if isinstance(source, (str, Path)):
        image = _open_file(Path(source), target_hw)
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        image = _array_to_image(source)
    else:
        raise ImageError(f"cannot use a {type(source).__name__} as an image: pass a file path, a PIL image, "
                         f"a uint8 array [H, W, 3] or a float tensor [1, H, W, 3] in 0..1")
    image = _to_rgb(image)
    if min(image.size) < MIN_SIDE:
        raise ImageError(f"the image is {image.width}x{image.height} pixels; a reference needs at least "
                         f"{MIN_SIDE} pixels per side (use a portrait photo, ideally at least the video size)")
    return image


def _open_file(path: Path, target_hw: tuple[int, int] | None) -> Image.Image:
    """Decode a file fully (so a truncated file fails here, not later), applying its EXIF orientation."""
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            if target_hw is not None and image.format == "JPEG" and _is_large(image.size):
                # The scale that covers the target in either orientation (EXIF rotation is applied after decoding).
                scale = max(target_hw) / min(image.size) * REDUCING_GAP
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path} is too large to decode safely ({e}); downscale it first (a few thousand pixels "
                         f"per side is plenty)") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{path} is not an image Pillow can read (PNG, JPEG, WebP, ...); the file may be "
                         f"corrupted or of another type: open and re-save it, or export it again") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot decode {path}: {e}. The file is corrupted or truncated (an interrupted "
                         f"download or copy?): download or export it again") from e


def _array_to_image(array: np.ndarray | torch.Tensor) -> Image.Image:
    """[H, W], [H, W, C] or [1, H, W, C] (C in 1, 3, 4), uint8 or float 0..1 -> PIL image (L, RGB or RGBA)."""
    shape = tuple(array.shape)
    if len(shape) == 4:
        if shape[0] != 1:
            raise ImageError(f"got a batch of {shape[0]} images {list(shape)}; pass one image [1, H, W, 3] "
                             f"(pick one with an image-batch node first)")
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"an image array must be [H, W, 3] (channels last; 1 or 4 channels also work), got shape "
                         f"{list(shape)}")
    try:
        pixels = images_to_uint8(array)
    except ValueError as e:
        raise ImageError(str(e)) from e
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited on white; 16-bit grey keeps its high byte (as Pillow
    itself does for 16-bit RGB), instead of Pillow's clipping to 255."""
    if image.mode == "RGB":
        return image
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I" (16-bit grey PNG/TIFF)
        pixels = np.asarray(image)  # uint16 ("I;16", "I;16B") or int32 ("I"): no wider copy than that
        grey = ((pixels if pixels.dtype.kind == "u" else pixels.clip(0, 65535)) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise ImageError("32-bit float images are not supported; save the image as an 8- or 16-bit PNG or a JPEG")
    return image.convert("RGB")


def _is_large(size: tuple[int, int]) -> bool:
    return size[0] * size[1] > LARGE_IMAGE_PIXELS


# --- the official resize + centre crop -------------------------------------------------------------------------------

def _resized_size(h0: int, w0: int, height: int, width: int) -> tuple[int, int]:
    """The size that covers height x width keeping aspect: ceil on the float product (may overshoot by one)."""
    scale = max(height / h0, width / w0)
    return math.ceil(scale * h0), math.ceil(scale * w0)


def _center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two dims to height x width, offsets int(round(d / 2)) with Python's half-to-even round."""
    top = int(round((pixels.shape[-2] - height) / 2))
    left = int(round((pixels.shape[-1] - width) / 2))
    return pixels[..., top:top + height, left:left + width]


def resize_and_centercrop(image: Image.Image | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Cover height x width keeping aspect, then centre-crop (docs/algorithm.md#reference-image).

    PIL image -> uint8 [1, 3, 1, height, width] (bilinear, Pillow's antialiasing; exact official path unless the
    source exceeds LARGE_IMAGE_PIXELS). Tensor [C, h, w] -> [C, height, width] in its dtype (nearest).
    """
    if isinstance(image, Image.Image):
        new_h, new_w = _resized_size(image.height, image.width, height, width)
        gap = REDUCING_GAP if _is_large(image.size) else None
        resized = _to_rgb(image).resize((new_w, new_h), Image.BILINEAR, reducing_gap=gap)
        pixels = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)
        return _center_crop(pixels, height, width)[None, :, None]
    if image.ndim != 3:
        raise ImageError(f"a tensor image must be [C, H, W], got {list(image.shape)}")
    new_h, new_w = _resized_size(image.shape[1], image.shape[2], height, width)
    resized = F.interpolate(image[None], size=(new_h, new_w), mode="nearest")[0]
    return _center_crop(resized, height, width)


def reference_tensor(source, height: int, width: int) -> torch.Tensor:
    """Any `load_image` input -> the reference [1, 3, 1, height, width] float32 in [-1, 1]: the VAE input and the
    colour-correction reference (docs/algorithm.md#reference-image)."""
    check_size(height, width, 1)
    pixels = resize_and_centercrop(load_image(source, (height, width)), height, width)
    return (pixels.float() / 255 - 0.5) * 2


# --- size validation -----------------------------------------------------------------------------------------------

def check_size(height: int, width: int, multiple: int) -> None:
    """Raise SizeError unless height and width are positive multiples of `multiple` (ModelConfig.spatial_multiple:
    16 for Pro, 32 for Lite). The message names the nearest valid sizes; nothing is ever rounded silently."""
    problems = []
    for name, value in (("height", height), ("width", width)):
        try:
            value = operator.index(value)
        except TypeError:
            problems.append(f"{name} must be a whole number of pixels, got {value!r}")
            continue
        if value <= 0:
            problems.append(f"{name} must be positive, got {value}")
        elif value % multiple:
            below = value // multiple * multiple
            nearest = f"{below} or {below + multiple}" if below else f"{below + multiple}"
            problems.append(f"{name} {value} is not a multiple of {multiple}: use {nearest}")
    if problems:
        raise SizeError("; ".join(problems) + (f" (this model needs sizes in multiples of {multiple})"
                                               if multiple > 1 else ""))


# --- colour correction ------------------------------------------------------------------------------------------

_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_XYZ_TO_RGB = ((3.2404542, -1.5371385, -0.4985314),
               (-0.9692660, 1.8760108, 0.0415560),
               (0.0556434, -0.2040259, 1.0572252))
_WHITE = (0.95047, 1.0, 1.08883)  # D65
_LAB_EPSILON = 0.008856
_LAB_KAPPA = 903.3
_STD_FLOOR = 1e-8  # a source std below this counts as 1


def _channel_matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _apply_3x3(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """matrix [3, 3] applied to the channel dim of x [B, 3, T, H, W]."""
    return torch.einsum("ij,bjthw->bithw", matrix, x)


def _white(like: torch.Tensor) -> torch.Tensor:
    return _channel_matrix(_WHITE, like).view(1, 3, 1, 1, 1)


def _srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [B, 3, T, H, W] (nominally 0..1, not clamped) -> Lab, same shape."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (_apply_3x3(_channel_matrix(_RGB_TO_XYZ, rgb), linear) / _white(rgb)).clamp(1e-8, 1)
    f = torch.where(xyz > _LAB_EPSILON, xyz ** (1 / 3), (_LAB_KAPPA * xyz + 16) / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def _lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab [B, 3, T, H, W] -> sRGB clamped to [0, 1], same shape."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16) / 116
    fx, fz = a / 500 + fy, fy - b / 200
    x = torch.where(fx ** 3 > _LAB_EPSILON, fx ** 3, (116 * fx - 16) / _LAB_KAPPA)
    y = torch.where(lightness > _LAB_KAPPA * _LAB_EPSILON, fy ** 3, lightness / _LAB_KAPPA)
    z = torch.where(fz ** 3 > _LAB_EPSILON, fz ** 3, (116 * fz - 16) / _LAB_KAPPA)
    xyz = torch.stack([x, y, z], dim=1) * _white(lab)
    linear = _apply_3x3(_channel_matrix(_XYZ_TO_RGB, lab), xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


def match_colors(frames: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """Match each frame's Lab mean/std (per channel, population std over H x W) to the reference's, then blend.

    frames [B, 3, T, H, W] in [-1, 1]; reference [B, 3, 1, H, W] in [-1, 1] (B may be 1 for any batch);
    strength in [0, 1]: 0 returns `frames` itself. Returns [B, 3, T, H, W] in [-1, 1], in frames' dtype (computed
    in at least float32).
    """
    if not 0 <= strength <= 1:
        raise InputError(f"colour-correction strength must be between 0 and 1, got {strength}")
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B, 3, T, H, W], got {list(frames.shape)}")
    if reference.ndim != 5 or reference.shape[1:3] != (3, 1) or reference.shape[-2:] != frames.shape[-2:]:
        raise ValueError(f"the reference must be [B, 3, 1, H, W] with the frames' H x W {list(frames.shape[-2:])}, "
                         f"got {list(reference.shape)}")
    if strength == 0:
        return frames
    work_dtype = torch.promote_types(frames.dtype, torch.float32)
    source01 = (frames.to(work_dtype) + 1) / 2
    source_lab = _srgb_to_lab(source01)
    reference_lab = _srgb_to_lab((reference.to(device=frames.device, dtype=work_dtype) + 1) / 2)
    source_mean = source_lab.mean(dim=(-2, -1), keepdim=True)
    source_std = source_lab.std(dim=(-2, -1), correction=0, keepdim=True)
    source_std = torch.where(source_std < _STD_FLOOR, torch.ones_like(source_std), source_std)
    reference_mean = reference_lab.mean(dim=(-2, -1), keepdim=True)
    reference_std = reference_lab.std(dim=(-2, -1), correction=0, keepdim=True)
    corrected = _lab_to_srgb((source_lab - source_mean) * (reference_std / source_std) + reference_mean)
    blended = (1 - strength) * source01 + strength * corrected
    return (blended * 2 - 1).to(frames.dtype)
