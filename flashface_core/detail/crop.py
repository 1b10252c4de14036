"""Finding the faces of an IMAGE batch and cutting each out, with context, at FlashFace's scale.

FlashFace was trained at 768 pixels on pictures whose faces are large; a small face in a
half-body or group picture comes out blurred. Each chosen face is cut as a square of
``context_factor`` times its longer side (Impact Pack's ``crop_factor``; 3 puts the face at a
third of the crop, the official face box's scale) and resized to ``crop_size`` pixels, so the
sampler regenerates it at the scale the model knows. Everything is checked before a detector
loads.
"""

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..faces import detection
from ..faces.choices import Detector
from ..faces.encoding import choose_face, detect_faces, images_to_rgb
from ..model.face_position import LATENT_STRIDE
from .choices import FaceSelection, NoFaceFound
from .geometry import FaceCrop
from .resample import resize

if TYPE_CHECKING:
    from ..people.person import FlashFacePeople

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropSettings:
    """How faces are found, chosen and cut, named as the crop node's inputs are."""

    detector: str = Detector.RETINAFACE
    threshold: float = 0.6
    face_selection: str = FaceSelection.LARGEST
    face_index: int = 0
    min_face_size: int = 64
    context_factor: float = 3.0
    crop_size: int = 768
    mask_grow: float = 1.5
    feather: int = 64
    no_face: str = NoFaceFound.KEEP

    def check(self):
        if self.detector not in detection.DETECTORS:
            raise ValueError(f"Unknown face detector '{self.detector}'; choose one of {', '.join(detection.DETECTORS)}.")
        if self.face_selection not in list(FaceSelection):
            raise ValueError(f"Unknown face selection '{self.face_selection}'; choose one of {', '.join(FaceSelection)}.")
        if self.no_face not in list(NoFaceFound):
            raise ValueError(f"Unknown no-face choice '{self.no_face}'; choose one of {', '.join(NoFaceFound)}.")
        if self.crop_size % LATENT_STRIDE or self.crop_size < 64:
            raise ValueError(f"The crop size {self.crop_size} must be a multiple of {LATENT_STRIDE} and at least 64 "
                             "(FlashFace's own scale is 768).")
        if self.context_factor < 1.0:
            raise ValueError(f"The context factor {self.context_factor} must be at least 1 (the crop holds the whole face).")
        if not 0 <= self.feather < self.crop_size / 2:
            raise ValueError(f"The feather {self.feather} must be between 0 and half the crop size ({self.crop_size // 2}).")
        if self.mask_grow <= 0:
            raise ValueError(f"The mask growth {self.mask_grow} must be above 0.")


@dataclass(frozen=True)
class DetailStitch:
    """What the stitch needs to put crops back: the image batch's size and each crop (the crops may come
    back at any square size)."""

    batch: int
    height: int
    width: int
    crops: tuple[FaceCrop, ...]

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class DetailCrops:
    """The crop node's results: ``images`` [N, size, size, 3], the blend ``masks`` and the ``face_masks``
    [N, size, size], the stitch data and the crops' people. With no face found (and the image kept), N
    is 1: a filler crop with an empty mask, so the nodes after it run and the stitch changes nothing."""

    images: torch.Tensor
    masks: torch.Tensor
    face_masks: torch.Tensor
    stitch: DetailStitch
    people: "FlashFacePeople | None" = None  # each crop's person (``people.crop_people``), when references were given


def _chosen(faces, settings: CropSettings, label: str):
    """The faces to regenerate, left to right; largest and by index as the reference encoder chooses."""
    if not faces:
        return []
    if settings.face_selection in (FaceSelection.LARGEST, FaceSelection.BY_INDEX):
        return [choose_face(faces, settings.face_selection, settings.face_index, label)]
    ordered = sorted(faces, key=lambda face: face.centre_x)
    if settings.face_selection == FaceSelection.ALL:
        return ordered
    return [face for face in ordered if max(face.box[2] - face.box[0], face.box[3] - face.box[1]) >= settings.min_face_size]


def find_faces(images: torch.Tensor, settings: CropSettings) -> list[FaceCrop]:
    """The crops of the chosen faces of every image, image by image, left to right."""
    photos = images_to_rgb(images, "image", what="Images")
    batch, height, width, channels = images.shape
    if channels not in (3, 4):
        raise ValueError(f"The image to detail has {channels} channel(s); the detail pass works on RGB (or RGBA) "
                         "pictures: convert it to RGB first.")
    detector = detection.load_detector(settings.detector)
    crops = []
    for index, rgb in enumerate(photos):
        label = f"Image {index + 1} of {batch}" if batch > 1 else "The image"
        scale = width / rgb.shape[1]  # images_to_rgb shrinks huge photos by a whole factor
        faces = [type(face)(tuple(v * scale for v in face.box), face.landmarks * scale, face.score)
                 for face in detect_faces(detector, rgb, settings.threshold)]
        chosen = _chosen(faces, settings, label)
        if not chosen:
            what = f"no face above {settings.min_face_size} pixels" if faces else "no face"
            if settings.no_face == NoFaceFound.ERROR:
                raise ValueError(f"{label} ({width}x{height}) has {what} the {settings.detector} detector finds at "
                                 f"threshold {settings.threshold}: lower the threshold, choose another detector, or "
                                 f"set no_face to '{NoFaceFound.KEEP}' to pass it through unchanged.")
            logger.info("FlashFace detail: %s has %s; it is kept unchanged.", label.lower(), what)
        for face in chosen:
            crop = FaceCrop.around(index, height, width, face.box, settings.context_factor, settings.mask_grow,
                                   settings.feather / settings.crop_size)
            if crop.side > settings.crop_size:
                logger.info("FlashFace detail: a face of %s is already large (its crop is %d pixels); it is shrunk to "
                            "%d, so the pass adds little detail there.", label.lower(), crop.side, settings.crop_size)
            crops.append(crop)
    return crops


def cut(image: torch.Tensor, crop: FaceCrop, size: int) -> torch.Tensor:
    """[size, size, 3]: the crop's square of ``image`` [H, W, C], padded with the border's pixels where
    it runs past the image (never wrapped round), resized with ``resample.resize``."""
    rows, cols = crop.in_image()
    part = image[rows, cols, :3].float()
    pad = (cols.start - crop.left, crop.left + crop.side - cols.stop, rows.start - crop.top, crop.top + crop.side - rows.stop)
    if any(pad):
        part = F.pad(part.movedim(-1, 0)[None], pad, mode="replicate")[0].movedim(0, -1)
    return resize(part, size, size)


def cut_crops(images: torch.Tensor, crops: list[FaceCrop], size: int) -> DetailCrops:
    """The crops of ``images`` (a ComfyUI IMAGE batch), their masks and stitch data."""
    batch, height, width = images.shape[:3]
    if crops:
        cut_images = torch.stack([cut(images[c.image_index], c, size) for c in crops])
        masks = torch.stack([c.crop_mask(size) for c in crops])
        face_masks = torch.stack([c.face_mask(size) for c in crops])
    else:  # a filler: the middle square of the first image, masked out
        side = min(height, width)
        filler = FaceCrop(0, height, width, (width - side) // 2, (height - side) // 2, side, (0, 0, 0, 0), (0, 0, 0, 0), 0)
        cut_images = cut(images[0], filler, size)[None]
        masks = face_masks = torch.zeros(1, size, size)
    return DetailCrops(cut_images, masks, face_masks, DetailStitch(batch, height, width, tuple(crops)))
