"""The detail pass end to end: crop the faces, regenerate them with their references, stitch them back.

``crop_for_detail`` is FlashFace Crop Faces, ``stitch.stitch`` FlashFace Stitch Faces, and
``face_detail`` the one-node FlashFace Face Detail: the same three steps with ComfyUI's
VAEEncode, SetLatentNoiseMask, FlashFace Sampler and VAEDecode between them, so it gives the
two-node graph's image for the same seed.
"""

import dataclasses
import logging

import torch

from ..contract import GuidanceSettings
from ..guidance.sampling import sample
from ..injection.apply import apply_flashface, people_of, require_flashface_model, text_embedding
from . import people as detail_people
from .crop import CropSettings, DetailCrops, cut_crops, find_faces
from .stitch import stitch

logger = logging.getLogger(__name__)


def crop_for_detail(images: torch.Tensor, settings: CropSettings, references=None) -> DetailCrops:
    """Find and choose the faces of ``images``, match them to ``references``' people (when given) and
    cut them out. Faces in no person's region are left out (logged)."""
    settings.check()
    people = people_of(references, None, None, "FlashFace Crop Faces") if references is not None else None
    crops = find_faces(images, settings)
    owners = None
    if people is not None and crops:
        batch, height, width = images.shape[:3]
        found = detail_people.owners(people, crops, batch, height, width)
        for number, owner in enumerate(found, start=1):
            if owner is None:
                logger.info("FlashFace detail: face %d is in no person's region; it is kept as it is.", number)
        crops, owners = [c for c, o in zip(crops, found) if o is not None], [o for o in found if o is not None]
    detail = cut_crops(images, crops, settings.crop_size)
    if people is None:
        return detail
    return dataclasses.replace(detail, people=detail_people.crop_people(people, owners or [], detail.face_masks))


def face_detail(model, references, positive, negative, vae, images: torch.Tensor, seed: int, steps: int,
                sampler_name: str, scheduler: str, denoise: float, strength: float, guidance: GuidanceSettings,
                settings: CropSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The stitched images and the regenerated crops."""
    require_flashface_model(model, "FlashFace Face Detail")
    people_of(references, None, None, "FlashFace Face Detail")  # these messages before any detector loads
    text_embedding(model, negative, "negative")
    detail = crop_for_detail(images, settings, references)
    if not detail.stitch.crops:
        return images, detail.images
    patched = apply_flashface(model, detail.people, negative, strength, node="FlashFace Face Detail")
    latent = {"samples": vae.encode(detail.images[..., :3]),  # as VAEEncode and SetLatentNoiseMask
              "noise_mask": detail.masks.reshape(-1, 1, settings.crop_size, settings.crop_size)}
    sampled = sample(patched, positive, negative, latent, seed, steps, sampler_name, scheduler, denoise, guidance)
    regenerated = vae.decode(sampled["samples"])  # as VAEDecode
    if regenerated.ndim == 5:
        regenerated = regenerated.reshape(-1, *regenerated.shape[-3:])
    return stitch(images, regenerated, detail.stitch), regenerated
