"""Reading FlashFace checkpoints and converting the official key layout to ComfyUI's.

The official ``flashface.ckpt`` holds two SD1.5 U-Nets under the official module names
(``ori_*`` the main U-Net, ``ref_*`` the reference U-Net, ``time_embedding`` and ``head``
shared) plus the reference-attention layers (``self_attn.self_attn_first``). The pack's own
layout, used in memory and in converted ``.safetensors`` files, is:

* ``diffusion_model.*``: the main U-Net in ComfyUI ``UNetModel`` names (5 input channels),
  so ComfyUI's LoRA key mapping and model tools find it;
* ``reference_unet.{input_blocks,output_blocks}.*``: the reference U-Net's own blocks (its
  time embedding and middle block are the main U-Net's, as in the official code);
* ``reference_attention.<block>_<index>_<transformer>.*``: one ComfyUI ``CrossAttention``
  per attention block of the main middle block and decoder.

Every tensor of an official file is converted exactly once or dropped on purpose
(``DROPPED_PREFIXES``); anything else is an error, so a damaged or foreign file never
loads half-way.
"""

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .contract import reference_attention_name

PACK_FORMAT = "flashface-comfyui"
PACK_FORMAT_VERSION = "1"
MAIN_PREFIX = "diffusion_model."
REFERENCE_UNET_PREFIX = "reference_unet."
REFERENCE_ATTENTION_PREFIX = "reference_attention."
PACK_PREFIXES = (MAIN_PREFIX, REFERENCE_UNET_PREFIX, REFERENCE_ATTENTION_PREFIX)

# Unused by the released model: `ref_middle` never runs (the reference pass uses the main
# middle block) and `encoder/middle/decoder` alias the very same tensors as `ori_*`.
DROPPED_PREFIXES = ("ref_middle.", "encoder.", "middle.", "decoder.")

_RESIDUAL = {
    "layer1.0": "in_layers.0",
    "layer1.2": "in_layers.2",
    "embedding.1": "emb_layers.1",
    "layer2.0": "out_layers.0",
    "layer2.3": "out_layers.3",
    "shortcut": "skip_connection",
}
_ATTENTION_STACK = {"norm1": "norm", "conv1": "proj_in", "conv2": "proj_out"}
_TRANSFORMER = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0.proj": "ff.net.0.proj",
    "ffn.2": "ff.net.2",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
}
_REFERENCE_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
_REFERENCE_ATTENTION_MARK = ".self_attn.self_attn_first."


class CheckpointError(ValueError):
    """A file that is not a usable FlashFace checkpoint; the message says what to do."""


@dataclass
class ConversionReport:
    converted: dict[str, str] = field(default_factory=dict)  # official key -> pack key
    dropped: list[str] = field(default_factory=list)


