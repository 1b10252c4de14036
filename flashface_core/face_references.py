"""Reference photos to FlashFace references: detect, choose a face, crop, VAE-encode.

All the policies of the reference-face nodes live here: which face of a photo is used,
what happens to a photo without one, detection retries, pre-cropped input, and filling
up to four references by repetition as the official demo does. Inputs are checked before
any detector is loaded or anything is encoded.
"""

import logging

import numpy as np
import torch
from PIL import Image

from . import face_alignment, face_detection
from .references import LATENT_CHANNELS, FlashFaceReferences

logger = logging.getLogger(__name__)

PRE_CROPPED = "none (images are face crops)"
DETECTOR_CHOICES = (*face_detection.DETECTORS, PRE_CROPPED)

LARGEST = "largest"
BY_INDEX = "by index (left to right)"
ERROR_IF_SEVERAL = "error if several"
FACE_CHOICES = (LARGEST, BY_INDEX, ERROR_IF_SEVERAL)

NO_FACE_ERROR = "error"
NO_FACE_SKIP = "skip image"
NO_FACE_CHOICES = (NO_FACE_ERROR, NO_FACE_SKIP)

MIN_IMAGE_SIZE = 64
DEMO_REFERENCE_COUNT = 4
_RANGE_TOLERANCE = 1e-3


