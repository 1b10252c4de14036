"""The official FlashFace face crop: box cut-out, eye-line rotation, 224x224 letterbox.

FlashFace was trained on crops made exactly this way (tight boxes, black corners and bars),
so every step follows the official demo: the detector's box rounded to pixels with no margin
is cut out, rotated about its own centre by the eye-line angle keeping its size (PIL's
default nearest-neighbour rotation), resized so the longer side is 224 (bicubic) and padded
with black to 224x224, centred. Pure numpy and PIL: no ComfyUI imports.
"""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

CROP_SIZE = 224


@dataclass(frozen=True)
class CropGeometry:
    """Where one face crop comes from, enough to map points through it."""

    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the photo, rounded
    angle: float  # degrees, counter-clockwise as PIL's Image.rotate takes it
    resized: tuple[int, int]  # width, height after the resize
    offset: tuple[int, int]  # left, top padding in the 224x224 crop


def eye_line_angle(landmarks) -> float:
    """Angle in degrees of the line from the first eye landmark to the second.

    Landmarks are the detectors' five points: the eye on the image's left, the eye on the
    image's right, nose, mouth left, mouth right. With y pointing down, a positive angle
    means the right-hand eye sits lower; PIL's ``rotate`` turns counter-clockwise for a
    positive angle, which lifts it back level.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    (lx, ly), (rx, ry) = points[0], points[1]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def _fitted_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def crop_geometry(box, landmarks, size: int = CROP_SIZE) -> CropGeometry:
    """The official crop's parameters for one detected face."""
    x1, y1, x2, y2 = (round(float(v)) for v in box[:4])
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"Face box {tuple(float(v) for v in box[:4])} is empty after rounding to pixels.")
    resized = _fitted_size(x2 - x1, y2 - y1, size)
    offset = ((size - resized[0]) // 2, (size - resized[1]) // 2)
    return CropGeometry((x1, y1, x2, y2), eye_line_angle(landmarks), resized, offset)


def fit_to_square(image: Image.Image, size: int = CROP_SIZE) -> Image.Image:
    """Resize so the longer side is ``size`` (bicubic) and pad black to a centred square."""
    resized_size = _fitted_size(image.width, image.height, size)
    resized = image.resize(resized_size, Image.Resampling.BICUBIC)
    square = Image.new("RGB", (size, size))
    square.paste(resized, ((size - resized_size[0]) // 2, (size - resized_size[1]) // 2))
    return square


def align_face(image: Image.Image, box, landmarks, size: int = CROP_SIZE) -> Image.Image:
    """The official crop of one face from an RGB photo: a ``size`` x ``size`` RGB image.

    A box reaching past the photo's edge is cut out with black where the photo ends, as
    PIL's ``crop`` does in the official demo.
    """
    geometry = crop_geometry(box, landmarks, size)
    face = image.convert("RGB").crop(geometry.box)
    face = face.rotate(geometry.angle)
    return fit_to_square(face, size)


def transform_points(points, geometry: CropGeometry) -> np.ndarray:
    """Map photo coordinates (e.g. the detected landmarks) to coordinates in the crop."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x1, y1, x2, y2 = geometry.box
    width, height = x2 - x1, y2 - y1
    centre = np.array([width / 2.0, height / 2.0])
    local = points - np.array([x1, y1], dtype=np.float64) - centre
    # Image.rotate(angle) turns the picture counter-clockwise on screen (y down).
    theta = math.radians(geometry.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    rotated = np.stack([cos * local[:, 0] + sin * local[:, 1], -sin * local[:, 0] + cos * local[:, 1]], axis=1)
    rotated += centre
    scale = np.array([geometry.resized[0] / width, geometry.resized[1] / height])
    return rotated * scale + np.array(geometry.offset, dtype=np.float64)
