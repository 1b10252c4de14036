"""Input specs shared by several FlashFace nodes, so their widgets and tooltips stay alike."""

_BOX = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}

FACE_POSITION = {
    "face_x1": ("FLOAT", {**_BOX, "tooltip": "Face box left edge as a fraction of the width. All four at 0 = face anywhere."}),
    "face_y1": ("FLOAT", {**_BOX, "tooltip": "Face box top edge as a fraction of the height."}),
    "face_x2": ("FLOAT", {**_BOX, "tooltip": "Face box right edge; the face goes in the square of side max(width, height) at (x1, y1)."}),
    "face_y2": ("FLOAT", {**_BOX, "tooltip": "Face box bottom edge. Official suggestion: 0.3, 0.2, 0.6, 0.5."}),
}

FACE_MASK = {
    "face_mask": ("MASK", {"tooltip": "Where the face goes, instead of the box: a mask painted on the photo (Load Image > Open in MaskEditor); another size is resized to the image."}),
}

FLASHFACE_MODEL = ("MODEL", {"tooltip": "The MODEL from LoadFlashFace (LoRA loaders and other patches may sit in between)."})
REFERENCES = ("FLASHFACE_REFERENCES", {"tooltip": "The reference faces from FlashFace Encode Reference Faces."})


def strength(default: float, tooltip: str):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip": tooltip})
