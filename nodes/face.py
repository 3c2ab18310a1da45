"""FlashHead Face Crop (a large portrait -> the face's square crop, one box for the whole video) and FlashHead Paste
Back (generated frames + that crop -> full-resolution frames).

The FLASHHEAD_FACE_CROP wire carries a flashhead_core.media.face.FaceCrop: the full portrait and the crop square. Connect
it to FlashHead Talking Video's `face_crop` input (the MP4 then has the portrait's size), or give the node's cropped
IMAGE to FlashHead Sampler and its frames with the wire to FlashHead Paste Back. The face box comes from a connected
BBOX or MASK (any detector pack), else from the built-in OpenCV detector (offline, the cascade ships inside
opencv-python-headless); no face or several, an empty mask or a box outside the image fail here, before anything
is generated.
"""

from __future__ import annotations

from ..flashhead_core import DEFAULT_FEATHER, box_from_bbox, box_from_mask, FaceCrop, FaceError
from ._inputs import check_numbers
from ._io import CATEGORY, io
from ._wires import Bbox, FaceCropWire
BBOX_FORMATS = {"x1,y1,x2,y2": "xyxy", "x,y,w,h": "xywh"}


def _one_image(image, what: str):
    if image.ndim != 4 or image.shape[0] != 1:
        raise FaceError(f"{what} must be one image [1, H, W, 3], got {list(image.shape)}: pick one image of the batch "
                        f"first")
    return image


class FlashHeadFaceCrop(io.ComfyNode):
    """A large portrait -> the square around its face that FlashHead animates, and the crop to paste it back."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadFaceCrop", display_name="FlashHead Face Crop", category=CATEGORY,
            description=("Animate only the face of a large portrait (any size, e.g. a 1920x1080 half body): finds "
                         "the face (a connected BBOX or MASK, else the built-in OpenCV detector) and crops the "
                         "square FlashHead expects (2 x the face width, 55% above the face centre). Connect "
                         "face_crop to FlashHead Talking Video (full-size MP4) or to FlashHead Paste Back."),
            inputs=[
                io.Image.Input("image", tooltip="The full portrait, one image of any size."),
                io.Float.Input("feather", default=DEFAULT_FEATHER, min=0.0, max=0.5, step=0.01, tooltip=(
                    "The paste-back's soft edge, as a fraction of the crop side (0 = a hard edge). Box edges on "
                    "the image border are never feathered.")),
                io.Combo.Input("bbox_format", options=list(BBOX_FORMATS), default="x1,y1,x2,y2", tooltip=(
                    "How to read the bbox input: corners (Florence-2, SAM2 and most detector packs) or top-left "
                    "corner + width, height.")),
                io.Mask.Input("mask", optional=True, tooltip=(
                    "Optional: a face mask of the same size (e.g. from a segmentation node); its pixels above 0.5 "
                    "give the face box. Connect this or bbox, not both.")),
                Bbox.Input("bbox", optional=True, tooltip=(
                    "Optional: the face box from a detector node (BBOX: [x1, y1, x2, y2], or a list holding "
                    "exactly one such box). Overrides the built-in detector.")),
            ],
            outputs=[
                FaceCropWire.Output(display_name="face_crop", tooltip=(
                    "Connect to FlashHead Talking Video's face_crop input or to FlashHead Paste Back.")),
                io.Image.Output(display_name="cropped", tooltip=(
                    "The face square at the portrait's resolution: the reference for FlashHead Sampler.")),
                io.Mask.Output(display_name="mask", tooltip=(
                    "Where the frames are pasted, over the full portrait: 1 inside, the feathered edge, 0 outside.")),
                io.Image.Output(display_name="preview", tooltip=(
                    "The portrait with the crop square (green) and the face box (red) drawn.")),
            ],
        )

    @classmethod
    def execute(cls, image, feather, bbox_format, mask=None, bbox=None) -> io.NodeOutput:
        check_numbers(cls, feather=feather, bbox_format=bbox_format)
        image = _one_image(image, "the portrait")
        if mask is not None and bbox is not None:
            raise FaceError("both a mask and a bbox are connected: connect one of them (or neither, for the built-in "
                            "detector)")
        box = None
        if mask is not None:
            if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
                raise FaceError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the portrait is "
                                f"{image.shape[2]}x{image.shape[1]}: make the mask from this image")
            box = box_from_mask(mask)
        elif bbox is not None:
            box = box_from_bbox(bbox, BBOX_FORMATS[bbox_format])
        crop = FaceCrop.around(image, box, feather)
        return io.NodeOutput(crop, crop.reference(), crop.mask()[None], crop.preview())


class FlashHeadPasteBack(io.ComfyNode):
    """Generated frames + the face crop -> the full portrait with the frames pasted in."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadPasteBack", display_name="FlashHead Paste Back", category=CATEGORY,
            description=("Pastes each generated frame (FlashHead Sampler or VAE Decode, made from the Face Crop's "
                         "cropped image) back into the full portrait with a feathered edge: full-resolution frames "
                         "for CreateVideo or an upscaler."),
            inputs=[
                io.Image.Input("images", tooltip="The generated frames [frames, h, w, 3] (any video size)."),
                FaceCropWire.Input("face_crop", tooltip="From FlashHead Face Crop (the same portrait)."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip=(
                "The full portrait with each frame pasted in: [frames, H, W, 3] at the portrait's size."))],
        )

    @classmethod
    def execute(cls, images, face_crop) -> io.NodeOutput:
        return io.NodeOutput(face_crop.paste(images))


def face_crop_input():
    """Talking Video's optional face_crop input."""
    return FaceCropWire.Input("face_crop", optional=True, tooltip=(
        "From FlashHead Face Crop (made from this same image): only the face square is generated and pasted back "
        "into every frame; the MP4 has the portrait's size (an odd width or height loses one column or row)."))

