"""Reference photos to FlashFace references: detect, choose a face, crop, VAE-encode.

All the policies of the reference-face nodes live here: which face of a photo is used,
what happens to a photo without one, detection retries, the straightening pass,
pre-cropped input, photos from several inputs of different sizes, and filling up to four
references by repetition as the official demo does. Inputs are checked before any
detector is loaded or anything is encoded.
"""

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model.references import DETECTOR_JOIN, LATENT_CHANNELS, FlashFaceReferences
from . import alignment, detection
from .vae_fingerprint import same_vae, vae_fingerprint
from .choices import Detector, FaceChoice, NoFace, Straighten

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.6  # the official demo's

MIN_IMAGE_SIZE = 64
# Photos larger than this (longer side) are shrunk by a whole factor (box average) before
# anything else: the crop is 224 pixels and detection runs at 640, and a 20000-pixel photo
# would otherwise need gigabytes of copies.
MAX_IMAGE_SIDE = 4096
_CHUNK_VALUES = 1 << 24  # values converted at a time
_STRAIGHTENING_PASSES = 5
# A detector sees the whole photo at its detection size (longer side); a face needs at least
# this many pixels of the shorter side there to be found.
MIN_DETECTED_SIDE = 32
DEMO_REFERENCE_COUNT = 4
_RANGE_TOLERANCE = 1e-3


