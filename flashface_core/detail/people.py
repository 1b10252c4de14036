"""Whose references each face is regenerated with, and those people placed on the crops.

With one person (plain references), every chosen face is that person's. With several people
(FlashFace Person nodes, the chain that made the picture), each face goes to the person whose
region holds most of it, the regions read at the image's latent size as the sampler reads
them; a face in nobody's region is left as it is. The crops then carry their people as a
FlashFacePeople whose region and face masks are batches, one row per crop, so each crop reads
only its own person's references, all in one sampler call.
"""

import torch

from ..model.face_position import LATENT_STRIDE, FacePosition
from ..people.person import FlashFacePeople, Person
from ..people.regions import Region, region_weights
from .geometry import FaceCrop


def _cells(start: float, end: float, total: int, cells: int) -> slice:
    first = min(cells - 1, int(start / total * cells))
    return slice(first, max(first + 1, round(end / total * cells)))


def owners(people: tuple[Person, ...], crops: list[FaceCrop], batch: int, height: int, width: int) -> list[int | None]:
    """For each crop, the index of the person whose region holds most of its face (None: nobody's)."""
    if len(people) == 1 and people[0].region is None:
        return [0] * len(crops)
    cells_y, cells_x = max(1, round(height / LATENT_STRIDE)), max(1, round(width / LATENT_STRIDE))
    weights = region_weights(people, batch, cells_y, cells_x)
    found = []
    for crop in crops:
        x1, y1, x2, y2 = crop.face
        held = weights[min(crop.image_index, weights.shape[0] - 1), :, _cells(y1, y2, height, cells_y),
                       _cells(x1, x2, width, cells_x)].mean((-2, -1))
        found.append(int(held.argmax()) if held.max() > 0 else None)
    return found


def crop_people(people: tuple[Person, ...], crop_owners: list[int], face_masks: torch.Tensor) -> FlashFacePeople:
    """The people of the crops (row i of ``face_masks`` is crop i's face, ``crop_owners[i]`` its person).
    Without crops (the crop node's filler, whose mask is empty) the first person, anywhere."""
    if not crop_owners:
        return FlashFacePeople((Person(people[0].references, strength_scale=people[0].strength_scale),))
    present = sorted(set(crop_owners))
    if len(present) == 1:
        person = people[present[0]]
        return FlashFacePeople((Person(person.references, None, FacePosition(mask=face_masks), person.strength_scale),))
    placed = []
    for index in present:
        rows = torch.tensor([owner == index for owner in crop_owners], dtype=torch.float32)[:, None, None]
        person = people[index]
        placed.append(Person(person.references, Region(mask=rows.expand_as(face_masks).contiguous()),
                             FacePosition(mask=face_masks * rows), person.strength_scale))
    return FlashFacePeople(tuple(placed))
