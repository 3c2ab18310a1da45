"""Face crop and paste-back: animate the face of a large portrait (any size, e.g. a 1920x1080 half body) at the
model's size and put it back into the full-resolution portrait, frame by frame.

    portrait = portrait_pixels("half_body.png")                  # uint8 [H, W, 3]
    box = detect_face(portrait)                                  # FaceBox in portrait pixels (OpenCV, offline)
    crop = FaceCrop.around(portrait, box)                        # the official square around it, clamped inside
    write_talking_video(pipeline, "half_body.png", audio, "out.mp4", face_crop=crop)   # a full-frame MP4
    full = crop.paste(frames)                                    # [n, h, w, 3] float 0..1 -> [n, H, W, 3]

The box may come from anywhere instead: `box_from_mask(mask)` (the bounding box of a MASK's pixels above 0.5) or
`box_from_bbox(value, "xyxy" | "xywh")` (a BBOX wire of a ComfyUI detector pack). One crop box serves the whole video.

Crop proportions (the official ones): a square of side 2.0 x the face width, centred horizontally on the face
centre, with 55% of the square above the face centre. Clamping: a square larger than the image shrinks to the
image's shorter side; a square over an edge shifts inside. The model sees this square resized to the video size
(`image.resize_and_centercrop`: a non-square video size takes the centre of the square's cover).

Paste-back: each generated frame is resized (bilinear, antialiased) onto the part of the square it shows and
blended with a feathered weight: 1 inside, falling linearly to 0 over `feather` x the box side towards each box
edge that lies inside the image (an edge on the image border is not feathered: there is nothing to blend with).
Pixels outside the box are the portrait's, exactly.

Detection (`detect_face`): OpenCV's frontal-face Haar cascade (shipped inside opencv-python-headless 4.x as
cv2.data.haarcascades), on the image shrunk to at most DETECT_SIDE pixels, faces at least MIN_FACE_FRACTION of the
shorter side; each candidate must show an eye (the eye cascade) in its upper part, which removes the cascade's
usual false positives on clothes and backgrounds. No face -> FaceError; several -> the largest only when it is a
clear winner (CLEAR_WINNER x wider than every other), else FaceError naming the fix (a MASK or BBOX input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FaceError
from .frames import images_to_uint8
from .image import MIN_SIDE, load_image

CROP_SCALE = 2.0  # the square's side / the face width
ABOVE_CENTRE = 0.55  # the share of the square above the face centre
DEFAULT_FEATHER = 0.1  # the blend ramp, as a fraction of the box side
DETECT_SIDE = 1024  # detection runs on the image shrunk to at most this many pixels on its longer side
MIN_FACE_FRACTION = 0.04  # the smallest face the detector looks for, as a fraction of the shorter side
CLEAR_WINNER = 2.0  # several faces: the largest wins only when this many times wider than every other
BOX_TOLERANCE = 1.0  # pixels a given box may overhang the image (rounding in other packs); clipped
PASTE_FRAMES = 4  # frames pasted at once when writing: bounds the full-size frames in memory
FACE_CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADE = "haarcascade_eye.xml"
BBOX_FORMATS = ("xyxy", "xywh")


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in portrait pixels: top-left corner (x, y), width, height."""
    x: float
    y: float
    width: float
    height: float

    @classmethod
    def from_corners(cls, x1: float, y1: float, x2: float, y2: float) -> "FaceBox":
        return cls(x1, y1, x2 - x1, y2 - y1)

    def __str__(self) -> str:
        return f"x={self.x:g}, y={self.y:g}, width={self.width:g}, height={self.height:g}"


# --- the portrait ------------------------------------------------------------------------------------------------------

def portrait_pixels(image) -> np.ndarray:
    """Any `image.load_image` input (a path, PIL image, ComfyUI IMAGE [1, H, W, 3], ...) -> uint8 [H, W, 3], full
    resolution (EXIF rotation applied, alpha on white)."""
    return np.asarray(load_image(image))