def _check_images(images, name: str, what: str):
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"{what} ({name}) must be a ComfyUI IMAGE batch [N, H, W, C]; got "
            f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}."
        )
    count, height, width, channels = images.shape
    if count == 0:
        raise ValueError(f"The {what.lower()} batch is empty ({name}): connect at least one photo.")
    if channels not in (1, 3, 4):
        raise ValueError(
            f"{what} ({name}) have {channels} channels; expected RGB (3), grayscale (1) or RGBA (4). "
            "Convert them to RGB first."
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{what} ({name}) are {images.dtype}, but a ComfyUI IMAGE holds floats in 0..1 "
            "(e.g. 8- or 16-bit values divided by 255 or 65535). Load them with LoadImage."
        )
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{what} ({name}) are {width}x{height} pixels; at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} "
            "is needed to find and crop a face. Use larger photos."
        )
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)) or low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{what[:-1]} values ({name}) run from {low:g} to {high:g}; a ComfyUI IMAGE holds 0..1 "
            "(0..255 or 0..65535 values must be divided by 255 or 65535 first)."
        )


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    """One IMAGE [H, W, C] to uint8 RGB [H', W', 3], a few rows at a time, shrunk when huge."""
    height, width, channels = image.shape
    # Never below the smallest photo taken: a 64x300000 strip is kept whole, not shrunk to nothing.
    factor = max(1, min(math.ceil(max(height, width) / MAX_IMAGE_SIDE), min(height, width) // MIN_IMAGE_SIZE))
    if factor > 1:
        height, width = height // factor * factor, width // factor * factor
        logger.info("FlashFace: a %dx%d reference photo is shrunk %dx before detection.", width, height, factor)
    rows = max(1, _CHUNK_VALUES // (width * channels * factor)) * factor
    out = np.empty((height // factor, width // factor, 3), dtype=np.uint8)
    for top in range(0, height, rows):
        chunk = image[top:min(top + rows, height), :width].detach().to(device="cpu", dtype=torch.float32)
        if factor > 1:
            chunk = F.avg_pool2d(chunk.movedim(-1, 0), factor).movedim(0, -1)
        if channels == 1:
            chunk = chunk.expand(-1, -1, 3)
        out[top // factor:top // factor + chunk.shape[0]] = (
            (chunk[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        )
    return out


def images_to_rgb(images, name: str = "images", what: str = "Reference images") -> list[np.ndarray]:
    """ComfyUI IMAGE [N, H, W, C] floats in 0..1 to uint8 RGB arrays, with clear errors.

    One channel (grayscale) is repeated to RGB and a fourth (alpha) is dropped, as
    LoadImage does.
    """
    _check_images(images, name, what)
    return [_to_rgb(image) for image in images]


def choose_face(faces, choice: str, index: int, label: str):
    """The face of one photo the user asked for, or None when it holds none."""
    if not faces:
        return None
    if choice == FaceChoice.LARGEST:
        return max(faces, key=lambda face: face.area)
    if choice == FaceChoice.BY_INDEX:
        ordered = sorted(faces, key=lambda face: face.centre_x)
        if index >= len(ordered):
            raise ValueError(
                f"{label[0].upper()}{label[1:]} holds {len(ordered)} face(s), so there is no face index {index} "
                "(counting from 0, left to right). Lower face_index."
            )
        return ordered[index]
    if choice == FaceChoice.ERROR_IF_SEVERAL:
        if len(faces) > 1:
            raise ValueError(
                f"{label[0].upper()}{label[1:]} holds {len(faces)} faces; FlashFace wants one face per reference. "
                f"Crop the photo, or set the face choice to '{FaceChoice.LARGEST}' or '{FaceChoice.BY_INDEX}'."
            )
        return faces[0]
    raise ValueError(f"Unknown face choice '{choice}'; choose one of {', '.join(FaceChoice)}.")


def detect_faces(detector, rgb: np.ndarray, threshold: float):
    """Faces in one photo, retrying at the detector's smaller sizes before giving up."""
    for size in detector.sizes:
        faces = detector.detect(rgb, threshold, size)
        if faces:
            return faces
    return []


def _remaining_angle(detector, image: Image.Image, centre, side: float, angle: float, threshold: float):
    """The official angle still left on the face once the photo is turned by ``angle`` about its
    centre, the median over the detector's sizes (its landmarks wobble with scale); None if
    the face is found no more."""
    turned = image.rotate(angle, resample=Image.Resampling.BILINEAR, center=centre)
    cut = np.asarray(turned.crop(tuple(round(v) for v in (centre[0] - side / 2, centre[1] - side / 2,
                                                           centre[0] + side / 2, centre[1] + side / 2))))

    def distance(found):
        return math.hypot(found.centre_x - cut.shape[1] / 2, (found.box[1] + found.box[3]) / 2 - cut.shape[0] / 2)

    rest = []
    for size in detector.sizes:
        near = [found for found in detector.detect(cut, threshold, size) if distance(found) < side / 9]
        if near:
            rest.append(alignment.official_angle(min(near, key=distance).landmarks))
    return float(np.median(rest)) if rest else None


def straightened_angle(detector, image: Image.Image, face, threshold: float) -> float:
    """The crop angle corrected by looking again at the face turned straight.

    Detectors other than RetinaFace place the eyes of a tilted face too close to level, so
    the first angle falls short. The photo is turned about the face's centre by the angle so
    far, a square around the face (the face a third of its side) is detected again, and
    what is left is added; repeated while the correction is above half a degree (at most
    five times). Without a face there, the angle so far stays.
    """
    angle = alignment.official_angle(face.landmarks)
    x1, y1, x2, y2 = face.box
    centre, side = ((x1 + x2) / 2, (y1 + y2) / 2), 3 * max(x2 - x1, y2 - y1)
    if side < MIN_DETECTED_SIDE / 4:  # too few pixels to look again at
        return angle
    for _ in range(_STRAIGHTENING_PASSES):
        rest = _remaining_angle(detector, image, centre, side, angle, threshold)
        if rest is None:
            logger.info("FlashFace: the straightening pass found the face no more; its angle so far is kept.")
            break
        angle += rest
        if abs(rest) < 0.5:
            break
    return angle


def _uses_two_passes(straighten: str, detector_name: str) -> bool:
    if straighten == Straighten.AUTO:
        return detector_name != Detector.RETINAFACE
    return straighten == Straighten.AGAIN


def crop_faces(photos, detector_name: str, threshold: float, face_choice: str, face_index: int, no_face: str,
               straighten: str = Straighten.AUTO):
    """The official 224x224 crops of the chosen faces (PIL images) and the indices they came from.

    ``photos`` are (label, uint8 RGB array) pairs in reference order.
    """
    if detector_name == Detector.PRE_CROPPED:
        return [alignment.fit_to_square(Image.fromarray(rgb)) for _, rgb in photos], list(range(len(photos)))
    detector = detection.load_detector(detector_name)
    two_passes = _uses_two_passes(straighten, detector_name)
    crops, kept = [], []
    for photo_index, (label, rgb) in enumerate(photos):
        height, width = rgb.shape[:2]
        seen_side = min(height, width) * max(detector.sizes) / max(height, width)
        faces = detect_faces(detector, rgb, threshold) if seen_side >= MIN_DETECTED_SIDE else []
        face = choose_face(faces, face_choice, face_index, label)
        if face is None and seen_side < MIN_DETECTED_SIDE:
            message = (
                f"No face can be found in {label}: it is {width}x{height} pixels, and the {detector_name} detector sees "
                f"it {max(detector.sizes)} pixels long, so only {seen_side:.1f} pixels across; crop it around the face."
            )
        elif face is None:
            message = (
                f"No face found in {label} by the {detector_name} detector on "
                f"{detector.provider} at threshold {threshold:g}"
                + (f", even at detection sizes {', '.join(map(str, detector.sizes))}." if len(detector.sizes) > 1
                   else f" (detection size {detector.sizes[0]}).")
            )
        if face is None:
            if no_face == NoFace.SKIP:
                logger.warning("FlashFace: %s Skipping it.", message)
                continue
            raise ValueError(
                f"{message} Lower the threshold, try another detector, set no_face to '{NoFace.SKIP}', or crop "
                f"the face yourself and use the detector '{Detector.PRE_CROPPED}'."
            )
        if len(faces) > 1:
            logger.info("FlashFace: %s holds %d faces; using the %s one.", label, len(faces), face_choice)
        image = Image.fromarray(rgb)
        angle = straightened_angle(detector, image, face, threshold) if two_passes else None
        try:
            crops.append(alignment.align_face(image, face.box, face.landmarks, angle=angle))
        except ValueError as error:  # a face box of no pixels
            raise ValueError(f"{label}: {error} Lower the threshold or crop the photo around the face.") from None
        kept.append(photo_index)
    if not crops:
        raise ValueError(
            f"No face found in any of the {len(photos)} reference images by the {detector_name} detector on "
            f"{detector.provider}. Lower the threshold, or crop the faces yourself and use the detector "
            f"'{Detector.PRE_CROPPED}'."
        )
    return crops, kept


def _photos(images, earlier: int = 0) -> list[tuple[str, np.ndarray]]:
    """(label, uint8 RGB) per photo from one IMAGE or (input name, IMAGE) pairs, in order.

    The label names the photo's place among all references, the chained ``earlier`` ones
    included, and its input and place in that input's batch, counting from 0."""
    inputs = [("images", images)] if isinstance(images, torch.Tensor) else list(images)
    if not inputs:
        raise ValueError("No reference images: connect at least one photo.")
    photos = []
    for name, batch in inputs:
        for item, rgb in enumerate(images_to_rgb(batch, name)):
            chained = f", after {earlier} chained" if earlier else ""
            photos.append((f"reference image {earlier + len(photos)} ({name} #{item}{chained}, counting from 0)", rgb))
    return photos


def encode_reference_faces(
    vae,
    images,
    detector: str = Detector.RETINAFACE,
    face_choice: str = FaceChoice.LARGEST,
    face_index: int = 0,
    no_face: str = NoFace.ERROR,
    threshold: float = DEFAULT_THRESHOLD,
    fill_to_four: bool = True,
    previous: FlashFaceReferences | None = None,
    straighten: str = Straighten.AUTO,
):
    """Photos (or face crops) to ``FlashFaceReferences`` plus the crops as an IMAGE batch.

    ``images`` is one IMAGE batch or a list of (input name, IMAGE) pairs, so photos of
    different sizes go into one node. ``previous`` references come first (chained nodes);
    the fill to four counts them too.
    """
    detector = Detector.checked(detector, "face detector")
    face_choice = FaceChoice.checked(face_choice, "face choice")
    no_face = NoFace.checked(no_face, "no-face policy")
    straighten = Straighten.checked(straighten, "straightening")
    if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
        raise ValueError(
            f"The VAE makes {vae.latent_channels}-channel latents; FlashFace needs the SD1.5 VAE "
            f"({LATENT_CHANNELS} channels)."
        )
    photos = _photos(images, len(previous) if previous is not None else 0)

    crops, kept = crop_faces(photos, detector, threshold, face_choice, face_index, no_face, straighten)
    logger.info("FlashFace: %d reference face(s) from images %s (detector: %s).", len(crops), kept, detector)
    pixels = torch.from_numpy(np.stack([np.asarray(crop) for crop in crops])).float() / 255.0
    latents = vae.encode(pixels).float()
    fill_to = max(previous.fill_to if previous is not None else 0, DEMO_REFERENCE_COUNT if fill_to_four else 0)
    provenance = dict(face_crops=pixels, detector=str(detector), vae_fingerprint=vae_fingerprint(vae))
    if previous is not None:
        if previous.latents.shape[1:] != latents.shape[1:]:
            raise ValueError(
                f"The earlier references are latents of shape {tuple(previous.latents.shape[1:])}, these are "
                f"{tuple(latents.shape[1:])}: encode all references with the same VAE."
            )
        latents = torch.cat([previous.latents.to(latents), latents])
        provenance = chained_provenance(previous, **provenance)
    return FlashFaceReferences(latents, fill_to, **provenance), pixels


def chained_provenance(previous: FlashFaceReferences, face_crops: torch.Tensor, detector: str,
                       vae_fingerprint: str | None) -> dict:
    """What the references of a chain record: the crops of all, every detector used (in order of
    first use, so a mixed chain names each) and the VAE's fingerprint only when one VAE made every row."""
    crops = None if previous.face_crops is None else torch.cat([previous.face_crops.to(face_crops), face_crops])
    detectors = previous.detectors() + [name for name in [detector] if name not in previous.detectors()]
    if not previous.detectors():  # references built without provenance: what made the earlier rows is unknown
        detectors = []
    same = previous.vae_fingerprint is not None and same_vae(previous.vae_fingerprint, vae_fingerprint)
    return dict(face_crops=crops, detector=DETECTOR_JOIN.join(detectors) or None,
                vae_fingerprint=vae_fingerprint if same else None)
