"""The identity file: a safetensors file (never pickle) and every check made on reading one.

Tensors: ``face_crops`` ``[N, 224, 224, 3]`` float32 in 0..1 (the aligned crops) and
``latents`` ``[N, 4, h, w]`` float32 (their VAE latents, ComfyUI's LATENT convention).
Metadata (strings): ``format`` (``FORMAT``), ``format_version`` (``VERSION``), ``count``
(N), ``fill_to``, ``detector`` (the detector menu value, several joined by " + " for a
mixed chain) and ``vae_fingerprint`` (empty when unknown).

Reading refuses, naming the file and what to do: a file cut short, a file of another
format (not safetensors at all, a safetensors without this pack's metadata or of another
version, missing tensors, shapes that disagree), and crops made by a detector this pack does
not know. The header is checked first (``check_identity_file``, cheap: no tensor is read),
so the load node can refuse a graph before anything runs.
"""

import json
import math
import os
import struct
from dataclasses import dataclass

import torch

from ..faces.choices import Detector
from ..model.references import CROP_SIZE, DETECTOR_JOIN, LATENT_CHANNELS, FlashFaceReferences

FORMAT = "comfyui-flashface-identity"
VERSION = "1"
CROPS, LATENTS = "face_crops", "latents"
_MAX_HEADER = 100 << 20  # safetensors' own limit
_REDO = "Save the identity again from its photos with FlashFace Save Identity."


@dataclass(frozen=True)
class IdentityFile:
    """What a checked identity file holds."""

    face_crops: torch.Tensor
    latents: torch.Tensor
    fill_to: int
    detector: str
    vae_fingerprint: str | None


def _refuse(path: str, problem: str, todo: str = _REDO):
    raise ValueError(f"The identity file {path} {problem}. {todo}")


def _header(path: str) -> dict:
    """The safetensors header of ``path``, telling a file cut short from one of another format."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            start = file.read(8)
            length = struct.unpack("<Q", start)[0] if len(start) == 8 else None
            text = file.read(length) if length is not None and length <= min(_MAX_HEADER, size - 8) else None
    except OSError as error:
        _refuse(path, f"cannot be read ({error.strerror or error})", "Check that it exists and can be read.")
    if size == 0:
        _refuse(path, "is empty (0 bytes): it was cut short, e.g. by a full disk or an interrupted copy")
    if length is None:
        _refuse(path, f"is only {size} bytes long: it was cut short, or it is not an identity")
    if text is None:
        with open(path, "rb") as file:
            file.seek(8)
            looks_like_json = file.read(1) == b"{"
        if looks_like_json and length <= _MAX_HEADER:
            _refuse(path, f"was cut short: its header needs {length + 8} bytes but the file has {size}")
        _refuse(path, "is not a safetensors file" + (" (it is a zip archive, e.g. a PyTorch .ckpt/.pt renamed)"
                                                   if start.startswith(b"PK") else ""),
                "FlashFace identities are .safetensors files written by FlashFace Save Identity: pick one of those, or "
                "save the identity again from its photos.")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        _refuse(path, "is not a safetensors file (its header is not readable)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(v, int) for v in offsets)):
            _refuse(path, f"is not a readable safetensors file (tensor '{name}' has no data offsets)")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        _refuse(path, f"was cut short: its tensors need {8 + length + end} bytes but the file has {size}")
    return header


def _shape(header: dict, name: str) -> tuple[int, ...] | None:
    entry = header.get(name)
    return tuple(entry.get("shape", ())) if isinstance(entry, dict) else None


def check_identity_file(path: str) -> dict:
    """The metadata of identity file ``path`` once its header holds up; ValueError naming the file otherwise.

    Reads the header only: the format and version, both tensors with shapes that agree with
    each other and with ``count``, and a detector this pack knows.
    """
    header = _header(path)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        _refuse(path, "is a safetensors file but not a FlashFace identity (it lacks the pack's metadata)",
                "Pick a file written by FlashFace Save Identity; models belong in their own folders.")
    if metadata.get("format_version") != VERSION:
        _refuse(path, f"is a FlashFace identity of format version {metadata.get('format_version')!r}, and this pack "
                      f"reads version {VERSION}", "Update ComfyUI-FlashFace, or save the identity again from its photos.")
    crops, latents = _shape(header, CROPS), _shape(header, LATENTS)
    missing = [name for name, shape in ((CROPS, crops), (LATENTS, latents)) if shape is None]
    if missing:
        _refuse(path, f"lacks the tensor(s) {', '.join(missing)}")
    for name in (CROPS, LATENTS):
        if header[name].get("dtype") not in ("F32", "F16", "BF16", "F64"):
            _refuse(path, f"holds {name} of type {header[name].get('dtype')}, not floats")
    try:
        count, fill_to = int(metadata.get("count", "")), int(metadata.get("fill_to", ""))
    except ValueError:
        _refuse(path, "has no readable face count or fill_to in its metadata")
    if (len(crops) != 4 or crops[1:] != (CROP_SIZE, CROP_SIZE, 3) or len(latents) != 4
            or latents[1] != LATENT_CHANNELS or crops[0] != latents[0] or crops[0] != count or count < 1 or fill_to < 0):
        _refuse(path, f"holds shapes that do not agree: {CROPS} {list(crops)}, {LATENTS} {list(latents)}, count {count}, "
                      f"fill_to {fill_to} (expected {count} crops of {CROP_SIZE}x{CROP_SIZE}x3 and {count} "
                      f"{LATENT_CHANNELS}-channel latents)")
    known = {member.value for member in Detector}
    detectors = [name for name in str(metadata.get("detector", "")).split(DETECTOR_JOIN) if name]
    unknown = [name for name in detectors if name not in known]
    if unknown or not detectors:
        _refuse(path, f"was made with the face detector '{metadata.get('detector', '')}', which this pack does not know "
                      f"(it knows {', '.join(sorted(known))})",
                "Save the identity again from its photos with one of those detectors, or update ComfyUI-FlashFace.")
    return metadata


def read_identity_file(path: str) -> IdentityFile:
    """Identity file ``path`` checked and read on the CPU (safetensors; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    metadata = check_identity_file(path)
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        _refuse(path, f"cannot be read as safetensors ({error})")
    crops, latents = tensors[CROPS].float(), tensors[LATENTS].float()
    low, high = (float(v) for v in torch.aminmax(crops))
    if not (math.isfinite(low) and math.isfinite(high) and low >= 0 and high <= 1) or not torch.isfinite(latents).all():
        _refuse(path, "is damaged: its crops or latents hold values out of range (crops must be 0..1, latents finite)")
    return IdentityFile(crops, latents, int(metadata["fill_to"]), metadata["detector"],
                        metadata.get("vae_fingerprint") or None)


def identity_tensors(references: FlashFaceReferences) -> tuple[dict, dict]:
    """The tensors and metadata that store ``references``; ValueError when they lack what an identity needs."""
    if references.face_crops is None or not references.detector:
        raise ValueError(
            "These references carry no face crops or no detector (they were built without FlashFace Encode Reference "
            "Faces, or chained after such references), so they cannot be saved as an identity: encode the photos with "
            "FlashFace Encode Reference Faces and save its references."
        )
    tensors = {CROPS: references.face_crops.detach().to("cpu", torch.float32).contiguous(),
               LATENTS: references.latents.detach().to("cpu", torch.float32).contiguous()}
    metadata = {"format": FORMAT, "format_version": VERSION, "count": str(len(references)),
                "fill_to": str(references.fill_to), "detector": references.detector,
                "vae_fingerprint": references.vae_fingerprint or ""}
    return tensors, metadata