def _map_pairs(text: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if text == old or text.startswith(old + "."):
            return new + text[len(old):]
    return None


def _convert_transformer_block(rest: str) -> str | None:
    return _map_pairs(rest, _TRANSFORMER)


def _convert_inner(inner: str) -> str | None:
    """Convert a key inside one sub-module of a U-Net block (a ResBlock, attention stack or resampler)."""
    head = inner.split(".", 1)[0]
    if head.isdigit():  # upsample: `Sequential(Upsample, Conv2d)`; the conv is `.1`
        return "conv." + inner.split(".", 1)[1] if head == "1" else None
    converted = _map_pairs(inner, _RESIDUAL) or _map_pairs(inner, _ATTENTION_STACK)
    if converted is not None:
        return converted
    if head == "blocks":
        _, index, rest = inner.split(".", 2)
        block = _convert_transformer_block(rest)
        return None if block is None else f"transformer_blocks.{index}.{block}"
    return None


def _convert_unet_key(section: str, rest: str) -> str | None:
    """``section`` is encoder/middle/decoder, ``rest`` the key after ``<prefix>_<section>.``."""
    index, _, tail = rest.partition(".")
    if not index.isdigit():
        return None
    if section == "encoder" and tail in ("weight", "bias"):
        # A bare conv: the stem at 0, a downsample conv elsewhere.
        return f"input_blocks.{index}.0.{tail}" if index == "0" else f"input_blocks.{index}.0.op.{tail}"
    if section == "middle":
        inner = _convert_inner(tail)
        return None if inner is None else f"middle_block.{index}.{inner}"
    sub, _, inner = tail.partition(".")
    converted = _convert_inner(inner) if sub.isdigit() else None
    if converted is None:
        return None
    blocks = "input_blocks" if section == "encoder" else "output_blocks"
    return f"{blocks}.{index}.{sub}.{converted}"


def _convert_reference_attention(section: str, rest: str) -> str | None:
    """``ori_middle.1.blocks.0.self_attn.self_attn_first.q.weight`` -> ``reference_attention.middle_0_0.to_q.weight``."""
    location, _, projection = rest.partition(_REFERENCE_ATTENTION_MARK)
    parts = location.split(".")  # decoder: <block>.<sub>.blocks.<transformer>; middle: <sub>.blocks.<transformer>
    if section == "middle":
        parts = ["0"] + parts
    if len(parts) != 4 or parts[2] != "blocks" or not (parts[0].isdigit() and parts[3].isdigit()):
        return None
    name, _, tail = projection.partition(".")
    if name not in _REFERENCE_ATTENTION:
        return None
    block = (section if section == "middle" else "output", int(parts[0]))
    return f"{REFERENCE_ATTENTION_PREFIX}{reference_attention_name(block, int(parts[3]))}.{_REFERENCE_ATTENTION[name]}.{tail}"


def convert_official_key(key: str) -> str | None:
    """The pack-layout name of an official key, or None for a key that has none."""
    if key.startswith("time_embedding."):
        return MAIN_PREFIX + "time_embed." + key[len("time_embedding."):]
    if key.startswith("head."):
        return MAIN_PREFIX + "out." + key[len("head."):]
    owner, _, rest = key.partition("_")
    section, _, rest = rest.partition(".")
    if owner not in ("ori", "ref") or section not in ("encoder", "middle", "decoder"):
        return None
    if _REFERENCE_ATTENTION_MARK in rest:
        return _convert_reference_attention(section, rest) if owner == "ori" and section != "encoder" else None
    if owner == "ref" and section == "middle":
        return None
    converted = _convert_unet_key(section, rest)
    if converted is None:
        return None
    return (MAIN_PREFIX if owner == "ori" else REFERENCE_UNET_PREFIX) + converted


def is_official_layout(keys) -> bool:
    return any(k.startswith("ori_encoder.") for k in keys)


def is_pack_layout(keys) -> bool:
    return any(k.startswith(REFERENCE_ATTENTION_PREFIX) for k in keys) and any(k.startswith(MAIN_PREFIX) for k in keys)


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


def convert_official(state_dict: dict, source: Path | str = "checkpoint") -> tuple[dict, ConversionReport]:
    """Convert an official state dict to the pack layout, tensor by tensor (no copies)."""
    report = ConversionReport()
    out = {}
    unknown = []
    for key in state_dict:
        if key.startswith(DROPPED_PREFIXES):
            report.dropped.append(key)
            continue
        new_key = convert_official_key(key)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in out:
            raise CheckpointError(f"{Path(str(source)).name}: two tensors map to {new_key}; the file is not a FlashFace checkpoint.")
        out[new_key] = state_dict[key]
        report.converted[key] = new_key
    if unknown:
        raise CheckpointError(
            f"{Path(str(source)).name} has {len(unknown)} tensors that are not part of FlashFace-SD1.5 "
            f"(e.g. {', '.join(unknown[:3])}); it is a different model or a damaged file."
        )
    return out, report


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
    except pickle.UnpicklingError as error:
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
        converted, report = convert_official(state_dict, path)
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
