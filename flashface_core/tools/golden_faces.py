"""The detector golden check: the official detection path of a golden set, reproduced and compared.

A set is a folder with ``retinaface_resnet50_random.pth``, ``golden.json`` (each photo's file
and threshold), ``golden.safetensors`` (the official network input, raw heads, final boxes,
landmarks and crops per photo) and the photos. No ComfyUI needed: the network runs in
float32 on the CPU.
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ..faces import alignment, retinaface
from . import golden_sets
from .golden_sets import SETTINGS, TENSORS, relative_error

WEIGHTS = "retinaface_resnet50_random.pth"
# The bars: raw heads (relative), boxes and landmarks (photo pixels), scores (absolute),
# crops (mean absolute difference in 0..255).
HEAD_RELATIVE = 1e-4
PIXELS = 0.05
SCORE = 1e-4
CROP_MEAN = 0.5


def find_golden_sets(roots) -> list[Path]:
    """Every folder below ``roots`` holding a complete detector golden set."""
    return golden_sets.find_golden_sets(roots, WEIGHTS)


def _max_abs(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).abs().max()) if reference.numel() else 0.0


def check_photo(network, folder: Path, photo: dict, golden: dict) -> dict:
    """The errors of one photo against its golden tensors."""
    name = photo["name"]
    with Image.open(folder / photo["file"]) as image:
        rgb = np.asarray(image.convert("RGB"))
    pixels, _, _, _ = retinaface.to_input(rgb)
    scores, box_deltas, landmark_deltas = retinaface.raw_outputs(network, pixels)
    boxes, landmarks = retinaface.detect(network, rgb, photo["min_thr"])
    errors = {
        "input": _max_abs(pixels, golden[f"{name}.input"]),
        "scores": relative_error(scores, golden[f"{name}.scores"]),
        "bbox_deltas": relative_error(box_deltas, golden[f"{name}.bbox_deltas"]),
        "landmark_deltas": relative_error(landmark_deltas, golden[f"{name}.landmark_deltas"]),
        "faces": [boxes.shape[0], golden[f"{name}.boxes"].shape[0]],
    }
    if boxes.shape[0] != golden[f"{name}.boxes"].shape[0]:
        return errors
    image = Image.fromarray(rgb)
    crops = np.stack([np.asarray(alignment.align_face(image, box, points.numpy()))
                      for box, points in zip(boxes, landmarks, strict=True)]) if len(boxes) else np.zeros((0, 224, 224, 3))
    official = golden[f"{name}.crops"].numpy().astype(np.float64)
    errors.update(
        boxes_px=_max_abs(boxes[:, :4], golden[f"{name}.boxes"][:, :4]),
        landmarks_px=_max_abs(landmarks, golden[f"{name}.landmarks"]),
        box_scores=_max_abs(boxes[:, 4], golden[f"{name}.boxes"][:, 4]),
        crops_mean_abs=float(np.abs(crops - official).mean(axis=(1, 2, 3)).max()) if len(crops) else 0.0,
    )
    return errors


def photo_ok(errors: dict) -> bool:
    return (
        errors["faces"][0] == errors["faces"][1]
        and errors["input"] <= 0.5 / 255
        and max(errors["scores"], errors["bbox_deltas"], errors["landmark_deltas"]) <= HEAD_RELATIVE
        and max(errors["boxes_px"], errors["landmarks_px"]) <= PIXELS
        and errors["box_scores"] <= SCORE
        and errors["crops_mean_abs"] < CROP_MEAN
    )


def check(folder: Path) -> dict:
    """Per photo of the set, its errors; the network loaded as the detector node loads it."""
    settings = json.loads((folder / SETTINGS).read_text())
    golden = load_file(str(folder / TENSORS))
    network = retinaface.build_network(retinaface.load_weights(str(folder / WEIGHTS)))
    with torch.inference_mode():
        return {photo["name"]: check_photo(network, folder, photo, golden) for photo in settings["photos"]}
