"""Nodes that turn reference photos into FlashFace references."""

from ..flashface_core import face_references
from ..flashface_core.face_detection import CENTERFACE

REFERENCES_TYPE = "FLASHFACE_REFERENCES"


class EncodeReferenceFaces:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The SD1.5 VAE that encodes the face crops (the one of the checkpoint)."}),
                "images": ("IMAGE", {"tooltip": "Photos with one face each, or face crops when the detector is "
                                                f"'{face_references.PRE_CROPPED}'. Photos of different sizes: use one "
                                                "node per size and chain them through 'references'."}),
                "detector": (list(face_references.DETECTOR_CHOICES), {
                    "default": face_references.DETECTOR_CHOICES[0],
                    "tooltip": "Face detector: an insightface model pack from models/insightface/models/, the "
                               f"'{CENTERFACE}' detector that needs no download, or none when the images are "
                               "already face crops (they are only resized and padded to 224x224).",
                }),
                "face_choice": (list(face_references.FACE_CHOICES), {
                    "default": face_references.LARGEST,
                    "tooltip": "Which face to use when a photo holds several: the largest, the one at face_index "
                               "counting from the left, or stop with an error (as the official demo does).",
                }),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 63,
                                       "tooltip": "With 'by index': which face, counting from 0, left to right."}),
                "no_face": (list(face_references.NO_FACE_CHOICES), {
                    "default": face_references.NO_FACE_ERROR,
                    "tooltip": "A photo without a face: stop with an error naming it, or skip it (logged).",
                }),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 0.99, "step": 0.01,
                                        "tooltip": "Detection confidence needed; lower it if a face is missed."}),
                "fill_to_four": ("BOOLEAN", {"default": True,
                                             "tooltip": "With fewer than 4 faces, the model reads them repeated in order "
                                                        "up to 4, as the official demo does. Chained nodes repeat only "
                                                        "once all faces are in."}),
            },
            "optional": {
                "references": (REFERENCES_TYPE, {"tooltip": "Earlier references to extend (from another Encode "
                                                            "Reference Faces node); they come first."}),
            },
        }

    RETURN_TYPES = (REFERENCES_TYPE, "IMAGE")
    RETURN_NAMES = ("references", "face_crops")
    OUTPUT_TOOLTIPS = (
        "The reference faces for FlashFace: one VAE latent per face, with the earlier references first.",
        "The aligned 224x224 face crops of these images, to check what the model will see.",
    )
    FUNCTION = "encode"
    CATEGORY = "FlashFace"
    DESCRIPTION = (
        "Finds one face per photo, crops and straightens it the way FlashFace was trained (tight box, eyes "
        "level, 224x224 with black bars) and encodes it with the VAE into FlashFace references."
    )

    def encode(self, vae, images, detector, face_choice, face_index, no_face, threshold, fill_to_four, references=None):
        return face_references.encode_reference_faces(
            vae,
            images,
            detector,
            face_choice=face_choice,
            face_index=face_index,
            no_face=no_face,
            threshold=threshold,
            fill_to_four=fill_to_four,
            previous=references,
        )


NODE_CLASS_MAPPINGS = {"FlashFaceEncodeReferenceFaces": EncodeReferenceFaces}
NODE_DISPLAY_NAME_MAPPINGS = {"FlashFaceEncodeReferenceFaces": "FlashFace Encode Reference Faces"}
