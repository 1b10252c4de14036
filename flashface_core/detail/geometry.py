"""Where a face's detail crop lies in its image, and the feathered mask that blends it back.

All of it is in the image's own pixels. A crop is a square of ``context`` times the face's
longer side, centred on the face and moved inside the image where it fits; where the image is
smaller than the square, the square runs past its border (that part of the crop is padded and
never pasted back). The blend mask is 1 on the face box grown by ``grow`` and falls linearly to
0 over ``feather`` pixels around it; it is 0 on the square's border and outside the image, so a
pasted crop leaves no seam and no pixel outside the mask changes. The crop node and the stitch
read the mask from these numbers, each at its own resolution, so neither resamples the other's.
"""

from dataclasses import dataclass

import torch

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def _clamped(start: int, side: int, size: int) -> int:
    """``start`` moved so the square [start, start + side) lies inside [0, size) where it fits,
    else so it covers all of it."""
    low, high = min(0, size - side), max(0, size - side)
    return min(max(start, low), high)


@dataclass(frozen=True)
class FaceCrop:
    """One face's crop of image ``image_index`` (a ``height`` x ``width`` image)."""

    image_index: int
    height: int
    width: int
    left: int  # the square [left, left + side) x [top, top + side), in image pixels
    top: int
    side: int
    face: Box  # the detected face box, in image pixels
    blend: Box  # where the mask is 1, in image pixels
    feather: float  # in image pixels

    @classmethod
    def around(cls, image_index: int, height: int, width: int, face: Box, context: float, grow: float,
               feather_fraction: float) -> "FaceCrop":
        """The crop of ``face``: the square of ``context`` times its longer side, the mask of the face
        grown by ``grow`` with a feather of ``feather_fraction`` of the square's side."""
        x1, y1, x2, y2 = face
        centre_x, centre_y, face_side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
        side = max(8, round(context * face_side))
        left = _clamped(round(centre_x - side / 2), side, width)
        top = _clamped(round(centre_y - side / 2), side, height)
        feather = feather_fraction * side
        half = grow * face_side / 2
        # The mask's 1 region keeps a feather's width inside the square, so the mask is 0 at its border.
        blend = (max(centre_x - half, left + feather), max(centre_y - half, top + feather),
                 min(centre_x + half, left + side - feather), min(centre_y + half, top + side - feather))
        return cls(image_index, height, width, left, top, side, tuple(float(v) for v in face), blend, feather)

    def face_in_crop(self) -> Box:
        """The face box as fractions of the crop."""
        x1, y1, x2, y2 = self.face
        return tuple(min(1.0, max(0.0, v)) for v in ((x1 - self.left) / self.side, (y1 - self.top) / self.side,
                                                    (x2 - self.left) / self.side, (y2 - self.top) / self.side))

    def in_image(self) -> tuple[slice, slice]:
        """The rows and columns of the image the square covers."""
        return (slice(max(self.top, 0), min(self.top + self.side, self.height)),
                slice(max(self.left, 0), min(self.left + self.side, self.width)))

    def _points(self, size: int, start: int) -> torch.Tensor:
        """The image coordinates of the centres of a ``size``-pixel crop's pixels along one axis."""
        return start + (torch.arange(size, dtype=torch.float64) + 0.5) * (self.side / size)

    def _weights(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """The blend weight at the image points (xs[j], ys[i]): 0 outside the image."""
        x1, y1, x2, y2 = self.blend
        dx = torch.clamp(torch.maximum(x1 - xs, xs - x2), min=0)
        dy = torch.clamp(torch.maximum(y1 - ys, ys - y2), min=0)
        distance = torch.hypot(dy[:, None].expand(-1, len(xs)), dx[None, :].expand(len(ys), -1))
        weights = torch.clamp(1 - distance / self.feather, 0, 1) if self.feather > 0 else (distance == 0).double()
        inside = ((ys >= 0) & (ys < self.height))[:, None] & ((xs >= 0) & (xs < self.width))[None, :]
        return (weights * inside).float()

    def crop_mask(self, size: int) -> torch.Tensor:
        """[size, size]: the blend mask over the crop at ``size`` pixels."""
        return self._weights(self._points(size, self.left), self._points(size, self.top))

    def image_mask(self) -> torch.Tensor:
        """The blend mask over the image pixels ``in_image()`` covers."""
        rows, cols = self.in_image()
        xs = torch.arange(cols.start, cols.stop, dtype=torch.float64) + 0.5
        ys = torch.arange(rows.start, rows.stop, dtype=torch.float64) + 0.5
        return self._weights(xs, ys)

    def face_mask(self, size: int) -> torch.Tensor:
        """[size, size]: 1 on the crop's pixels whose centres lie in the face box (the face-position channel)."""
        x1, y1, x2, y2 = self.face
        xs, ys = self._points(size, self.left), self._points(size, self.top)
        return (((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]).float()
