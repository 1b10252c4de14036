"""Reading FlashFace checkpoint files, in either key layout (``key_layout.py``), with clear errors.

A file is read without running code (``weights_only=True``, or safetensors), checked
against the FlashFace layout and shapes before any model is built, and every way it can
fail says what to do.
"""

import logging
import pickle
from pathlib import Path

import torch
from safetensors import safe_open

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
# What an allocation failure says: MemoryError, or torch's CPU allocator and CUDA/MPS errors.
_OUT_OF_MEMORY_MARKS = ("can't allocate", "defaultcpuallocator", "out of memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(mark in str(error).lower() for mark in _OUT_OF_MEMORY_MARKS)


def out_of_memory(name: str, doing: str) -> CheckpointError:
    """The message for an allocation failure: the file is fine, memory is short."""
    return CheckpointError(
        f"Out of memory while {doing} {name}; the file itself is not at fault. Set weight_dtype to fp16 (half "
        f"the memory of fp32), close other programs and unload other models (ComfyUI's 'Unload models'), "
        f"or convert the file to fp16 once with `python -m flashface_core.convert`."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def mmap_disabled() -> bool:
    """ComfyUI's ``--disable-mmap``, read when a file is loaded (``comfy.utils`` holds the flag);
    off without a ComfyUI host (the converter on its own)."""
    try:
        import comfy.utils
    except ImportError:
        return False
    return bool(getattr(comfy.utils, "DISABLE_MMAP", False))


def _torch_load(path: Path, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if not mmap or "mmap" not in str(error):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


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
        # Memory-mapped as the spec asks (a 10 GB file on 16 GB machines), unless ComfyUI runs with --disable-mmap.
        data = _torch_load(path, mmap=not mmap_disabled())
    except Exception as error:  # the weights-only unpickler and the zip reader raise many kinds on crafted input
        if isinstance(error, PermissionError):
            raise
        if is_out_of_memory(error):
            raise out_of_memory(path.name, "reading") from None
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path.name} was refused: it is not a plain tensor checkpoint (it holds Python objects or "
                f"code, which are never loaded). Use the official flashface.ckpt."
            ) from None
        raise CheckpointError(
            f"{path.name} could not be read as a torch checkpoint ({_first_line(error)}). "
            f"It is truncated or damaged: download it again."
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    _check_tensors(path, data)
    return data


def _check_tensors(path: Path, data):
    """A flat dict of named, plain (dense, floating-point) tensors; anything else is not a checkpoint."""
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise CheckpointError(f"{path.name} does not hold a state dict of named tensors; it is not a FlashFace checkpoint.")
    for key, tensor in data.items():
        if tensor.layout != torch.strided or not tensor.is_floating_point() or tensor.is_quantized:
            raise CheckpointError(
                f"{path.name}: tensor {key} is {tensor.dtype} ({tensor.layout}); a FlashFace checkpoint holds "
                f"fp32, fp16 or bf16 weights. The file is damaged or another model."
            )


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    copy = mmap_disabled()  # as comfy.utils.load_torch_file does under --disable-mmap
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {}
            for key in f.keys():
                tensor = f.get_tensor(key)
                tensors[key] = tensor.to(device="cpu", copy=True) if copy else tensor
    except Exception as error:  # SafetensorError (lying header, bad dtype), OSError, a bad header's JSON
        if isinstance(error, PermissionError):
            raise
        if is_out_of_memory(error):
            raise out_of_memory(path.name, "reading") from None
        raise CheckpointError(
            f"{path.name} could not be read as safetensors ({_first_line(error)}). It is truncated, damaged or not "
            f"a safetensors file: download or convert it again."
        ) from None
    _check_tensors(path, tensors)
    return tensors, metadata


def load_flashface_state_dict(path: str | Path) -> dict:
    """Read a FlashFace checkpoint in either layout and return it in the pack layout.

    Tensors stay memory-mapped where the format allows; nothing is copied or cast here.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"FlashFace checkpoint not found: {path}")
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            state_dict, _ = _load_safetensors(path)
        else:
            state_dict = _load_pickle(path)
    except OSError as error:  # before reading: a file that cannot be opened
        raise CheckpointError(
            f"{path.name} could not be opened ({_first_line(error)}): check that the file is readable by ComfyUI."
        ) from None
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
    for stem, which, expected in ((main_stem, "main", 5), (ref_stem, "reference", 4)):
        if stem.ndim != 4:
            raise CheckpointError(
                f"{name}: the {which} U-Net's first layer has shape {tuple(stem.shape)}, not a convolution's; "
                f"the file is damaged or not a FlashFace-SD1.5 checkpoint."
            )
    if main_stem.shape[1] != 5:
        raise CheckpointError(
            f"{name}: the main U-Net takes {main_stem.shape[1]} input channels; FlashFace's takes 5 "
            f"(latent + face-position mask). This is not a FlashFace-SD1.5 checkpoint."
        )
    if ref_stem.shape[1] != 4:
        raise CheckpointError(f"{name}: the reference U-Net takes {ref_stem.shape[1]} input channels, expected 4.")
    if not any(k.startswith(REFERENCE_ATTENTION_PREFIX) for k in state_dict):
        raise CheckpointError(f"{name} has no reference-attention layers; it is not a FlashFace checkpoint.")
    for key in (MAIN_PREFIX + "time_embed.0.weight", MAIN_PREFIX + "out.2.weight", MAIN_PREFIX + "middle_block.1.norm.weight"):
        if key not in state_dict:
            raise CheckpointError(f"{name} lacks {key}; the file is incomplete: download or convert it again.")
