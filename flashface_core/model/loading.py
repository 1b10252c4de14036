"""Building the managed FlashFace MODEL from a pack-layout state dict, as ComfyUI builds its U-Nets."""

import logging

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

from ..contract import MenuChoice
from .checkpoint import CheckpointError, is_out_of_memory, out_of_memory
from .flashface_model import FlashFaceConfig, FlashFaceModel
from .key_layout import MAIN_PREFIX, PACK_PREFIXES


class WeightDtype(MenuChoice):
    """The loader's weight_dtype menu; the values are what saved graphs hold."""

    DEFAULT = "default"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


TORCH_DTYPES = {WeightDtype.DEFAULT: None, WeightDtype.FP32: torch.float32, WeightDtype.FP16: torch.float16,
                WeightDtype.BF16: torch.bfloat16}


OFFICIAL_MODEL_CHANNELS = 320  # FlashFace-SD1.5's width; the golden test models are narrower
TEXT_CONTEXT_DIM = 768  # CLIP ViT-L/14, SD1.5's text encoder
# SD1.5's U-Net as ComfyUI reads it from a file's keys; a FlashFace file differs only in its width.
SD15_STRUCTURE = {
    "in_channels": 5, "out_channels": 4, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1] * 9 + [0] * 3,
    "transformer_depth_middle": 1, "context_dim": TEXT_CONTEXT_DIM, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


def unet_config_from_state_dict(state_dict: dict, name: str = "The checkpoint") -> dict:
    """The U-Net configuration read from a few tensor shapes, refused unless it is SD1.5's
    structure at most FlashFace's width (the tiny golden models and the real 320-channel file
    take the same path), so a crafted file cannot size an enormous model."""
    try:
        config = comfy.model_detection.detect_unet_config(state_dict, MAIN_PREFIX)
    except Exception as error:  # ComfyUI reads shapes of tensors it assumes well formed
        raise CheckpointError(
            f"{name}: no SD1.5 U-Net configuration can be read from the tensor shapes ({type(error).__name__}: "
            f"{error}); the file is damaged or not FlashFace-SD1.5: download or convert it again."
        ) from None
    if config is None:
        raise CheckpointError(f"{name}: no SD1.5 U-Net configuration can be read from the tensor shapes; the file is damaged or not FlashFace-SD1.5.")
    different = {key: config.get(key) for key, value in SD15_STRUCTURE.items() if config.get(key) != value}
    if different:
        key, value = next(iter(different.items()))
        raise CheckpointError(
            f"{name} is not shaped like FlashFace-SD1.5: its U-Net has {key} {value}, SD1.5's is "
            f"{SD15_STRUCTURE[key]}. It is another model or a damaged file."
        )
    channels = config.get("model_channels")
    if not isinstance(channels, int) or not 32 <= channels <= OFFICIAL_MODEL_CHANNELS or channels % 32:
        raise CheckpointError(
            f"{name}: its U-Net would be {channels} channels wide; FlashFace-SD1.5 is {OFFICIAL_MODEL_CHANNELS} "
            f"(a multiple of 32 up to that). The file is damaged or another model."
        )
    return config


def check_tensor_shapes(state_dict: dict, unet_config: dict, name: str = "The checkpoint"):
    """Every tensor must be one of the model this configuration builds, with exactly its shape:
    compared against the model built on the meta device (no memory), before any weight is allocated."""
    model = FlashFaceConfig(dict(unet_config)).get_model({}, device=torch.device("meta"))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(PACK_PREFIXES)}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{name} does not fit the FlashFace-SD1.5 architecture: {len(missing)} tensors missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Download or convert it again."
        )
    wrong = [k for k in expected if tuple(state_dict[k].shape) != expected[k]]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{name}: the tensor shapes do not fit one FlashFace-SD1.5 model {unet_config['model_channels']} channels "
            f"wide ({len(wrong)} tensors, e.g. {key} is {tuple(state_dict[key].shape)}, expected {expected[key]}). "
            f"The file is damaged or another model: download or convert it again."
        )


def checked_unet_config(state_dict: dict, name: str = "The checkpoint") -> dict:
    """The configuration of the model a checked file builds; CheckpointError for anything else."""
    config = unet_config_from_state_dict(state_dict, name)
    check_tensor_shapes(state_dict, config, name)
    return config


def build_model_patcher(state_dict: dict, weight_dtype: torch.dtype | None = None, unet_config: dict | None = None,
                        name: str = "the checkpoint") -> comfy.model_patcher.ModelPatcher:
    """The managed FlashFace model (without the FlashFace patches) from a pack-layout state dict.

    Device and dtype follow ComfyUI's own choices (``--lowvram``, ``--cpu``, fp16/bf16
    support), as ``comfy.sd.load_diffusion_model_state_dict`` does for other U-Nets.
    ``unet_config`` is ``checked_unet_config``'s, when the caller checked the file already.
    """
    model_config = FlashFaceConfig(unet_config or checked_unet_config(state_dict, name))
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    if weight_dtype is None:
        weight_dtype = comfy.model_management.unet_dtype(
            model_params=comfy.utils.calculate_parameters(state_dict),
            supported_dtypes=list(model_config.supported_inference_dtypes),
            weight_dtype=comfy.utils.weight_dtype(state_dict),
        )
    manual_cast_dtype = comfy.model_management.unet_manual_cast(weight_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(weight_dtype, manual_cast_dtype)
    try:
        model = model_config.get_model(state_dict)
        model.load_model_weights(state_dict)
        model = model.to(offload_device)
    except Exception as error:
        if is_out_of_memory(error):
            raise out_of_memory(name, f"building the {weight_dtype} model from") from None
        raise
    logging.info("FlashFace model: %s weights, compute %s", weight_dtype, manual_cast_dtype or weight_dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def is_flashface_model(model) -> bool:
    return isinstance(getattr(model, "model", None), FlashFaceModel)
