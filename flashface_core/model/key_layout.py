"""The official FlashFace key layout and the pack's, and the conversion between them.

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
(``DROPPED_PREFIXES``); the conversion reports anything else, so that the reader
(``checkpoint.py``) refuses a damaged or foreign file instead of loading it half-way.
"""

from dataclasses import dataclass, field

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


def reference_attention_name(block: tuple[str, int], transformer_index: int) -> str:
    """Module name of the reference attention at ComfyUI's ``transformer_options['block']``."""
    return f"{block[0]}_{block[1]}_{transformer_index}"


@dataclass
class ConversionReport:
    converted: dict[str, str] = field(default_factory=dict)  # official key -> pack key
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # official keys with no pack name
    collisions: list[str] = field(default_factory=list)  # pack names two official keys map to


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
    if head.isdecimal():  # upsample: `Sequential(Upsample, Conv2d)`; the conv is `.1`
        return "conv." + inner.split(".", 1)[1] if head == "1" and "." in inner else None
    converted = _map_pairs(inner, _RESIDUAL) or _map_pairs(inner, _ATTENTION_STACK)
    if converted is not None:
        return converted
    if head == "blocks":
        parts = inner.split(".", 2)
        if len(parts) != 3 or not parts[1].isdecimal():
            return None
        _, index, rest = parts
        block = _convert_transformer_block(rest)
        return None if block is None else f"transformer_blocks.{index}.{block}"
    return None


def _convert_unet_key(section: str, rest: str) -> str | None:
    """``section`` is encoder/middle/decoder, ``rest`` the key after ``<prefix>_<section>.``."""
    index, _, tail = rest.partition(".")
    if not index.isdecimal():
        return None
    if section == "encoder" and tail in ("weight", "bias"):
        # A bare conv: the stem at 0, a downsample conv elsewhere.
        return f"input_blocks.{index}.0.{tail}" if index == "0" else f"input_blocks.{index}.0.op.{tail}"
    if section == "middle":
        inner = _convert_inner(tail)
        return None if inner is None else f"middle_block.{index}.{inner}"
    sub, _, inner = tail.partition(".")
    converted = _convert_inner(inner) if sub.isdecimal() else None
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
    if len(parts) != 4 or parts[2] != "blocks" or not (parts[0].isdecimal() and parts[3].isdecimal()):
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


def convert_official(state_dict: dict) -> tuple[dict, ConversionReport]:
    """Convert an official state dict to the pack layout, tensor by tensor (no copies).

    Keys that have no pack name, or that collide, are listed in the report, not converted.
    """
    report = ConversionReport()
    out = {}
    for key in state_dict:
        if key.startswith(DROPPED_PREFIXES):
            report.dropped.append(key)
            continue
        new_key = convert_official_key(key)
        if new_key is None:
            report.unknown.append(key)
        elif new_key in out:
            report.collisions.append(new_key)
        else:
            out[new_key] = state_dict[key]
            report.converted[key] = new_key
    return out, report
