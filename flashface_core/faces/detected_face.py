"""A detected face, as every detector backend reports it."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    """One face in photo pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: np.ndarray  # [5, 2] x, y
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0
