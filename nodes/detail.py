"""The face detail pass: crop each face at FlashFace's scale, regenerate it, stitch it back."""

from comfy_api.v0_0_2 import io

from ..flashface_core.contract import GuidanceSettings
from ..flashface_core.detail.crop import CropSettings
from ..flashface_core.detail.detail_pass import crop_for_detail, face_detail
from ..flashface_core.detail.stitch import stitch as stitch_faces
from . import widgets


class FlashFaceCropFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceCropFaces",
            display_name="FlashFace Crop Faces",
            category="FlashFace",
            description="Finds the faces of an image (any batch) and cuts each out with context, resized to FlashFace's "
                        "scale, for a detail pass: encode the crops, sample them with the mask as noise mask and the "
                        "references output, decode, and put them back with FlashFace Stitch Faces. Small faces of "
                        "half-body and group pictures come back sharp and closer to the references.",
            inputs=[
                io.Image.Input("image", tooltip="The picture(s) whose faces to regenerate: a FlashFace result or any photo."),
                *widgets.detail_crop(),
                widgets.references_or_people(optional=True, tooltip=(
                    "The reference faces (Encode Reference Faces or Load Identity) to regenerate every chosen face with, "
                    "or the people (FlashFace Person chain) that made the picture: each face then gets the references "
                    "of the person whose region holds it.")),
            ],
            outputs=[
                io.Image.Output(display_name="crops", tooltip="One square crop per face, crop_size pixels: VAE Encode them."),
                widgets.People.Output(display_name="references", tooltip=(
                    "The crops' people: each crop's own references with its face position. Connect to the references "
                    "of FlashFace Sampler (its face box at zeros).")),
                io.Mask.Output(display_name="face_masks", tooltip=(
                    "The face box of each crop as a mask, for a sampler's face_mask when the references come from "
                    "elsewhere.")),
                io.Mask.Output(display_name="mask", tooltip=(
                    "The feathered mask of each crop: Set Latent Noise Mask with it, and the stitch blends through it.")),
                widgets.DetailStitch.Output(display_name="stitch", tooltip="Where each crop came from: for FlashFace Stitch Faces."),
            ],
        )

    @classmethod
    def execute(cls, image, references=None, **crop) -> io.NodeOutput:
        detail = crop_for_detail(image, CropSettings(**crop), references)
        return io.NodeOutput(detail.images, detail.people, detail.face_masks, detail.masks, detail.stitch)


class FlashFaceStitchFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceStitchFaces",
            display_name="FlashFace Stitch Faces",
            category="FlashFace",
            description="Puts regenerated face crops back into the picture FlashFace Crop Faces cut them from, through "
                        "its feathered mask; pixels outside the mask stay exactly as they were.",
            inputs=[
                io.Image.Input("image", tooltip="The picture the crops were cut from (the image input of FlashFace Crop Faces)."),
                io.Image.Input("crops", tooltip="The regenerated crops (VAE Decode of the sampled crops), in their order."),
                widgets.DetailStitch.Input("stitch", tooltip="The stitch output of FlashFace Crop Faces."),
            ],
            outputs=[io.Image.Output(tooltip="The picture with its faces regenerated.")],
        )

    @classmethod
    def execute(cls, image, crops, stitch) -> io.NodeOutput:
        return io.NodeOutput(stitch_faces(image, crops, stitch))


class FlashFaceFaceDetail(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceFaceDetail",
            display_name="FlashFace Face Detail",
            category="FlashFace",
            description="Crop Faces, FlashFace Sampler on the crops and Stitch Faces in one node: each face of the "
                        "image is regenerated at FlashFace's scale with its references and pasted back. Use it after a "
                        "half-body, full-body or group picture, or on a photo.",
            inputs=[
                widgets.flashface_model(),
                widgets.references_or_people(tooltip=(
                    "The reference faces (Encode Reference Faces or Load Identity), or the people (FlashFace Person "
                    "chain) that made the picture: each face gets the references of the person whose region holds it.")),
                io.Conditioning.Input("positive", tooltip="The prompt for the faces, e.g. 'photo of a man, detailed face, natural skin'."),
                io.Conditioning.Input("negative", tooltip="The negative prompt; the reference faces are also read with it."),
                io.Vae.Input("vae", tooltip="The SD1.5 VAE that encodes the crops and decodes them again."),
                io.Image.Input("image", tooltip="The picture(s) whose faces to regenerate."),
                *widgets.sampling(),
                io.Float.Input("denoise", default=0.45, min=0.0, max=1.0, step=0.01, tooltip=(
                    "How much of each face is redrawn: 0.35 to 0.5 sharpens and pulls it towards the references and "
                    "keeps pose and expression; higher redraws it more.")),
                widgets.strength("strength", 1.2, "Reference feature strength once reference guidance runs (official 1.2)."),
                *widgets.guidance(),
                *widgets.detail_crop(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The picture with its faces regenerated."),
                io.Image.Output(display_name="crops", tooltip="The regenerated face crops, to check them."),
            ],
        )

    @classmethod
    def execute(cls, model, references, positive, negative, vae, image, seed, steps, sampler_name, scheduler, denoise,
                strength, text_guidance, reference_guidance, reference_start, early_strength, cfg_rescale,
                **crop) -> io.NodeOutput:
        guidance = GuidanceSettings(text_guidance, reference_guidance, reference_start, early_strength, cfg_rescale)
        return io.NodeOutput(*face_detail(model, references, positive, negative, vae, image, seed, steps, sampler_name,
                                          scheduler, denoise, strength, guidance, CropSettings(**crop)))
