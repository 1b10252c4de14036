"""Putting reference faces on a FlashFace MODEL, with every input checked first."""

import comfy.model_management
import torch

from ..contract import FlashFaceSettings, set_settings
from ..model.face_position import face_position
from ..model.loading import is_flashface_model
from ..model.references import LATENT_CHANNELS, FlashFaceReferences
from ..people.person import FlashFacePeople, one_person


def require_flashface_model(model, node: str):
    if not is_flashface_model(model):
        raise ValueError(
            f"{node} needs the MODEL from LoadFlashFace (LoRA loaders and other patches in between are fine); "
            f"this MODEL is {type(getattr(model, 'model', model)).__name__}."
        )


def text_embedding(model, conditioning, which: str) -> torch.Tensor:
    """The first text embedding of a CONDITIONING, checked against the model's text width."""
    if not isinstance(conditioning, list) or not conditioning or not isinstance(conditioning[0][0], torch.Tensor):
        raise ValueError(f"FlashFace needs the {which} prompt as CONDITIONING (from CLIPTextEncode).")
    context_dim = model.model.model_config.unet_config["context_dim"]
    for embedding, _ in conditioning:
        if embedding.shape[-1] != context_dim:
            raise ValueError(
                f"The {which} conditioning is {embedding.shape[-1]} wide but FlashFace reads {context_dim}: "
                f"encode it with an SD1.5 CLIP (this one looks like another model's)."
            )
    return conditioning[0][0][:1]


def check_latent(latent_image: torch.Tensor):
    if latent_image.ndim != 4 or latent_image.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"FlashFace samples SD1.5 latents ([B, 4, H, W]); this LATENT is {tuple(latent_image.shape)}. "
            f"Use Empty Latent Image or encode with an SD1.5 VAE."
        )


QUERY_CHUNK = 256  # the smallest query chunk ComfyUI's split and sub-quadratic attention take


def _tokens(height: int, width: int, level: int) -> int:
    for _ in range(level):  # each downsample: a stride-2 convolution, padding 1
        height, width = (height + 1) // 2, (width + 1) // 2
    return height * width


def reference_bytes_per_face(model, height: int, width: int, itemsize: int) -> int:
    """Device memory one reference face of ``height`` x ``width`` latent pixels needs in the main
    pass, however ComfyUI splits the batch: its keys and values at every reference-attention
    layer (held through the step), at the largest layer their copy beside one row's own keys and
    one query chunk's float32 attention scores against them."""
    unet = model.diffusion_model
    lowest = len(unet.channel_mult) - 1
    per_level = unet.num_res_blocks[0] + 1
    held = copy = scores = 0
    for name, layer in model.reference_attention.items():
        block, index, _ = name.split("_")
        tokens = _tokens(height, width, lowest if block == "middle" else lowest - int(index) // per_level)
        values = 2 * tokens * layer.to_k.out_features
        held += values * itemsize
        copy = max(copy, values * itemsize)
        scores = max(scores, QUERY_CHUNK * layer.heads * tokens * 4)
    return held + copy + scores


def _device_memory_for_references(device) -> int:
    """Free memory on the device plus what ComfyUI could free there by unloading its models."""
    free = comfy.model_management.get_free_memory(device)
    loaded = sum(m.model_loaded_memory() for m in comfy.model_management.current_loaded_models
                 if m.model is not None and m.device == device)
    return free + loaded


def check_reference_count(model, people, node: str):
    """Refuse, before anything runs, reference faces (all people's together) whose features
    cannot fit on the device even one condition at a time (the reference pass itself runs in
    chunks and always fits)."""
    count = sum(max(p.references.fill_to, len(p.references)) for p in people)
    height, width = people[0].references.latents.shape[2:]
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    per_face = reference_bytes_per_face(model.model, height, width, torch.empty((), dtype=dtype).element_size())
    device = model.load_device
    available = _device_memory_for_references(device)
    limit = available // per_face
    if count > limit:
        who = f"{len(people)} people with {count} reference faces" if len(people) > 1 else f"{count} reference faces"
        fewer = "Use fewer people or fewer reference photos each" if len(people) > 1 else "Use fewer reference photos"
        raise ValueError(
            f"{node}: {who} need about {count * per_face / 2**30:.1f} GB on {device} in every step "
            f"({per_face / 2**20:.1f} MB each), and only {available / 2**30:.1f} GB can be had there: at most {limit} "
            f"faces fit. {fewer} (or fill_to_four off), or free memory on the device."
        )


def people_of(references, face_box, face_mask, node: str) -> tuple:
    """The people a sampler reads: plain references are one person with the node's face
    position; people from FlashFace Person nodes bring their own."""
    position = face_position(face_box, face_mask)
    if isinstance(references, FlashFacePeople):
        if position is not None:
            raise ValueError(
                f"{node}: with people connected, each FlashFace Person node has its own face box and mask; set this "
                "node's face box to zeros and disconnect its face_mask."
            )
        return references.people
    if not isinstance(references, FlashFaceReferences):
        raise ValueError(f"{node}: connect the references output of FlashFace Encode Reference Faces, or the people "
                         "output of FlashFace Person.")
    return one_person(references, position)


def apply_flashface(model, references, negative, strength: float, face_box=None, face_mask=None, node="ApplyFlashFace"):
    """A clone of the FlashFace ``model`` that reads ``references`` (FlashFaceReferences, or
    FlashFacePeople for several people); ``model`` is unchanged.

    Raises ValueError (saying what to fix) for a MODEL that is not FlashFace, missing
    references, a bad face box, or a negative prompt of the wrong width, before anything runs.
    """
    require_flashface_model(model, node)
    people = people_of(references, face_box, face_mask, node)
    context = text_embedding(model, negative, "negative")
    check_reference_count(model, people, node)
    patched = model.clone()
    set_settings(patched, FlashFaceSettings(people, context, float(strength)))
    return patched
