"""The face-position mask: FlashFace's fifth U-Net input channel.

The official demo marks a square of side max(w, h) whose top-left corner is the box's
(x1, y1), in pixels (``int(fraction * size)``), and feeds it at latent resolution by taking
every 8th pixel. (The demo's code computes the width as ``x2 - y1``; we follow the
documented square of side ``max(x2 - x1, y2 - y1)``.) An all-zero box means "no constraint".
"""

import math

import torch

LATENT_STRIDE = 8


def validate_face_box(box, what: str = "Face box", zeros: str = "no constraint") -> tuple[float, float, float, float]:
    """Return the box as floats, or raise with a message that says what to fix (``what`` names
    the box, ``zeros`` what all zeros mean for it)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if (x1, y1, x2, y2) == (0.0, 0.0, 0.0, 0.0):
        return x1, y1, x2, y2
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        raise ValueError(f"{what} {box} must use fractions of the image between 0 and 1.")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{what} {box} is empty: it needs x2 > x1 and y2 > y1 (or all zeros for {zeros}).")
    return x1, y1, x2, y2


def face_box_mask(box, latent_height: int, latent_width: int) -> torch.Tensor:
    """The [latent_height, latent_width] mask for a face box given as image fractions."""
    x1, y1, x2, y2 = validate_face_box(box)
    mask = torch.zeros(latent_height, latent_width)
    if (x1, y1, x2, y2) == (0.0, 0.0, 0.0, 0.0):
        return mask
    height, width = latent_height * LATENT_STRIDE, latent_width * LATENT_STRIDE
    left, top = int(x1 * width), int(y1 * height)
    side = max(int(x2 * width) - left, int(y2 * height) - top)
    rows = slice(math.ceil(top / LATENT_STRIDE), math.ceil(min(top + side, height) / LATENT_STRIDE))
    cols = slice(math.ceil(left / LATENT_STRIDE), math.ceil(min(left + side, width) / LATENT_STRIDE))
    mask[rows, cols] = 1.0
    return mask


def resize_face_mask(mask: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """A user MASK ([H, W] or [B, H, W], any resolution) at latent resolution, as [B, H, W].

    A mask the size of the image is read at every 8th pixel, as the demo reads its mask; one
    the size of the latent is used as it is. Any other size is first resized to the image
    bilinearly, as ComfyUI resizes the masks of its own nodes (SetLatentNoiseMask,
    ImageCompositeMasked), so one painted on a photo of another size still fits.
    """
    if mask.ndim == 2:
        mask = mask[None]
    mask = mask.float()
    if mask.shape[-2:] == (latent_height, latent_width):
        return mask
    size = (latent_height * LATENT_STRIDE, latent_width * LATENT_STRIDE)
    if mask.shape[-2:] != size:
        mask = torch.nn.functional.interpolate(mask[:, None], size=size, mode="bilinear")[:, 0]
    return mask[:, ::LATENT_STRIDE, ::LATENT_STRIDE]


def check_face_mask(mask: torch.Tensor):
    """Raise, saying what to do, for a MASK that cannot say where the face goes."""
    if mask.ndim not in (2, 3):
        raise ValueError(f"The face mask must be [H, W] or [B, H, W]; got shape {tuple(mask.shape)}.")
    if not mask.any():
        height, width = mask.shape[-2:]
        raise ValueError(
            f"The face mask is empty ({width}x{height}, all zeros): the photo has no painted mask (Load Image gives "
            "an empty 64x64 mask then). Right-click the photo's Load Image node > Open in MaskEditor, paint over the "
            "face and save; or load a PNG whose transparent pixels cover the face."
        )


class FacePosition:
    """Where the face goes: a box as image fractions, or a MASK; None of either = anywhere."""

    def __init__(self, box=None, mask: torch.Tensor | None = None):
        self.box = validate_face_box(box) if box is not None else None
        if mask is not None:
            check_face_mask(mask)
        self.mask = mask

    def latent_mask(self, latent_height: int, latent_width: int) -> torch.Tensor:
        """The mask channel as [B, latent_height, latent_width] (B = 1 for a box)."""
        if self.mask is not None:
            return resize_face_mask(self.mask, latent_height, latent_width)
        if self.box is not None:
            return face_box_mask(self.box, latent_height, latent_width)[None]
        return torch.zeros(1, latent_height, latent_width)

    def __deepcopy__(self, memo):
        return self


def face_position(box=None, mask: torch.Tensor | None = None) -> FacePosition | None:
    """A node's face box and face mask as a FacePosition; None when neither says where the face
    goes (no box, or all four at 0, and no mask)."""
    box = None if box is None or all(v == 0 for v in box) else box
    return FacePosition(box=box, mask=mask) if (box is not None or mask is not None) else None