# --- where the face is -------------------------------------------------------------------------------------------------

def _cascade(name: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if cascade.empty():
        raise FaceError(f"OpenCV's {name} is missing from {cv2.data.haarcascades}: reinstall "
                        f"'opencv-python-headless>=4.8,<5' (5.x wheels no longer ship the cascades), or connect a "
                        f"face MASK or BBOX from a detector node instead")
    return cascade


def _has_eye(grey: np.ndarray, x: int, y: int, w: int, h: int, eyes: cv2.CascadeClassifier) -> bool:
    """An eye in the upper 60% of the candidate face (x, y, w, h) of the grey image."""
    region = grey[y:y + h * 6 // 10, x:x + w]
    found = eyes.detectMultiScale(region, scaleFactor=1.1, minNeighbors=3, minSize=(max(5, w // 10),) * 2,
                                  maxSize=(max(9, w // 2),) * 2)
    return len(found) > 0


def detect_faces(pixels: np.ndarray) -> list[FaceBox]:
    """Every face the built-in detector confirms in uint8 [H, W, 3], largest first (see the module docstring)."""
    grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_SIDE / max(grey.shape))
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    smallest = max(24, round(min(grey.shape) * MIN_FACE_FRACTION))
    found = _cascade(FACE_CASCADE).detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                                    minSize=(smallest, smallest))
    eyes = _cascade(EYE_CASCADE)
    faces = [FaceBox(*(float(v) / scale for v in (x, y, w, h))) for x, y, w, h in found
             if _has_eye(grey, x, y, w, h, eyes)]
    return sorted(faces, key=lambda f: -f.width)


def detect_face(pixels: np.ndarray) -> FaceBox:
    """The one face of the portrait uint8 [H, W, 3]; FaceError when there is none or no clear winner."""
    faces = detect_faces(pixels)
    height, width = pixels.shape[:2]
    if not faces:
        raise FaceError(f"no face found in the {width}x{height} portrait (the built-in detector looks for a frontal "
                        f"face at least {MIN_FACE_FRACTION:.0%} of the shorter side, eyes visible): use a portrait "
                        f"with a clear frontal face, or connect the face's MASK or BBOX from a detector node "
                        f"(--face-box X,Y,W,H on the command line)")
    if len(faces) > 1 and faces[0].width < CLEAR_WINNER * faces[1].width:
        listed = "; ".join(f"({f.x:.0f}, {f.y:.0f}, {f.width:.0f}x{f.height:.0f})" for f in faces[:4])
        raise FaceError(f"{len(faces)} faces found in the portrait ({listed}) and none is clearly the main one: "
                        f"crop the portrait to one person, or give the face to animate as a MASK or BBOX from a "
                        f"detector node (--face-box X,Y,W,H on the command line)")
    return faces[0]


def box_from_mask(mask) -> FaceBox:
    """The bounding box of a mask's pixels above 0.5: [H, W] or [1, H, W] (ComfyUI MASK), float 0..1 or bool."""
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise FaceError(f"the face mask must be one mask [H, W] (ComfyUI MASK [1, H, W]), got shape "
                        f"{list(mask.shape)}: pick one mask of the batch")
    rows, cols = torch.nonzero(mask.float() > 0.5, as_tuple=True)
    if rows.numel() == 0:
        raise FaceError("the face mask is empty (no pixel above 0.5): check the detector or masking node feeding "
                        "it, or disconnect it to use the built-in face detector")
    return FaceBox.from_corners(cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1)


def _boxes(value) -> list[list[float]]:
    """A BBOX value -> its boxes of four numbers: one box [a, b, c, d] (list, tuple, array, tensor) or a list of
    them (nested lists, as some packs send one list per image, are flattened)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = np.asarray(torch.as_tensor(value).detach().cpu(), dtype=np.float64).tolist()
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value):
        return [[float(v) for v in value]]
    if isinstance(value, (list, tuple)):
        return [box for item in value for box in _boxes(item)]
    raise FaceError(f"cannot read a face box from {type(value).__name__} {value!r:.80}: a BBOX must be four numbers "
                    f"[x1, y1, x2, y2] (or [x, y, w, h]) or a list of such boxes")


def box_from_bbox(value, bbox_format: str = "xyxy") -> FaceBox:
    """The one box of a BBOX value (see `_boxes`), read as corners (xyxy: [x1, y1, x2, y2], what Florence-2,
    SAM2 and most detector packs send) or as corner + size (xywh: [x, y, w, h])."""
    if bbox_format not in BBOX_FORMATS:
        raise FaceError(f"bbox format must be one of {', '.join(BBOX_FORMATS)}, got {bbox_format!r}")
    boxes = _boxes(value)
    if len(boxes) != 1:
        raise FaceError(f"the BBOX input holds {len(boxes)} boxes; it needs exactly one face: select one box in the "
                        f"detector node (an index or 'largest' option) before connecting it" if boxes else
                        "the BBOX input holds no box: the detector found nothing; check it, or disconnect it to use "
                        "the built-in face detector")
    a, b, c, d = boxes[0]
    return FaceBox.from_corners(a, b, c, d) if bbox_format == "xyxy" else FaceBox(a, b, c, d)


def parse_face_box(text: str) -> FaceBox:
    """The CLI's --face-box: 'X,Y,W,H' in portrait pixels (top-left corner, width, height)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise FaceError(f"--face-box must be four numbers X,Y,W,H in portrait pixels (top-left corner, width, "
                        f"height), like 800,200,300,300; got {text!r}")
    return FaceBox(*values)


def check_box(box: FaceBox, width: int, height: int) -> FaceBox:
    """The box inside the width x height image (an overhang up to BOX_TOLERANCE pixels clipped), else FaceError."""
    values = (box.x, box.y, box.width, box.height)
    if not all(math.isfinite(v) for v in values) or box.width <= 0 or box.height <= 0:
        raise FaceError(f"the face box ({box}) is not a rectangle: give a positive width and height (for corners "
                        f"x1, y1, x2, y2 choose the 'xyxy' format)")
    t = BOX_TOLERANCE
    if box.x < -t or box.y < -t or box.x + box.width > width + t or box.y + box.height > height + t:
        raise FaceError(f"the face box ({box}) lies outside the {width}x{height} portrait: give it in this image's "
                        f"pixels (x to the right, y down from the top-left corner; for corners x1, y1, x2, y2 choose "
                        f"the 'xyxy' format), or use the built-in detector")
    x, y = max(box.x, 0.0), max(box.y, 0.0)
    return FaceBox(x, y, min(box.x + box.width, width) - x, min(box.y + box.height, height) - y)


# --- the crop box and the paste-back -------------------------------------------------------------------------------

def crop_square(box: FaceBox, width: int, height: int) -> tuple[int, int, int]:
    """The official square (left, top, side) for a face box in a width x height image, clamped inside it."""
    side = min(round(CROP_SCALE * box.width), width, height)
    if side < MIN_SIDE:
        raise FaceError(f"the face box ({box}) is too small: its crop would be {side} pixels wide, under "
                        f"{MIN_SIDE}; use a larger portrait or a box around the whole face")
    centre_x, centre_y = box.x + box.width / 2, box.y + box.height / 2
    left = min(max(round(centre_x - side / 2), 0), width - side)
    top = min(max(round(centre_y - ABOVE_CENTRE * side), 0), height - side)
    return left, top, side


def _ramp(length: int, feather: int, start_free: bool, end_free: bool) -> torch.Tensor:
    """[length] weights: 1 in the middle, linear to 0 over `feather` pixels at each end not marked free."""
    weight = torch.ones(length)
    if feather > 0:
        position = torch.arange(length, dtype=torch.float32) + 0.5
        if not start_free:
            weight = torch.minimum(weight, position / feather)
        if not end_free:
            weight = torch.minimum(weight, (length - position) / feather)
    return weight.clamp(0, 1)


@dataclass(frozen=True)
class FaceCrop:
    """One crop box for a whole video: the full portrait [H, W, 3] float32 0..1 (CPU), the square (left, top, side)
    in it, the face box it came from and the feather (a fraction of the side)."""
    portrait: torch.Tensor
    left: int
    top: int
    side: int
    face: FaceBox
    feather: float = DEFAULT_FEATHER

    @classmethod
    def around(cls, portrait, box: FaceBox | None = None, feather: float = DEFAULT_FEATHER) -> "FaceCrop":
        """The crop for `box` in `portrait` (any `portrait_pixels` input; a uint8 [H, W, 3] array as is), or for
        the face the built-in detector finds when box is None. A float tensor [1, H, W, 3] or [H, W, 3] (a ComfyUI
        IMAGE) is kept as it is, so the paste-back leaves its pixels exactly as they were."""
        pixels = portrait if isinstance(portrait, np.ndarray) and portrait.dtype == np.uint8 else (
            portrait_pixels(portrait))
        if not (isinstance(feather, (int, float)) and 0 <= feather <= 0.5):
            raise FaceError(f"feather must be between 0 and 0.5 (a fraction of the crop side), got {feather!r}")
        height, width = pixels.shape[:2]
        box = check_box(detect_face(pixels) if box is None else box, width, height)
        left, top, side = crop_square(box, width, height)
        if isinstance(portrait, torch.Tensor) and portrait.is_floating_point() and portrait.shape[-1] == 3:
            exact = portrait.detach().to("cpu", torch.float32).reshape(height, width, 3).clone()
        else:
            exact = torch.from_numpy(pixels.copy()).float() / 255
        return cls(exact, left, top, side, box, float(feather))

    @property
    def size(self) -> tuple[int, int]:
        """The portrait's (width, height)."""
        return self.portrait.shape[1], self.portrait.shape[0]

    @property
    def video_size(self) -> tuple[int, int]:
        """(width, height) of the full-frame MP4: H.264 (yuv420p) needs even sizes, so an odd size loses its last
        column or row."""
        width, height = self.size
        return width - width % 2, height - height % 2

    def reference(self) -> torch.Tensor:
        """The cropped portrait, what the model is given: [1, side, side, 3] float32 0..1."""
        return self.portrait[self.top:self.top + self.side, self.left:self.left + self.side][None].clone()

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, rows, cols) of the portrait that a generated frame of height x width shows: the whole square
        for a square video, else the centre of the square that `image.resize_and_centercrop` kept."""
        scale = self.side / max(height, width)
        rows, cols = min(self.side, round(height * scale)), min(self.side, round(width * scale))
        return self.top + (self.side - rows) // 2, self.left + (self.side - cols) // 2, rows, cols

    def weight(self, height: int, width: int) -> torch.Tensor:
        """The feathered blend weight [rows, cols] of `region(height, width)`; edges on the image border are not
        feathered."""
        top, left, rows, cols = self.region(height, width)
        image_width, image_height = self.size
        feather = round(self.feather * min(rows, cols))
        vertical = _ramp(rows, feather, top == 0, top + rows == image_height)
        horizontal = _ramp(cols, feather, left == 0, left + cols == image_width)
        return torch.minimum(vertical[:, None], horizontal[None, :])

    def mask(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """The blend weight in the full frame [H, W] (0 outside the box), for frames of height x width (default:
        square)."""
        height, width = height or self.side, width or self.side
        top, left, rows, cols = self.region(height, width)
        full = torch.zeros(self.portrait.shape[:2])
        full[top:top + rows, left:left + cols] = self.weight(height, width)
        return full

    def pasted_region(self, frames: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """Generated frames [n, h, w, 3] float 0..1 (any device) -> (top, left, the blended region [n, rows, cols, 3]
        float32 CPU): each frame resized onto `region(h, w)` and blended with the portrait there by `weight`."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise FaceError(f"frames to paste back must be an IMAGE batch [n, h, w, 3], got {list(frames.shape)}")
        height, width = frames.shape[1:3]
        top, left, rows, cols = self.region(height, width)
        weight = self.weight(height, width)[..., None]
        frames = frames.detach().to("cpu", torch.float32)
        if (rows, cols) != (height, width):
            frames = F.interpolate(frames.permute(0, 3, 1, 2), size=(rows, cols), mode="bilinear",
                                   align_corners=False, antialias=True).clamp(0, 1).permute(0, 2, 3, 1)
        under = self.portrait[top:top + rows, left:left + cols]
        return top, left, under * (1 - weight) + weight * frames

    def paste(self, frames: torch.Tensor) -> torch.Tensor:
        """Generated frames [n, h, w, 3] float 0..1 -> the full portrait with each frame pasted in: [n, H, W, 3]
        float32 on the CPU (ComfyUI's IMAGE: the whole batch is held)."""
        top, left, region = self.pasted_region(frames)
        out = self.portrait.expand(frames.shape[0], -1, -1, -1).clone()
        out[:, top:top + region.shape[1], left:left + region.shape[2]] = region
        return out

    @cached_property
    def _video_base(self) -> np.ndarray:
        """The portrait as uint8 [H', W', 3] at `video_size` (converted once)."""
        width, height = self.video_size
        return images_to_uint8(self.portrait[:height, :width])

    def video_frames(self, frames: torch.Tensor) -> Iterator[np.ndarray]:
        """`paste` for the MP4: uint8 [k, H', W', 3] at `video_size`, PASTE_FRAMES frames at a time; only the
        region is computed in float, the rest is a copy of the uint8 portrait."""
        top, left, region = self.pasted_region(frames)
        base = self._video_base
        region = images_to_uint8(region)[:, :base.shape[0] - top, :base.shape[1] - left]  # odd sizes: trimmed
        for start in range(0, frames.shape[0], PASTE_FRAMES):
            block = np.repeat(base[None], min(PASTE_FRAMES, frames.shape[0] - start), axis=0)
            block[:, top:top + region.shape[1], left:left + region.shape[2]] = region[start:start + PASTE_FRAMES]
            yield block

    def check_portrait(self, image) -> None:
        """FaceError unless `image` (any `portrait_pixels` input) has this crop's portrait size."""
        height, width = portrait_pixels(image).shape[:2]
        if (width, height) != self.size:
            raise FaceError(f"the face crop was made on a {self.size[0]}x{self.size[1]} portrait but the image is "
                            f"{width}x{height}: make the crop from this same image (connect it to the Face Crop "
                            f"node too)")

    def preview(self) -> torch.Tensor:
        """The portrait with the crop square (green) and the face box (red) drawn: [1, H, W, 3] float32 0..1."""
        pixels = images_to_uint8(self.portrait).copy()
        thickness = max(2, round(min(self.size) / 300))
        cv2.rectangle(pixels, (self.left, self.top), (self.left + self.side - 1, self.top + self.side - 1),
                      (0, 255, 0), thickness)
        face = self.face
        cv2.rectangle(pixels, (round(face.x), round(face.y)),
                      (round(face.x + face.width) - 1, round(face.y + face.height) - 1), (255, 0, 0), thickness)
        return torch.from_numpy(pixels).float()[None] / 255

    def summary(self) -> dict:
        return {"box": [self.left, self.top, self.side, self.side], "face": [round(v, 1) for v in (
            self.face.x, self.face.y, self.face.width, self.face.height)], "video_size": "{}x{}".format(
            *self.video_size)}
