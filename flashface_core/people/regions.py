"""Where each person is: region weights at latent resolution, their defaults, and the face channel.

A region is a box (four fractions of the image) or a MASK. Each latent pixel gets one weight
per person; where regions overlap and their weights sum above one they are divided by their
sum, so a token never takes more than one person's worth of references. A person without a
region takes the part of the image closer to their face than to anyone else's (the whole
image when they are alone); latent pixels at the same distance from two faces are shared.
"""

import logging

import torch
import torch.nn.functional as F

from ..model.face_position import validate_face_box

logger = logging.getLogger(__name__)


def _coverage(start: float, end: float, cells: int) -> torch.Tensor:
    """How much of each of ``cells`` unit cells lies in [start, end) (fractions of ``cells``)."""
    edges = torch.arange(cells, dtype=torch.float32)
    return (torch.clamp(torch.minimum(edges + 1, torch.tensor(end * cells)) - torch.maximum(edges, torch.tensor(start * cells)), 0, 1))


class Region:
    """A person's region: ``box`` as image fractions, or ``mask`` ([H, W] or [B, H, W], any size)."""

    def __init__(self, box=None, mask: torch.Tensor | None = None, what: str = "region"):
        if (box is None) == (mask is None):
            raise ValueError("A region is a box or a mask.")
        self.box = validate_face_box(box, f"The {what} box", "the default region") if box is not None else None
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3)):
            raise ValueError(f"The {what} mask must be a MASK [H, W] or [B, H, W]; got {tuple(getattr(mask, 'shape', ()))}.")
        self.mask = mask

    @property
    def batch(self) -> int:
        return self.mask.shape[0] if self.mask is not None and self.mask.ndim == 3 else 1

    def latent_weights(self, height: int, width: int) -> torch.Tensor:
        """[B, height, width] weights in 0..1: a box by how much of each latent pixel it covers,
        a mask resized to the latent bilinearly, as ComfyUI resizes a conditioning mask."""
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            return (_coverage(y1, y2, height)[:, None] * _coverage(x1, x2, width)[None, :])[None]
        mask = self.mask if self.mask.ndim == 3 else self.mask[None]
        mask = mask.float().cpu()
        if mask.shape[-2:] != (height, width):
            mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]
        return mask.clamp(0.0, 1.0)

    def __deepcopy__(self, memo):
        return self


def region_of(box, mask: torch.Tensor | None) -> Region | None:
    """A Person node's region: its mask, else its box; None (the default region) for a box of zeros."""
    if mask is not None:
        return Region(mask=mask)
    return None if all(v == 0 for v in box) else Region(box=box)


def _batched(weights: torch.Tensor, batch: int) -> torch.Tensor:
    return weights if weights.shape[0] == batch else weights.expand(batch, -1, -1)


def _face_distances(face: torch.Tensor) -> torch.Tensor:
    """[B, H, W]: each latent pixel's distance to the bounding box of the marked face pixels
    (inf where a batch item marks none)."""
    batch, height, width = face.shape
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    out = torch.full((batch, height, width), float("inf"))
    for b in range(batch):
        marked = (face[b] > 0).nonzero()
        if marked.numel() == 0:
            continue
        (top, left), (bottom, right) = marked.min(0).values.float(), marked.max(0).values.float() + 1
        dy = torch.clamp(torch.maximum(top - rows, rows - bottom), min=0)
        dx = torch.clamp(torch.maximum(left - cols, cols - right), min=0)
        out[b] = torch.hypot(dy.expand(height, width), dx.expand(height, width))
    return out


def _check_batches(people, latent_batch: int):
    for index, person in enumerate(people):
        for what, thing in (("region mask", person.region), ("face mask", person.face_position)):
            mask = getattr(thing, "mask", None)
            if mask is not None and mask.ndim == 3 and mask.shape[0] not in (1, latent_batch):
                raise ValueError(
                    f"Person {index + 1}'s {what} is a batch of {mask.shape[0]}, but the latent is a batch of "
                    f"{latent_batch}: give one mask, or one per latent."
                )


def region_weights(people, latent_batch: int, height: int, width: int) -> torch.Tensor:
    """[B, len(people), height, width] region weights (B is 1 or ``latent_batch``), normalised
    where they overlap. Raises, naming the person, for what cannot give a region."""
    _check_batches(people, latent_batch)
    if len(people) == 1 and people[0].region is None:
        return torch.ones(1, 1, height, width)
    faces = [p.face_position.latent_mask(height, width) if p.face_position is not None else None for p in people]
    batch = max([1] + [w.shape[0] for w in faces if w is not None]
                + [p.region.batch for p in people if p.region is not None])
    distances = [_batched(_face_distances(face), batch) if face is not None else None for face in faces]
    known = [d for d in distances if d is not None]
    nearest = torch.stack(known).min(0).values if known else None
    weights = []
    for index, person in enumerate(people):
        if person.region is not None:
            weights.append(_batched(person.region.latent_weights(height, width), batch))
            continue
        if distances[index] is None:
            raise ValueError(
                f"Person {index + 1} has no region and no face box: with several people, give each a region (box or "
                "region_mask) or a face box, so they get the part of the image nearest their face."
            )
        closest = (distances[index] == nearest) & torch.isfinite(nearest)
        ties = sum((d == nearest).float() for d in known)
        weights.append(closest.float() / ties.clamp(min=1))
    weights = torch.stack(weights, dim=1)
    total = weights.sum(1, keepdim=True)
    weights = torch.where(total > 1, weights / total.clamp(min=1e-12), weights)
    if not weights.any():
        raise ValueError(
            "Every person's region is empty (all zeros at the latent's size): paint the region masks or set the "
            "region boxes where the people should be."
        )
    for index in range(len(people)):
        if not weights[:, index].any():
            logger.warning("FlashFace: person %d's region is empty; they are left out of the picture.", index + 1)
    return weights


def block_weights(latent_weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, k, height * width]: latent region weights at an attention block's resolution."""
    if latent_weights.shape[-2:] != (height, width):
        latent_weights = F.interpolate(latent_weights, size=(height, width), mode="bilinear")
    return latent_weights.flatten(2)


class FacePositions:
    """The face-position channel of several people: the union (maximum) of their face masks."""

    def __init__(self, positions):
        self.positions = tuple(positions)

    def latent_mask(self, latent_height: int, latent_width: int) -> torch.Tensor:
        masks = [p.latent_mask(latent_height, latent_width) for p in self.positions]
        batch = max(m.shape[0] for m in masks)
        return torch.stack([_batched(m, batch) for m in masks]).max(0).values

    def __deepcopy__(self, memo):
        return self



def people_in_picture(people, latent_batch: int, height: int, width: int):
    """For one sampling run: the people whose region is not empty, their region weights
    ([B, k, height, width]; None for one person on the whole image, today's path) and the
    face-position channel (None when no one has a face position)."""
    if len(people) == 1 and people[0].region is None:
        return people, None, people[0].face_position
    weights = region_weights(people, latent_batch, height, width)
    present = [i for i in range(len(people)) if weights[:, i].any()]
    people = tuple(people[i] for i in present)
    positions = [p.face_position for p in people if p.face_position is not None]
    return people, weights[:, present], FacePositions(positions) if positions else None