def images_to_rgb(images) -> list[np.ndarray]:
    """ComfyUI IMAGE [N, H, W, C] floats in 0..1 to uint8 RGB arrays, with clear errors.

    One channel (grayscale) is repeated to RGB and a fourth (alpha) is dropped, as
    LoadImage does.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            "Reference images must be a ComfyUI IMAGE batch [N, H, W, C]; got "
            f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}."
        )
    count, height, width, channels = images.shape
    if count == 0:
        raise ValueError("The reference image batch is empty: connect at least one photo.")
    if channels not in (1, 3, 4):
        raise ValueError(
            f"Reference images have {channels} channels; expected RGB (3), grayscale (1) or RGBA (4). "
            "Convert them to RGB first."
        )
    if not images.is_floating_point():
        raise ValueError(
            f"Reference images are {images.dtype}, but a ComfyUI IMAGE holds floats in 0..1 "
            "(e.g. 8- or 16-bit values divided by 255 or 65535). Load them with LoadImage."
        )
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"Reference images are {width}x{height} pixels; at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} is "
            "needed to find and crop a face. Use larger photos."
        )
    pixels = images.detach().to(device="cpu", dtype=torch.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"Reference image values run from {low:g} to {high:g}; a ComfyUI IMAGE holds 0..1 "
            "(0..255 or 0..65535 values must be divided by 255 or 65535 first)."
        )
    if channels == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    rgb = (pixels[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return list(rgb)


def choose_face(faces, choice: str, index: int, image_index: int):
    """The face of one photo the user asked for, or None when it holds none."""
    if not faces:
        return None
    if choice == LARGEST:
        return max(faces, key=lambda face: face.area)
    if choice == BY_INDEX:
        ordered = sorted(faces, key=lambda face: face.centre_x)
        if index >= len(ordered):
            raise ValueError(
                f"Reference image {image_index} holds {len(ordered)} face(s), so there is no face index {index} "
                "(counting from 0, left to right). Lower face_index."
            )
        return ordered[index]
    if choice == ERROR_IF_SEVERAL:
        if len(faces) > 1:
            raise ValueError(
                f"Reference image {image_index} holds {len(faces)} faces; FlashFace wants one face per reference. "
                f"Crop the photo, or set the face choice to '{LARGEST}' or '{BY_INDEX}'."
            )
        return faces[0]
    raise ValueError(f"Unknown face choice '{choice}'; choose one of {', '.join(FACE_CHOICES)}.")


def detect_faces(detector, rgb: np.ndarray, threshold: float):
    """Faces in one photo, retrying at smaller detection sizes before giving up."""
    for size in face_detection.DETECTION_SIZES:
        faces = detector.detect(rgb, threshold, size)
        if faces:
            return faces
    return []


def crop_faces(rgbs, detector_name: str, threshold: float, face_choice: str, face_index: int, no_face: str):
    """The official 224x224 crops of the chosen faces (PIL images) and the indices they came from."""
    if detector_name == PRE_CROPPED:
        return [face_alignment.fit_to_square(Image.fromarray(rgb)) for rgb in rgbs], list(range(len(rgbs)))
    detector = face_detection.load_detector(detector_name)
    crops, kept = [], []
    for image_index, rgb in enumerate(rgbs):
        faces = detect_faces(detector, rgb, threshold)
        face = choose_face(faces, face_choice, face_index, image_index)
        if face is None:
            message = (
                f"No face found in reference image {image_index} (of {len(rgbs)}, counting from 0) by the "
                f"{detector_name} detector on {detector.provider} at threshold {threshold:g}, even at detection "
                f"sizes {', '.join(map(str, face_detection.DETECTION_SIZES))}."
            )
            if no_face == NO_FACE_SKIP:
                logger.warning("FlashFace: %s Skipping it.", message)
                continue
            raise ValueError(
                f"{message} Lower the threshold, try another detector, set no_face to '{NO_FACE_SKIP}', or crop "
                f"the face yourself and use the detector '{PRE_CROPPED}'."
            )
        if len(faces) > 1:
            logger.info(
                "FlashFace: reference image %d holds %d faces; using the %s one.", image_index, len(faces), face_choice
            )
        crops.append(face_alignment.align_face(Image.fromarray(rgb), face.box, face.landmarks))
        kept.append(image_index)
    if not crops:
        raise ValueError(
            f"No face found in any of the {len(rgbs)} reference images by the {detector_name} detector on "
            f"{detector.provider}. Lower the threshold, or crop the faces yourself and use the detector "
            f"'{PRE_CROPPED}'."
        )
    return crops, kept


def encode_reference_faces(
    vae,
    images,
    detector: str,
    face_choice: str = LARGEST,
    face_index: int = 0,
    no_face: str = NO_FACE_ERROR,
    threshold: float = 0.5,
    fill_to_four: bool = True,
    previous: FlashFaceReferences | None = None,
):
    """Photos (or face crops) to ``FlashFaceReferences`` plus the crops as an IMAGE batch.

    ``previous`` references come first, so photos of different sizes can be added by
    chaining nodes; the fill to four counts them too.
    """
    if detector not in DETECTOR_CHOICES:
        raise ValueError(f"Unknown face detector '{detector}'; choose one of {', '.join(DETECTOR_CHOICES)}.")
    if face_choice not in FACE_CHOICES:
        raise ValueError(f"Unknown face choice '{face_choice}'; choose one of {', '.join(FACE_CHOICES)}.")
    if no_face not in NO_FACE_CHOICES:
        raise ValueError(f"Unknown no-face policy '{no_face}'; choose one of {', '.join(NO_FACE_CHOICES)}.")
    if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
        raise ValueError(
            f"The VAE makes {vae.latent_channels}-channel latents; FlashFace needs the SD1.5 VAE "
            f"({LATENT_CHANNELS} channels)."
        )
    rgbs = images_to_rgb(images)

    crops, kept = crop_faces(rgbs, detector, threshold, face_choice, face_index, no_face)
    logger.info("FlashFace: %d reference face(s) from images %s (detector: %s).", len(crops), kept, detector)
    pixels = torch.from_numpy(np.stack([np.asarray(crop) for crop in crops])).float() / 255.0
    latents = vae.encode(pixels).float()
    if previous is not None:
        if previous.latents.shape[1:] != latents.shape[1:]:
            raise ValueError(
                f"The earlier references are latents of shape {tuple(previous.latents.shape[1:])}, these are "
                f"{tuple(latents.shape[1:])}: encode all references with the same VAE."
            )
        latents = torch.cat([previous.latents.to(latents), latents])
    fill_to = max(previous.fill_to if previous is not None else 0, DEMO_REFERENCE_COUNT if fill_to_four else 0)
    return FlashFaceReferences(latents, fill_to), pixels
