"""The detail nodes' menus, as enums whose values are the labels saved graphs hold (they never change)."""

from ..contract import MenuChoice
from ..faces.choices import FaceChoice


class FaceSelection(MenuChoice):
    LARGEST = FaceChoice.LARGEST.value  # these two as the reference encoder's face_choice
    BY_INDEX = FaceChoice.BY_INDEX.value
    ALL = "all"
    ALL_ABOVE_SIZE = "all above min_face_size"


class NoFaceFound(MenuChoice):
    KEEP = "keep the image"
    ERROR = "error"
