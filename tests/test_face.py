"""Face crop and paste-back (flashhead_core.media.face): the built-in detector on a real photo (scikit-image's astronaut,
512x512, one face) alone and on a large 1920x1080 canvas, its errors (no face, several), boxes from a MASK and a
BBOX, the official crop proportions and clamping, the feathered paste-back, and a tiny-model run through
write_talking_video and `flashhead generate` that writes a full-size MP4."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.data import astronaut

from flashhead_core.errors import FaceError, FlashHeadError
from flashhead_core.media.face import (
    FaceBox,
    FaceCrop,
    box_from_bbox,
    box_from_mask,
    check_box,
    crop_square,
    detect_face,
    detect_faces,
    parse_face_box,
)
from flashhead_core.pipeline import load_pipeline, write_talking_video
from flashhead_core.testing import write_tiny_checkpoint
from flashhead_core.testing.media import synthetic_speech, write_wav

SIZE = 64
ASTRONAUT_FACE = FaceBox(177, 66, 95, 95)  # where a person marks the face in the 512x512 photo (eyebrows to chin)


def on_canvas(photo: np.ndarray, scale: float, x: int, y: int, width: int = 1920, height: int = 1080) -> np.ndarray:
    """`photo` scaled by `scale` and pasted at (x, y) on a grey width x height canvas (cut at the canvas edge)."""
    scaled = np.asarray(Image.fromarray(photo).resize((round(photo.shape[1] * scale), round(photo.shape[0] * scale)),
                                                      Image.BILINEAR))
    canvas = np.full((height, width, 3), 128, np.uint8)
    h, w = min(scaled.shape[0], height - y), min(scaled.shape[1], width - x)
    canvas[y:y + h, x:x + w] = scaled[:h, :w]
    return canvas


def overlap(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    h = max(0.0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    return w * h / (a.width * a.height + b.width * b.height - w * h)


def scaled_box(box: FaceBox, scale: float, x: int, y: int) -> FaceBox:
    return FaceBox(x + box.x * scale, y + box.y * scale, box.width * scale, box.height * scale)


# --- detection -----------------------------------------------------------------------------------------------------

def test_detects_the_astronauts_face_alone_and_on_a_large_portrait():
    assert overlap(detect_face(astronaut()), ASTRONAUT_FACE) > 0.8
    # a 1920x1080 half body: the photo at 2x (face about 190 px) right of centre
    portrait = on_canvas(astronaut(), 2.0, 700, 100)
    found = detect_face(portrait)
    assert overlap(found, scaled_box(ASTRONAUT_FACE, 2.0, 700, 100)) > 0.7, found
    crop = FaceCrop.around(portrait)
    assert crop.face == found and crop.size == (1920, 1080)
    assert crop.side == round(2 * found.width)


@pytest.mark.parametrize("name, portrait, message", [
    ("flat", np.full((1080, 1920, 3), 110, np.uint8), "no face found"),
    ("noise", np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8), "no face found"),
    ("two astronauts", np.concatenate([astronaut(), astronaut()], axis=1), "2 faces found"),
])
def test_no_face_or_several_is_a_clear_error(name, portrait, message):
    with pytest.raises(FaceError, match=message) as error:
        FaceCrop.around(portrait)
    assert "MASK or BBOX" in str(error.value) and "--face-box" in str(error.value)  # the fix


def test_a_clear_winner_among_several_faces():
    """One person in front, one far behind: both are found, and the one more than twice as wide is the face."""
    portrait = on_canvas(astronaut(), 2.5, 0, 0)
    small = np.asarray(Image.fromarray(astronaut()).resize((448, 448), Image.BILINEAR))  # a face 2.5x narrower
    portrait[632:1080, 1452:1900] = small
    faces = detect_faces(portrait)
    assert len(faces) == 2 and faces[0].width > 2 * faces[1].width, faces
    assert overlap(detect_face(portrait), scaled_box(ASTRONAUT_FACE, 2.5, 0, 0)) > 0.7


# --- boxes from a MASK or a BBOX -------------------------------------------------------------------------------------

def test_box_from_a_mask_and_an_empty_mask():
    mask = torch.zeros(1, 300, 500)
    mask[0, 100:200, 300:450] = 1.0
    mask[0, 150, 200] = 0.4  # below 0.5: not part of the face
    assert box_from_mask(mask) == FaceBox(300, 100, 150, 100)
    with pytest.raises(FaceError, match="face mask is empty"):
        box_from_mask(torch.zeros(1, 300, 500))
    with pytest.raises(FaceError, match="one mask"):
        box_from_mask(torch.ones(2, 300, 500))


def test_box_from_a_bbox_in_the_shapes_detector_packs_send():
    expected = FaceBox(300, 100, 150, 100)
    for value in ([300, 100, 450, 200], (300, 100, 450, 200), [[300, 100, 450, 200]], [[[300, 100, 450, 200]]],
                  torch.tensor([300.0, 100.0, 450.0, 200.0]), np.array([[300, 100, 450, 200]])):
        assert box_from_bbox(value) == expected, value
    assert box_from_bbox([300, 100, 150, 100], "xywh") == expected
    with pytest.raises(FaceError, match="holds 2 boxes"):
        box_from_bbox([[0, 0, 10, 10], [20, 20, 40, 40]])
    with pytest.raises(FaceError, match="holds no box"):
        box_from_bbox([])
    with pytest.raises(FaceError, match="four numbers"):
        box_from_bbox("300,100,450,200")
    assert parse_face_box("300, 100,150,100") == expected
    with pytest.raises(FaceError, match="four numbers X,Y,W,H"):
        parse_face_box("300,100,150")


@pytest.mark.parametrize("box", [FaceBox(1800, 100, 200, 200), FaceBox(-50, 100, 200, 200),
                                 FaceBox(100, 1000, 100, 100), FaceBox(100, 100, 0, 100),
                                 FaceBox(float("nan"), 100, 100, 100)])
def test_a_box_outside_the_image_is_refused(box):
    with pytest.raises(FaceError, match="outside the 1920x1080 portrait|not a rectangle"):
        FaceCrop.around(np.zeros((1080, 1920, 3), np.uint8), box)


def test_a_box_overhanging_by_rounding_is_clipped():
    assert check_box(FaceBox(-0.5, 10, 100.9, 50), 100, 80) == FaceBox(0, 10, 100, 50)


# --- the crop square ---------------------------------------------------------------------------------------------

def test_official_crop_proportions_and_clamping():
    # side 2.0 x the face width; centred on the face horizontally; 55% of the side above the face centre
    assert crop_square(FaceBox(800, 300, 200, 240), 1920, 1080) == (700, 420 - 220, 400)
    assert crop_square(FaceBox(801, 301, 151, 151), 1920, 1080) == (801 + 75.5 - 151, 376.5 - 166.1, 302)[:0] + (
        round(876.5 - 151), round(376.5 - 0.55 * 302), 302)
    # over the top-left corner: shifted inside, the same size
    assert crop_square(FaceBox(10, 10, 100, 100), 1920, 1080) == (0, 0, 200)
    # over the bottom-right corner
    assert crop_square(FaceBox(1850, 1000, 60, 70), 1920, 1080) == (1800, 960, 120)
    # larger than the image: the shorter side, then shifted inside
    assert crop_square(FaceBox(300, 100, 400, 300), 800, 500) == (250, 0, 500)
    with pytest.raises(FaceError, match="too small"):
        crop_square(FaceBox(10, 10, 5, 5), 100, 100)


# --- the paste-back ------------------------------------------------------------------------------------------------

def portrait_and_crop(box=FaceBox(200, 100, 60, 70), feather=0.1, size=(500, 301)) -> tuple[np.ndarray, FaceCrop]:
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return pixels, FaceCrop.around(pixels, box, feather=feather)


def test_paste_back_keeps_the_portrait_outside_the_box_and_the_frame_inside():
    pixels, crop = portrait_and_crop()
    assert (crop.left, crop.top, crop.side) == (170, 69, 120)  # 135 - 0.55 * 120
    colours = torch.tensor([[0.1, 0.5, 0.9], [0.7, 0.2, 0.3]])
    frames = colours[:, None, None, :].expand(2, SIZE, SIZE, 3)  # flat frames: any resize keeps the colour
    out = crop.paste(frames)
    assert out.shape == (2, 301, 500, 3)
    inside = torch.zeros(301, 500, dtype=torch.bool)
    inside[69:189, 170:290] = True
    original = torch.from_numpy(pixels).float() / 255
    assert torch.equal(out[:, ~inside], original[~inside].expand(2, -1, -1))  # exactly the portrait
    feather = round(0.1 * 120)
    core = out[:, 69 + feather:189 - feather, 170 + feather:290 - feather]
    torch.testing.assert_close(core, colours[:, None, None, :].expand_as(core), atol=1e-6, rtol=0)
    # the ring between is a blend, neither the portrait nor the frame
    weight = crop.mask()
    assert weight.shape == (301, 500) and weight[~inside].eq(0).all() and weight[inside].gt(0).all()
    ring = inside & (weight < 1)
    blend = weight[ring][:, None] * colours[0] + (1 - weight[ring][:, None]) * original[ring]
    torch.testing.assert_close(out[0][ring], blend, atol=1e-6, rtol=0)
    # the crop given to the model is the square of the portrait
    assert torch.equal(crop.reference()[0], original[69:189, 170:290])


def test_paste_back_of_real_frames_and_an_edge_on_the_border():
    """Frames of another size are resized onto the square (bilinear, antialiased); a box edge on the image border is
    not feathered, so the frame reaches the border."""
    pixels, crop = portrait_and_crop(FaceBox(5, 5, 60, 60))
    assert (crop.left, crop.top) == (0, 0)
    frames = torch.rand(3, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    out = crop.paste(frames)
    resized = F.interpolate(frames.permute(0, 3, 1, 2), size=(120, 120), mode="bilinear", antialias=True,
                            align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(out[:, :100, :100], resized[:, :100, :100], atol=1e-6, rtol=0)  # top-left: weight 1
    assert crop.mask()[0, :100].eq(1).all() and crop.mask()[:100, 0].eq(1).all()


def test_a_non_square_video_pastes_the_part_of_the_square_it_shows():
    _, crop = portrait_and_crop()
    # a 64x32 (w x h) video shows the square's middle half: rows 30..89 of the 120 rows
    assert crop.region(32, 64) == (69 + 30, 170, 60, 120)
    out = crop.paste(torch.ones(1, 32, 64, 3))
    assert out[0, 69:99, 170:290].lt(1).any() and out[0, 99 + 6:159 - 6, 170 + 6:290 - 6].eq(1).all()


def test_the_mp4_frames_are_even_sized_and_exact_outside():
    pixels, crop = portrait_and_crop()  # 500 x 301: the last row goes
    assert crop.video_size == (500, 300)
    parts = list(crop.video_frames(torch.rand(9, SIZE, SIZE, 3)))
    assert [p.shape for p in parts] == [(4, 300, 500, 3), (4, 300, 500, 3), (1, 300, 500, 3)]
    assert parts[0].dtype == np.uint8 and np.array_equal(parts[2][0, :69], pixels[:69])


def test_bad_feather():
    with pytest.raises(FaceError, match="feather"):
        portrait_and_crop(feather=0.8)


# --- through the pipeline and the command line --------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("lite"), "lite")


def track(samples: np.ndarray) -> dict:
    """A ComfyUI AUDIO dict of 16 kHz mono samples."""
    return {"waveform": torch.from_numpy(samples)[None, None].float(), "sample_rate": 16000}


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_write_talking_video_on_a_large_portrait_writes_the_full_frame(checkpoint, tmp_path):
    pipeline = load_pipeline(checkpoint, variant="lite")
    portrait = on_canvas(astronaut(), 2.0, 700, 100)
    crop = FaceCrop.around(portrait)
    generated = []
    seconds = 1.0
    summary = write_talking_video(pipeline, portrait, track(synthetic_speech(seconds)), tmp_path / "face.mp4",
                                  height=SIZE, width=SIZE, face_crop=crop,
                                  on_frames=lambda frames, *_: generated.append(frames))
    assert summary.face_crop["video_size"] == "1920x1080" and summary.size == f"{SIZE}x{SIZE}"
    video = decoded(tmp_path / "face.mp4")
    assert video.shape == (25, 1080, 1920, 3)
    generated = torch.cat(generated)
    assert generated.shape == (25, SIZE, SIZE, 3)  # the hook still gets the model's frames
    outside = crop.mask().numpy() == 0
    error = np.abs(video.astype(int) - portrait.astype(int))
    assert error[:, outside].mean() < 1.0 and np.percentile(error[:, outside], 99) <= 6  # H.264 error only
    expected = (crop.paste(generated[::8]).numpy() * 255).round()
    inside = np.abs(video[::8].astype(int) - expected)[:, ~outside]
    assert inside.mean() < 5.0  # the generated face, as pasted (measured 3.3: H.264 on noise-like frames)
    assert np.abs(video[:, ~outside].astype(int) - portrait[~outside]).mean() > 20  # and not the portrait


def test_a_crop_of_another_image_fails_before_anything_is_generated(checkpoint, tmp_path):
    pipeline = load_pipeline(checkpoint, variant="lite")
    _, crop = portrait_and_crop()
    steps = []
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FaceError, match="made on a 500x301 portrait but the image is 512x512"):
        write_talking_video(pipeline, astronaut(), track(synthetic_speech(1.0)), out / "x.mp4", height=SIZE,
                            width=SIZE, face_crop=crop, on_step=lambda *a: steps.append(a))
    assert steps == [] and list(out.iterdir()) == []


def test_cli_face_box_and_face_crop(checkpoint, tmp_path, capsys):
    from flashhead_core.tools.cli import main

    Image.fromarray(on_canvas(astronaut(), 1.0, 40, 20, width=641, height=481)).save(tmp_path / "half.png")
    wav = write_wav(tmp_path / "s.wav", synthetic_speech(1.0))
    base = ["generate", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "half.png"), "--audio", str(wav),
            "--size", f"{SIZE}x{SIZE}", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "box.mp4"), "--face-box", "217,86,95,95"]) == 0
    assert "\"box\": [170, 29, 190, 190]" in capsys.readouterr().out  # round(264.5 - 95), 133.5 - 0.55 * 190
    assert decoded(tmp_path / "box.mp4").shape == (25, 480, 640, 3)  # 641x481 made even
    assert main(base + ["--out", str(tmp_path / "auto.mp4"), "--face-crop"]) == 0
    assert '"video_size": "640x480"' in capsys.readouterr().out
    # a box outside the portrait: one error line, exit 1, nothing written
    assert main(base + ["--out", str(tmp_path / "bad.mp4"), "--face-box", "600,86,95,95"]) == 1
    assert "outside the 641x481 portrait" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()
    # a feather without a crop would be ignored: refused instead
    assert main(base + ["--out", str(tmp_path / "feather.mp4"), "--face-feather", "0.2"]) == 1
    assert "add --face-crop" in capsys.readouterr().err and not (tmp_path / "feather.mp4").exists()
    assert issubclass(FaceError, FlashHeadError)


def test_a_face_crop_continues_a_state_and_refuses_a_timeline(checkpoint, tmp_path):
    """Two runs chained by the state give the model frames of one run over both audios (the first ends on a chunk
    boundary), bit for bit: the state's identity is the crop. A timeline with a face crop is refused."""
    from flashhead_core.generation.timeline import Timeline

    pipeline = load_pipeline(checkpoint, variant="lite")
    pixels, crop = portrait_and_crop()
    step = pipeline.model.config.new_frames * 640  # one chunk of 16 kHz samples
    samples = synthetic_speech(2 * step / 16000, seed=3)
    runs = {"whole": [], "first": [], "second": []}
    states = []

    def generate(name, speech, **kwargs):
        write_talking_video(pipeline, pixels, track(speech), tmp_path / f"{name}.mp4", height=SIZE, width=SIZE,
                            seed=7, face_crop=crop, on_frames=lambda frames, *_: runs[name].append(frames), **kwargs)

    generate("whole", samples)
    generate("first", samples[:step], on_state=states.append)
    generate("second", samples[step:], continue_from=states[0])
    assert torch.equal(torch.cat(runs["first"] + runs["second"]), torch.cat(runs["whole"]))
    with pytest.raises(FaceError, match="not a timeline"):
        write_talking_video(pipeline, Timeline.of([(pixels, 0.0)]), track(samples), tmp_path / "t.mp4",
                            height=SIZE, width=SIZE, face_crop=crop)
    assert not (tmp_path / "t.mp4").exists()
