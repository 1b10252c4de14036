"""ApplyFlashFace: reference faces on a FlashFace MODEL, for any stock sampler node."""

from ..flashface_core.reference_attention import apply_flashface


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
        box = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL from LoadFlashFace (LoRAs and other patches may sit in between)."}),
                "references": ("FLASHFACE_REFERENCES", {"tooltip": "The reference faces from EncodeReferenceFaces."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt: the reference faces are read with its text embedding, as in the official model."}),
                "strength": ("FLOAT", {
                    "default": 1.2, "min": 0.0, "max": 3.0, "step": 0.05,
                    "tooltip": "Reference feature strength: how much the faces' features are used. 0 switches them off; "
                               "too high gives a pasted look. Official values: 0.85 to 1.2.",
                }),
                "face_x1": ("FLOAT", {**box, "tooltip": "Face box left edge as a fraction of the width. All four at 0 = face anywhere."}),
                "face_y1": ("FLOAT", {**box, "tooltip": "Face box top edge as a fraction of the height."}),
                "face_x2": ("FLOAT", {**box, "tooltip": "Face box right edge as a fraction of the width. The face goes in the square of side max(width, height) at (x1, y1)."}),
                "face_y2": ("FLOAT", {**box, "tooltip": "Face box bottom edge as a fraction of the height. Official suggestion: 0.3, 0.2, 0.6, 0.5."}),
            },
            "optional": {
                "face_mask": ("MASK", {"tooltip": "Where the face goes, instead of the box: a mask the size of the image (or of the latent)."}),
            },
        }

    def apply(self, model, references, negative, strength, face_x1, face_y1, face_x2, face_y2, face_mask=None):
        return (apply_flashface(model, references, negative, strength, (face_x1, face_y1, face_x2, face_y2), face_mask),)


NODE_CLASS_MAPPINGS = {"ApplyFlashFace": ApplyFlashFace}
NODE_DISPLAY_NAME_MAPPINGS = {"ApplyFlashFace": "Apply FlashFace"}
