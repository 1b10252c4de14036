"""The detail nodes' menus, as enums whose values are the labels saved graphs hold (they never change)."""

from ..contract import MenuChoice


class FaceSelection(MenuChoice):
    LARGEST = "largest"
    BY_INDEX = "by index (left to right)"
    ALL = "all"
    ALL_ABOVE_SIZE = "all above min_face_size"


class NoFaceFound(MenuChoice):
    KEEP = "keep the image"
    ERROR = "error"
