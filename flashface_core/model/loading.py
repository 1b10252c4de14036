"""Building the managed FlashFace MODEL from a pack-layout state dict, as ComfyUI builds its U-Nets."""

import logging

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

from ..contract import MenuChoice
from .checkpoint import CheckpointError
from .flashface_model import FlashFaceConfig, FlashFaceModel
from .key_layout import MAIN_PREFIX


class WeightDtype(MenuChoice):
    """The loader's weight_dtype menu; the values are what saved graphs hold."""

    DEFAULT = "default"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


TORCH_DTYPES = {WeightDtype.DEFAULT: None, WeightDtype.FP32: torch.float32, WeightDtype.FP16: torch.float16,
                WeightDtype.BF16: torch.bfloat16}


def unet_config_from_state_dict(state_dict: dict) -> dict:
    """Infer the U-Net configuration from tensor shapes (the tiny golden models and the real
    320-channel file take the same path)."""
    config = comfy.model_detection.detect_unet_config(state_dict, MAIN_PREFIX)
    if config is None or config.get("context_dim") is None:
        raise CheckpointError("Could not read an SD1.5 U-Net configuration from the checkpoint's shapes.")
    return config


def build_model_patcher(state_dict: dict, weight_dtype: torch.dtype | None = None) -> comfy.model_patcher.ModelPatcher:
    """The managed FlashFace model (without the FlashFace patches) from a pack-layout state dict.

    Device and dtype follow ComfyUI's own choices (``--lowvram``, ``--cpu``, fp16/bf16
    support), as ``comfy.sd.load_diffusion_model_state_dict`` does for other U-Nets.
    """
    model_config = FlashFaceConfig(unet_config_from_state_dict(state_dict))
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
    model = model_config.get_model(state_dict)
    model.load_model_weights(state_dict)
    model = model.to(offload_device)
    logging.info("FlashFace model: %s weights, compute %s", weight_dtype, manual_cast_dtype or weight_dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def is_flashface_model(model) -> bool:
    return isinstance(getattr(model, "model", None), FlashFaceModel)
