"""The official face crop, checked on drawn images (numpy and PIL only)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from comfyui_flashface.flashface_core.faces import alignment as face_alignment

LANDMARKS = np.array([[150.0, 120.0], [250.0, 150.0], [200.0, 180.0], [165.0, 220.0], [240.0, 228.0]])
BOX = (100.0, 50.0, 300.0, 250.0)


def _dot_centre(crop: np.ndarray, channel: int) -> np.ndarray:
    weight = crop[..., channel].astype(np.float64) * (crop.sum(axis=2) - crop[..., channel] < 60)
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_official_angle_sign():
    assert face_alignment.official_angle([[0, 0], [10, 0]]) == 0
    # Right-hand eye lower on screen (y down): positive, PIL rotates it back counter-clockwise.
    assert face_alignment.official_angle([[0, 0], [10, 10]]) == pytest.approx(45)
    assert face_alignment.official_angle([[0, 10], [10, 0]]) == pytest.approx(-45)


@pytest.mark.parametrize(
    "eyes, official, atan2",
    [
        ([[10, 0], [0, 10]], 45, 135),  # mirrored eyes, the first one higher
        ([[10, 10], [0, 0]], -45, -135),  # mirrored eyes, the first one lower
        ([[0, 0], [0, 10]], 0, 90),  # one above the other: the official code does not turn
        ([[0, 10], [0, 0]], -90, -90),
    ],
)
def test_official_angle_follows_the_law_of_cosines_not_atan2(eyes, official, atan2):
    """The official crop_face formula differs from the eye-line angle when the eyes come mirrored."""
    points = np.asarray(eyes, dtype=np.float64)
    (lx, ly), (rx, ry) = points
    assert np.degrees(np.arctan2(ry - ly, rx - lx)) == pytest.approx(atan2)
    assert face_alignment.official_angle(eyes) == pytest.approx(official)


def test_dots_drawn_at_the_eyes_land_where_transform_points_says_and_level():
    photo = Image.new("RGB", (400, 300))
    draw = ImageDraw.Draw(photo)
    for (x, y), colour in zip(LANDMARKS[:2], ((255, 0, 0), (0, 255, 0)), strict=True):
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
    crop = np.asarray(face_alignment.align_face(photo, BOX, LANDMARKS))
    assert crop.shape == (224, 224, 3)

    expected = face_alignment.transform_points(LANDMARKS, face_alignment.crop_geometry(BOX, LANDMARKS))
    found = np.stack([_dot_centre(crop, 0), _dot_centre(crop, 1)])
    np.testing.assert_allclose(found, expected[:2], atol=1.5)
    assert abs(found[1, 1] - found[0, 1]) < 0.02 * 224
    assert abs(expected[1, 1] - expected[0, 1]) < 1e-4  # the official angle is worked out in float32


def test_crop_follows_the_official_steps_exactly():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    box = (80.4, 40.6, 250.5, 290.2)
    geometry = face_alignment.crop_geometry(box, LANDMARKS)
    assert geometry.box == (80, 41, 250, 290)  # rounded, no margin

    cut = photo.crop(geometry.box).rotate(geometry.angle)
    resized = cut.resize((153, 224), Image.Resampling.BICUBIC)
    expected = Image.new("RGB", (224, 224))
    expected.paste(resized, (35, 0))
    assert geometry.resized == (153, 224) and geometry.offset == (35, 0)
    np.testing.assert_array_equal(np.asarray(face_alignment.align_face(photo, box, LANDMARKS)), np.asarray(expected))


def test_tall_box_gets_black_side_bars_and_rotation_black_corners():
    photo = Image.new("RGB", (400, 400), (255, 255, 255))
    level = [[150.0, 150.0], [250.0, 150.0]]
    crop = np.asarray(face_alignment.align_face(photo, (150, 100, 250, 300), level))
    assert crop[:, :56].max() == 0 and crop[:, 168:].max() == 0
    assert crop[:, 60:164].min() == 255

    tilted = np.asarray(face_alignment.align_face(photo, (100, 100, 300, 300), [[150, 150], [250, 200]]))
    assert tilted[0, 0].max() == 0 and tilted[112, 112].min() == 255


def test_box_past_the_photo_edge_is_black_where_the_photo_ends():
    photo = Image.new("RGB", (200, 200), (255, 255, 255))
    crop = np.asarray(face_alignment.align_face(photo, (-100, 0, 100, 200), [[0, 80], [60, 80]]))
    assert crop[:, :100].max() == 0 and crop[:, 124:].min() == 255


def test_fit_to_square_letterboxes_wide_images():
    square = face_alignment.fit_to_square(Image.new("RGB", (448, 224), (255, 255, 255)))
    pixels = np.asarray(square)
    assert square.size == (224, 224)
    assert pixels[:56].max() == 0 and pixels[168:].max() == 0 and pixels[56:168].min() == 255


def test_empty_box_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        face_alignment.crop_geometry((10.2, 10, 10.4, 50), LANDMARKS)


def test_face_box_mask_worked_example():
    """[0.3, 0.2, 0.6, 0.5] at 768x768: pixels x 230.., y 153.., side max(230, 231) = 231, every 8th pixel."""
    from comfyui_flashface.flashface_core.model.face_position import face_box_mask

    mask = face_box_mask((0.3, 0.2, 0.6, 0.5), 96, 96)
    rows, cols = mask.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (20, 47, 29, 57)
    assert float(mask.sum()) == 28 * 29  # rows 160..376 and columns 232..456 in pixels
    assert not face_box_mask((0.0, 0.0, 0.0, 0.0), 96, 96).any()
