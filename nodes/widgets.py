"""Inputs shared by several FlashFace nodes, so their widgets and tooltips stay alike, and the pack's socket type."""

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..flashface_core.detail.choices import FaceSelection, NoFaceFound
from ..flashface_core.faces.choices import Detector
from ..flashface_core.faces.detection import DETECTORS
from ..flashface_core.guidance.schedules import SCHEDULERS, TRAILING

# The socket between Encode Reference Faces and the nodes that read the faces.
References = io.Custom("FLASHFACE_REFERENCES")
# Several people, each with their references and region, chained by FlashFace Person nodes.
People = io.Custom("FLASHFACE_PEOPLE")
# Where FlashFace Crop Faces cut each face, for FlashFace Stitch Faces.
DetailStitch = io.Custom("FLASHFACE_DETAIL_STITCH")


def flashface_model() -> io.Model.Input:
    return io.Model.Input("model", tooltip="The MODEL from LoadFlashFace (LoRA loaders and other patches may sit in between).")


def references(optional: bool = False, tooltip: str = "The reference faces from FlashFace Encode Reference Faces.") -> io.Input:
    return References.Input("references", optional=optional, tooltip=tooltip)


def references_or_people(optional: bool = False, tooltip: str = (
        "The reference faces from FlashFace Encode Reference Faces (or Load Identity), or several people from "
        "FlashFace Person nodes, each with their own faces and region.")) -> io.Input:
    """A sampler's faces: one person's references, or several people from FlashFace Person nodes."""
    return io.MultiType.Input(references(optional=optional, tooltip=tooltip), types=[References, People])


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


def sampling() -> list[io.Input]:
    """KSampler's seed, steps, sampler and schedule, with the official defaults."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="The random seed for the noise."),
        io.Int.Input("steps", default=35, min=1, max=10000, tooltip=(
            "Sampling steps of the full schedule (official: 35); with denoise below 1 the last part of them runs.")),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                       tooltip="The sampler; 'euler' with the 'trailing' schedule is the official DDIM."),
        io.Combo.Input("scheduler", options=SCHEDULERS, default=TRAILING,
                       tooltip="The noise schedule; 'trailing' is the official one."),
    ]


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


def detail_crop() -> list[io.Input]:
    """How the detail pass finds, chooses and cuts the faces, named as the fields of ``CropSettings``
    (FlashFace Crop Faces and FlashFace Face Detail)."""
    return [
        io.Combo.Input("detector", options=[d.value for d in DETECTORS], default=Detector.RETINAFACE.value, tooltip=(
            f"Face detector. '{Detector.RETINAFACE}': the official one (retinaface_resnet50.pth in models/facedetection/ "
            f"or models/flashface/); insightface packs and '{Detector.CENTERFACE}' need onnxruntime.")),
        io.Float.Input("threshold", default=0.6, min=0.05, max=0.99, step=0.01,
                       tooltip="Detection confidence needed (official: 0.6); lower it if a small face is missed."),
        io.Combo.Input("face_selection", options=FaceSelection, default=FaceSelection.LARGEST, tooltip=(
            "Which faces of each image to regenerate: the largest, the one at face_index counting from the left, all, "
            "or all whose longer side is at least min_face_size pixels (groups, skipping faces in the background).")),
        io.Int.Input("face_index", default=0, min=0, max=63,
                     tooltip="With 'by index': which face of each image, counting from 0, left to right."),
        io.Int.Input("min_face_size", default=64, min=0, max=4096, tooltip=(
            "With 'all above min_face_size': the smallest face (longer side of its box, in image pixels) to regenerate.")),
        io.Float.Input("context_factor", default=3.0, min=1.0, max=8.0, step=0.1, tooltip=(
            "The crop's side as a multiple of the face's longer side (Impact Pack's crop_factor). 3 puts the face at "
            "about a third of the crop, FlashFace's own face scale; larger keeps more hair and shoulders in view.")),
        io.Int.Input("crop_size", default=768, min=64, max=2048, step=8, tooltip=(
            "The side the crops are resized to for sampling: 768 is the scale FlashFace was trained at (512 is faster). "
            "Small faces are enlarged to it; faces whose crop is larger are shrunk to it.")),
        io.Float.Input("mask_grow", default=1.5, min=0.5, max=4.0, step=0.05, tooltip=(
            "How much of the crop is regenerated and pasted back: the face box grown by this factor (1.5 takes in the "
            "forehead, ears and chin).")),
        io.Int.Input("feather", default=64, min=0, max=512, step=4, tooltip=(
            "Width of the mask's soft edge, in crop pixels, so the regenerated face blends into the picture without "
            "a seam.")),
        io.Combo.Input("no_face", options=NoFaceFound, default=NoFaceFound.KEEP, tooltip=(
            "An image without a face to regenerate: keep it unchanged (one log line), or stop with an error naming it.")),
    ]
