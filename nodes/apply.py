"""ApplyFlashFace: reference faces on a FlashFace MODEL, for any stock sampler node."""

from ..flashface_core.apply import apply_flashface
from . import inputs


class ApplyFlashFace:
    DESCRIPTION = (
        "Gives the FlashFace MODEL the reference faces. The patched MODEL works in KSampler, "
        "KSamplerAdvanced and SamplerCustomAdvanced, with the feature strength on every condition. "
        "For FlashFace's separate reference guidance use FlashFaceSampler or FlashFaceGuider."
    )
    CATEGORY = "FlashFace"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the MODEL that reads the reference faces; the input MODEL is unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": inputs.FLASHFACE_MODEL,
                "references": inputs.REFERENCES,
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt: the reference faces are read with its text embedding, as in the official model."}),
                "strength": inputs.strength(1.2, "Reference feature strength on every condition: how much the faces' features are used. "
                                                 "0 switches them off; too high gives a pasted look. Official values: 0.85 to 1.2."),
                **inputs.FACE_POSITION,
            },
            "optional": inputs.FACE_MASK,
        }

    def apply(self, model, references, negative, strength, face_x1, face_y1, face_x2, face_y2, face_mask=None):
        return (apply_flashface(model, references, negative, strength, (face_x1, face_y1, face_x2, face_y2), face_mask),)


NODE_CLASS_MAPPINGS = {"ApplyFlashFace": ApplyFlashFace}
NODE_DISPLAY_NAME_MAPPINGS = {"ApplyFlashFace": "Apply FlashFace"}
