"""Reading FlashFace checkpoint files, in either key layout (``key_layout.py``), with clear errors.

A file is read without running code (``weights_only=True``, or safetensors), checked
against the FlashFace layout and shapes before any model is built, and every way it can
fail says what to do.
"""

import logging
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .key_layout import MAIN_PREFIX, PACK_PREFIXES, REFERENCE_ATTENTION_PREFIX, REFERENCE_UNET_PREFIX, convert_official, is_official_layout, is_pack_layout


class CheckpointError(ValueError):
    """A file that is not a usable FlashFace checkpoint; the message says what to do."""


def _describe_foreign(path: Path, keys: list[str]) -> str:
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        kind = "a Stable Diffusion checkpoint (put it in models/checkpoints and load it with Load Checkpoint)"
    elif any(("lora_" in k or ".lora." in k or "lora_A" in k or ".alpha" in k) for k in keys):
        kind = "a LoRA (load it with LoraLoader on the FlashFace MODEL)"
    elif any(k.startswith(("input_blocks.", "diffusion_model.input_blocks.")) for k in keys):
        kind = "a plain diffusion model without FlashFace's reference U-Net"
    else:
        kind = "not a FlashFace checkpoint"
    return (
        f"{path.name} is {kind}. LoadFlashFace expects the official FlashFace-SD1.5 "
        f"'flashface.ckpt' (keys like ori_encoder.0.weight, ref_encoder.0.weight) or a file "
        f"made by `python -m flashface_core.convert`. Found keys: {sample}."
    )


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format; a legacy pickle


def _load_pickle(path: Path) -> dict:
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        looks_like = "text or a web page" if head.lstrip()[:1] in (b"<", b"{") or head.isascii() else "another format"
        raise CheckpointError(
            f"{path.name} is not a torch checkpoint (it looks like {looks_like}); the download probably failed: "
            f"download it again."
        )
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path.name} was refused: it is not a plain tensor checkpoint (it holds Python objects or "
            f"code, which are never loaded). Use the official flashface.ckpt."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"{path.name} could not be read as a torch checkpoint ({str(error).splitlines()[0]}). "
            f"It is truncated or not a checkpoint: download it again."
        ) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors; it is not a FlashFace checkpoint.")
    return data


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path.name} could not be read as safetensors ({error}). It is truncated or not a "
            f"safetensors file: download or convert it again."
        ) from None


def load_flashface_state_dict(path: str | Path) -> dict:
    """Read a FlashFace checkpoint in either layout and return it in the pack layout.

    Tensors stay memory-mapped where the format allows; nothing is copied or cast here.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"FlashFace checkpoint not found: {path}")
    if path.suffix.lower() in (".safetensors", ".sft"):
        state_dict, _ = _load_safetensors(path)
    else:
        state_dict = _load_pickle(path)
    keys = list(state_dict)
    if is_pack_layout(keys):
        extra = [k for k in keys if not k.startswith(PACK_PREFIXES)]
        if extra:
            raise CheckpointError(f"{path.name} holds tensors outside the FlashFace layout (e.g. {extra[0]}); convert it again.")
        converted = state_dict
    elif is_official_layout(keys):
        converted, report = convert_official(state_dict)
        if report.collisions:
            raise CheckpointError(f"{path.name}: two tensors map to {report.collisions[0]}; the file is not a FlashFace checkpoint.")
        if report.unknown:
            raise CheckpointError(
                f"{path.name} has {len(report.unknown)} tensors that are not part of FlashFace-SD1.5 "
                f"(e.g. {', '.join(report.unknown[:3])}); it is a different model or a damaged file."
            )
        logging.debug("FlashFace: converted %d tensors, dropped %d unused", len(report.converted), len(report.dropped))
    else:
        raise CheckpointError(_describe_foreign(path, keys))
    validate_pack_state_dict(converted, path)
    return converted


def validate_pack_state_dict(state_dict: dict, source: Path | str = "checkpoint"):
    """Shape checks that catch foreign or partial files before any model is built."""
    name = Path(str(source)).name
    main_stem = state_dict.get(MAIN_PREFIX + "input_blocks.0.0.weight")
    ref_stem = state_dict.get(REFERENCE_UNET_PREFIX + "input_blocks.0.0.weight")
    if main_stem is None or ref_stem is None:
        raise CheckpointError(f"{name} lacks the {'main' if main_stem is None else 'reference'} U-Net's first layer; the file is incomplete.")
    if main_stem.ndim != 4 or main_stem.shape[1] != 5:
        raise CheckpointError(
            f"{name}: the main U-Net takes {main_stem.shape[1]} input channels; FlashFace's takes 5 "
            f"(latent + face-position mask). This is not a FlashFace-SD1.5 checkpoint."
        )
    if ref_stem.ndim != 4 or ref_stem.shape[1] != 4:
        raise CheckpointError(f"{name}: the reference U-Net takes {ref_stem.shape[1]} input channels, expected 4.")
    if not any(k.startswith(REFERENCE_ATTENTION_PREFIX) for k in state_dict):
        raise CheckpointError(f"{name} has no reference-attention layers; it is not a FlashFace checkpoint.")
    for key in (MAIN_PREFIX + "time_embed.0.weight", MAIN_PREFIX + "out.2.weight", MAIN_PREFIX + "middle_block.1.norm.weight"):
        if key not in state_dict:
            raise CheckpointError(f"{name} lacks {key}; the file is incomplete: download or convert it again.")
