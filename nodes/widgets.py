"""Inputs shared by several FlashFace nodes, so their widgets and tooltips stay alike, and the pack's socket type."""

from comfy_api.v0_0_2 import io

# The socket between Encode Reference Faces and the nodes that read the faces.
References = io.Custom("FLASHFACE_REFERENCES")
# Several people, each with their references and region, chained by FlashFace Person nodes.
People = io.Custom("FLASHFACE_PEOPLE")


def flashface_model() -> io.Model.Input:
    return io.Model.Input("model", tooltip="The MODEL from LoadFlashFace (LoRA loaders and other patches may sit in between).")


def references(optional: bool = False, tooltip: str = "The reference faces from FlashFace Encode Reference Faces.") -> io.Input:
    return References.Input("references", optional=optional, tooltip=tooltip)


def references_or_people() -> io.Input:
    """A sampler's faces: one person's references, or several people from FlashFace Person nodes."""
    return io.MultiType.Input(references(), types=[References, People], tooltip=(
        "The reference faces from FlashFace Encode Reference Faces (or Load Identity), or several people from "
        "FlashFace Person nodes, each with their own faces and region."))


def strength(name: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=3.0, step=0.05, tooltip=tooltip)


def _box(name: str, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=0.0, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


def face_position(people_note: str = " With people connected, leave these at 0: each FlashFace Person has its own.") -> list[io.Input]:
    """The face box (four fractions of the image) and the optional face mask that replaces it."""
    return [
        _box("face_x1", "Face box left edge as a fraction of the width. All four at 0 = face anywhere." + people_note),
        _box("face_y1", "Face box top edge as a fraction of the height."),
        _box("face_x2", "Face box right edge; the face goes in the square of side max(width, height) at (x1, y1)."),
        _box("face_y2", "Face box bottom edge. Official suggestion: 0.3, 0.2, 0.6, 0.5."),
    ]


def face_mask() -> io.Mask.Input:
    return io.Mask.Input("face_mask", optional=True, tooltip=(
        "Where the face goes, instead of the box: a mask painted on the photo (Load Image > Open in MaskEditor); "
        "another size is resized to the image."))


def guidance() -> list[io.Input]:
    """FlashFace's guidance inputs, named as the fields of ``GuidanceSettings``."""
    return [
        io.Float.Input("text_guidance", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="How closely the image follows the prompt (CFG on the text)."),
        io.Float.Input("reference_guidance", default=3.2, min=0.0, max=10.0, step=0.1, round=0.01,
                       tooltip="How strongly the face is pulled towards the references, separately from the prompt. "
                               "Lower it (about 2.5) for prompts that contradict the references, e.g. another age."),
        io.Float.Input("reference_start", default=0.25, min=0.0, max=1.0, step=0.01,
                       tooltip="Share of the 1000-step schedule before reference guidance starts: 0.25 is the official "
                               "t=750. Later starts leave the prompt more room for pose and layout."),
        strength("early_strength", 0.85, "Reference feature strength on every condition before reference guidance starts."),
        io.Float.Input("cfg_rescale", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="CFG rescale towards the plain prompt prediction's spread; 0.5 as the official model."),
    ]
