"""A person: their reference faces, where they are in the picture, and their own feature strength.

People travel between nodes as ``FlashFacePeople`` (socket ``FLASHFACE_PEOPLE``), built one
person at a time by chained FlashFace Person nodes. A plain ``FlashFaceReferences`` on a
sampler is one person whose region is the whole image, exactly as before people existed.
"""

from dataclasses import dataclass

from ..model.face_position import FacePosition
from ..model.references import FlashFaceReferences
from .regions import Region


@dataclass(frozen=True)
class Person:
    """One identity: ``region`` None takes the default region (``regions.region_weights``);
    ``strength_scale`` multiplies the sampler's reference feature strength for this person."""

    references: FlashFaceReferences
    region: Region | None = None
    face_position: FacePosition | None = None
    strength_scale: float = 1.0

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class FlashFacePeople:
    """The people of one picture, in the order their Person nodes were chained."""

    people: tuple[Person, ...]

    def __len__(self):
        return len(self.people)

    def __deepcopy__(self, memo):
        return self


def describe(index: int) -> str:
    return f"person {index + 1}"


def add_person(earlier: "FlashFacePeople | None", references, region: Region | None, face_position: FacePosition | None,
               strength_scale: float) -> FlashFacePeople:
    """``earlier`` people and one more, checked: references of the pack's type, a face box no
    other person has."""
    people = earlier.people if earlier is not None else ()
    if earlier is not None and not isinstance(earlier, FlashFacePeople):
        raise ValueError("The people input takes the people output of another FlashFace Person node.")
    name = describe(len(people))
    if not isinstance(references, FlashFaceReferences):
        raise ValueError(
            f"FlashFace Person ({name}) has no reference faces: connect the references output of FlashFace Encode "
            "Reference Faces or FlashFace Load Identity."
        )
    box = face_position.box if face_position is not None else None
    for index, other in enumerate(people):
        other_box = other.face_position.box if other.face_position is not None else None
        if box is not None and box == other_box:
            raise ValueError(
                f"FlashFace Person: {name} has the same face box as {describe(index)} {box}; two faces cannot go in "
                "one place. Move one of the face boxes."
            )
    return FlashFacePeople(people + (Person(references, region, face_position, float(strength_scale)),))


def one_person(references: FlashFaceReferences, face_position: FacePosition | None) -> tuple[Person, ...]:
    """The people of a sampler given plain references: one person, the whole image."""
    return (Person(references, None, face_position),)
