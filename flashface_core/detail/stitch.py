"""Putting regenerated face crops back into the image they were cut from.

Each crop is resized back to its square (``resample.resize``) and blended in
through its feathered mask, worked out again at the image's own pixels (``geometry.py``):
a pixel whose mask is 0 keeps the original's value exactly. Crops of one image go back in
order, so where two crops overlap the later face is blended over the earlier.
"""

import torch

from .crop import DetailStitch
from .resample import resize


def check_stitch(images, regenerated, stitch) -> None:
    """Raise, saying what to connect, for inputs that do not belong to one another."""
    if not isinstance(stitch, DetailStitch):
        raise ValueError("The stitch input takes the stitch output of FlashFace Crop Faces.")
    for name, value in (("image", images), ("crops", regenerated)):
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[-1] not in (3, 4):
            raise ValueError(f"The {name} input must be a ComfyUI IMAGE [N, H, W, 3]; got "
                             f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}.")
    batch, height, width = images.shape[:3]
    if (batch, height, width) != (stitch.batch, stitch.height, stitch.width):
        raise ValueError(
            f"The stitch data was made from a batch of {stitch.batch} {stitch.width}x{stitch.height} image(s), but the "
            f"image to stitch into is a batch of {batch} {width}x{height}: connect the image FlashFace Crop Faces cut "
            "the crops from.")
    crops = max(1, len(stitch.crops))
    if regenerated.shape[0] != crops or regenerated.shape[1] != regenerated.shape[2]:
        raise ValueError(
            f"FlashFace Crop Faces cut {crops} square crop(s), but the crops to stitch are a batch of "
            f"{regenerated.shape[0]} {regenerated.shape[2]}x{regenerated.shape[1]}: connect the decoded crops of "
            "that node's crops, in their order (crop batch sizes and order must stay as they were).")


def stitch(images: torch.Tensor, regenerated: torch.Tensor, data: DetailStitch) -> torch.Tensor:
    """``images`` with each crop of ``regenerated`` blended back where it was cut."""
    check_stitch(images, regenerated, data)
    if not data.crops:
        return images
    out = images.clone()
    for crop, pixels in zip(data.crops, regenerated):
        back = resize(pixels[..., :3], crop.side, crop.side).to(images.device)
        rows, cols = crop.in_image()
        inside = back[rows.start - crop.top:rows.stop - crop.top, cols.start - crop.left:cols.stop - crop.left]
        mask = crop.image_mask().to(images.device)[..., None]
        target = out[crop.image_index, rows, cols, :3]
        blended = torch.lerp(target.float(), inside, mask).to(out.dtype)
        out[crop.image_index, rows, cols, :3] = torch.where(mask > 0, blended, target)
    return out
