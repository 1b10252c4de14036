"""Putting reference faces on a FlashFace MODEL, with every input checked first."""

import torch

from ..contract import FlashFaceSettings, set_settings
from ..model.face_position import FacePosition
from ..model.loading import is_flashface_model
from ..model.references import LATENT_CHANNELS, FlashFaceReferences


def require_flashface_model(model, node: str):
    if not is_flashface_model(model):
        raise ValueError(
            f"{node} needs the MODEL from LoadFlashFace (LoRA loaders and other patches in between are fine); "
            f"this MODEL is {type(getattr(model, 'model', model)).__name__}."
        )


def text_embedding(model, conditioning, which: str) -> torch.Tensor:
    """The first text embedding of a CONDITIONING, checked against the model's text width."""
    if not isinstance(conditioning, list) or not conditioning or not isinstance(conditioning[0][0], torch.Tensor):
        raise ValueError(f"FlashFace needs the {which} prompt as CONDITIONING (from CLIPTextEncode).")
    context_dim = model.model.model_config.unet_config["context_dim"]
    for embedding, _ in conditioning:
        if embedding.shape[-1] != context_dim:
            raise ValueError(
                f"The {which} conditioning is {embedding.shape[-1]} wide but FlashFace reads {context_dim}: "
                f"encode it with an SD1.5 CLIP (this one looks like another model's)."
            )
    return conditioning[0][0][:1]


def check_latent(latent_image: torch.Tensor):
    if latent_image.ndim != 4 or latent_image.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"FlashFace samples SD1.5 latents ([B, 4, H, W]); this LATENT is {tuple(latent_image.shape)}. "
            f"Use Empty Latent Image or encode with an SD1.5 VAE."
        )


def apply_flashface(model, references: FlashFaceReferences, negative, strength: float, face_box=None, face_mask=None, node="ApplyFlashFace"):
    """A clone of the FlashFace ``model`` that reads ``references``; ``model`` is unchanged.

    Raises ValueError (saying what to fix) for a MODEL that is not FlashFace, missing
    references, a bad face box, or a negative prompt of the wrong width, before anything runs.
    """
    require_flashface_model(model, node)
    if not isinstance(references, FlashFaceReferences):
        raise ValueError(f"{node}: connect the references output of FlashFace Encode Reference Faces.")
    context = text_embedding(model, negative, "negative")
    box = None if face_box is None or all(v == 0 for v in face_box) else face_box
    position = FacePosition(box=box, mask=face_mask) if (box is not None or face_mask is not None) else None
    patched = model.clone()
    set_settings(patched, FlashFaceSettings(references, context, float(strength), position))
    return patched
