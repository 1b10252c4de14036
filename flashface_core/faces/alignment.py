"""The official FlashFace face crop: box cut-out, rotation by the official angle, 224x224 letterbox.

FlashFace was trained on crops made exactly this way (tight boxes, black corners and bars),
so every step follows the official demo: the detector's box rounded to pixels with no margin
is cut out, rotated about its own centre by the official angle (``official_angle``) keeping its size (PIL's
default nearest-neighbour rotation), resized so the longer side is 224 (bicubic) and padded
with black to 224x224, centred. No ComfyUI imports.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CROP_SIZE = 224


@dataclass(frozen=True)
class CropGeometry:
    """Where one face crop comes from, enough to map points through it."""

    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the photo, rounded
    angle: float  # degrees, counter-clockwise as PIL's Image.rotate takes it
    resized: tuple[int, int]  # width, height after the resize
    offset: tuple[int, int]  # left, top padding in the 224x224 crop


def official_angle(landmarks) -> float:
    """The rotation in degrees (counter-clockwise, as PIL's ``Image.rotate`` takes it) the
    official ``crop_face`` gives the crop, by its own formula.

    The official code finds the angle with the law of cosines on the distances between the
    two eyes and a third point level with one of them, in float32, and turns by it one way or
    the other depending on which eye is lower. For eyes in the usual order (the image's left
    eye first) it is the ``atan2`` eye-line angle; for eyes given mirrored, as random or odd
    weights give them, it differs, and FlashFace's crops follow this formula in every case.
    """
    points = torch.from_numpy(np.asarray(landmarks, dtype=np.float32).reshape(-1, 2))
    left, right = points[0], points[1]
    if left[1] > right[1]:
        third, direction = torch.stack([right[0], left[1]]), -1
    else:
        third, direction = torch.stack([left[0], right[1]]), 1
    # torch's float32 square root, as the official code takes it (numpy's rounds differently).
    a, b, c = ((p - q).square().sum().sqrt().item() for p, q in ((left, third), (right, third), (right, left)))
    if b == 0 or c == 0:
        return 0.0
    angle = math.acos(min(1.0, max(-1.0, (b * b + c * c - a * a) / (2 * b * c)))) * 180 / math.pi
    return direction * (90 - angle if direction == -1 else angle)


def _fitted_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def crop_geometry(box, landmarks, size: int = CROP_SIZE, angle: float | None = None) -> CropGeometry:
    """The official crop's parameters for one detected face; ``angle`` replaces the official one
    (a straightening pass measured it better)."""
    x1, y1, x2, y2 = (round(float(v)) for v in box[:4])
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"Face box {tuple(float(v) for v in box[:4])} is empty after rounding to pixels.")
    resized = _fitted_size(x2 - x1, y2 - y1, size)
    offset = ((size - resized[0]) // 2, (size - resized[1]) // 2)
    angle = official_angle(landmarks) if angle is None else angle
    return CropGeometry((x1, y1, x2, y2), angle, resized, offset)


def fit_to_square(image: Image.Image, size: int = CROP_SIZE) -> Image.Image:
    """Resize so the longer side is ``size`` (bicubic) and pad black to a centred square."""
    resized_size = _fitted_size(image.width, image.height, size)
    resized = image.resize(resized_size, Image.Resampling.BICUBIC)
    square = Image.new("RGB", (size, size))
    square.paste(resized, ((size - resized_size[0]) // 2, (size - resized_size[1]) // 2))
    return square


def align_face(image: Image.Image, box, landmarks, size: int = CROP_SIZE, angle: float | None = None) -> Image.Image:
    """The official crop of one face from an RGB photo: a ``size`` x ``size`` RGB image.

    A box reaching past the photo's edge is cut out with black where the photo ends, as
    PIL's ``crop`` does in the official demo.
    """
    geometry = crop_geometry(box, landmarks, size, angle)
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
