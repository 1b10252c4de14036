"""FlashFaceEncodeReferenceFaces: reference photos to FlashFace references."""

from comfy_api.v0_0_2 import io

from ..flashface_core.faces.choices import Detector, FaceChoice, NoFace, Straighten
from ..flashface_core.faces.encoding import DEFAULT_THRESHOLD, encode_reference_faces
from . import widgets

# Optional photo inputs beside ``images``: photos of different sizes cannot share one IMAGE batch.
# (ComfyUI 0.3.64's growing input list for V3 nodes is not drawn by its frontend yet.)
EXTRA_IMAGES = tuple(f"image_{i}" for i in range(2, 9))


class FlashFaceEncodeReferenceFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceEncodeReferenceFaces",
            display_name="FlashFace Encode Reference Faces",
            category="FlashFace",
            description="Finds one face per photo, crops and straightens it the way FlashFace was trained (tight box, "
                        "eyes level, 224x224 with black bars) and encodes it with the VAE into FlashFace references. "
                        "Photos of different sizes go into images and image_2 to image_8.",
            inputs=[
                io.Vae.Input("vae", tooltip="The SD1.5 VAE that encodes the face crops (the one of the checkpoint)."),
                io.Image.Input("images", tooltip="Photos with one face each, or face crops when the detector is "
                                                 f"'{Detector.PRE_CROPPED}'. More photos of other sizes go in image_2 to image_8."),
                io.Combo.Input("detector", options=Detector, default=Detector.RETINAFACE, tooltip=(
                    f"Face detector. '{Detector.RETINAFACE}': the official one FlashFace was trained with "
                    "(retinaface_resnet50.pth in models/flashface/ or models/facedetection/). Or an insightface model "
                    f"pack from models/insightface/models/, the '{Detector.CENTERFACE}' detector (both need onnxruntime), "
                    "or none when the images are already face crops, e.g. drawn faces a detector misses (they are only "
                    "resized and padded to 224x224).")),
                io.Combo.Input("face_choice", options=FaceChoice, default=FaceChoice.LARGEST, tooltip=(
                    "Which face to use when a photo holds several: the largest, the one at face_index counting from the "
                    "left, or stop with an error (as the official demo does).")),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="With 'by index': which face, counting from 0, left to right."),
                io.Combo.Input("no_face", options=NoFace, default=NoFace.ERROR,
                               tooltip="A photo without a face: stop with an error naming it, or skip it (logged)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.05, max=0.99, step=0.01,
                               tooltip="Detection confidence needed (official: 0.6); lower it if a face is missed."),
                io.Boolean.Input("fill_to_four", default=True, tooltip=(
                    "With fewer than 4 faces, the model reads them repeated in order up to 4, as the official demo does. "
                    "Chained nodes repeat only once all faces are in.")),
                io.Combo.Input("straighten", options=Straighten, default=Straighten.AUTO, optional=True, tooltip=(
                    "Levelling the eyes of tilted faces: 'detect again' looks again at the face turned straight and "
                    "corrects what is left (other detectors than RetinaFace leave tilted eyes too level); 'one pass' is "
                    f"the official crop. 'auto': one pass with '{Detector.RETINAFACE}' (as FlashFace was trained), "
                    "'detect again' with the others.")),
                widgets.references(optional=True, tooltip="Earlier references to extend (from another Encode Reference "
                                                          "Faces node); they come first."),
                *(io.Image.Input(name, optional=True, tooltip="More photos, of any size (each input may be a batch); the "
                                                              "references follow the inputs' order.") for name in EXTRA_IMAGES),
            ],
            outputs=[
                widgets.References.Output(display_name="references", tooltip=(
                    "The reference faces for FlashFace: one VAE latent per face, with the earlier references first.")),
                io.Image.Output(display_name="face_crops",
                                tooltip="The aligned 224x224 face crops of these images, to check what the model will see."),
            ],
        )

    @classmethod
    def execute(cls, vae, images, detector, face_choice, face_index, no_face, threshold, fill_to_four,
                straighten=Straighten.AUTO, references=None, **more_images) -> io.NodeOutput:
        photos = [("images", images)] + [(name, more_images[name]) for name in EXTRA_IMAGES
                                         if more_images.get(name) is not None]
        return io.NodeOutput(*encode_reference_faces(
            vae, photos, detector, face_choice=face_choice, face_index=face_index, no_face=no_face,
            threshold=threshold, fill_to_four=fill_to_four, previous=references, straighten=straighten,
        ))
