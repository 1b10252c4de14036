"""Nodes that turn reference photos into FlashFace references."""

from ..flashface_core.faces import references as face_references
from ..flashface_core.faces.detection import CENTERFACE, RETINAFACE

REFERENCES_TYPE = "FLASHFACE_REFERENCES"
# Optional photo inputs beside ``images``: photos of different sizes cannot share one IMAGE batch.
EXTRA_IMAGES = tuple(f"image_{i}" for i in range(2, 9))


class EncodeReferenceFaces:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The SD1.5 VAE that encodes the face crops (the one of the checkpoint)."}),
                "images": ("IMAGE", {"tooltip": "Photos with one face each, or face crops when the detector is "
                                                f"'{face_references.PRE_CROPPED}'. More photos of other sizes go in "
                                                "image_2 to image_8."}),
                "detector": (list(face_references.DETECTOR_CHOICES), {
                    "default": face_references.DEFAULT_DETECTOR,
                    "tooltip": f"Face detector. '{RETINAFACE}': the official one FlashFace was trained with "
                               "(retinaface_resnet50.pth in models/flashface/ or models/facedetection/). Or an "
                               "insightface model pack from models/insightface/models/, the "
                               f"'{CENTERFACE}' detector (both need onnxruntime), or none when the images are "
                               "already face crops, e.g. drawn faces a detector misses (they are only resized and "
                               "padded to 224x224).",
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
                "threshold": ("FLOAT", {"default": face_references.DEFAULT_THRESHOLD, "min": 0.05, "max": 0.99,
                                        "step": 0.01, "tooltip": "Detection confidence needed (official: 0.6); "
                                                                 "lower it if a face is missed."}),
                "fill_to_four": ("BOOLEAN", {"default": True,
                                             "tooltip": "With fewer than 4 faces, the model reads them repeated in order "
                                                        "up to 4, as the official demo does. Chained nodes repeat only "
                                                        "once all faces are in."}),
            },
            "optional": {
                "straighten": (list(face_references.STRAIGHTEN_CHOICES), {
                    "default": face_references.STRAIGHTEN_AUTO,
                    "tooltip": "Levelling the eyes of tilted faces: 'detect again' looks again at the face turned "
                               "straight and corrects what is left (other detectors than RetinaFace leave tilted eyes "
                               "too level); 'one pass' is the official crop. 'auto': one pass with "
                               f"'{RETINAFACE}' (as FlashFace was trained), 'detect again' with the others.",
                }),
                "references": (REFERENCES_TYPE, {"tooltip": "Earlier references to extend (from another Encode "
                                                            "Reference Faces node); they come first."}),
                **{name: ("IMAGE", {"tooltip": "More photos, of any size (each input may be a batch); "
                                               "the references follow the inputs' order."}) for name in EXTRA_IMAGES},
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
        "level, 224x224 with black bars) and encodes it with the VAE into FlashFace references. Photos of "
        "different sizes go into images and image_2 to image_8."
    )

    def encode(self, vae, images, detector, face_choice, face_index, no_face, threshold, fill_to_four,
               straighten=face_references.STRAIGHTEN_AUTO, references=None, **more_images):
        photos = [("images", images)] + [(name, more_images[name]) for name in EXTRA_IMAGES
                                         if more_images.get(name) is not None]
        return face_references.encode_reference_faces(
            vae,
            photos,
            detector,
            face_choice=face_choice,
            face_index=face_index,
            no_face=no_face,
            threshold=threshold,
            fill_to_four=fill_to_four,
            previous=references,
            straighten=straighten,
        )


NODE_CLASS_MAPPINGS = {"FlashFaceEncodeReferenceFaces": EncodeReferenceFaces}
NODE_DISPLAY_NAME_MAPPINGS = {"FlashFaceEncodeReferenceFaces": "FlashFace Encode Reference Faces"}
