"""LoadFlashFace: the FlashFace checkpoint as a ComfyUI MODEL."""

import folder_paths

from ..flashface_core import model_paths
from ..flashface_core.model import WEIGHT_DTYPES, load_flashface


class LoadFlashFace:
    DESCRIPTION = (
        "Loads FlashFace-SD1.5 (the official flashface.ckpt or a converted .safetensors) from "
        "models/flashface as a ComfyUI MODEL. Use it with your SD1.5 CLIP and VAE."
    )
    CATEGORY = "FlashFace"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The FlashFace U-Net; connect it to ApplyFlashFace, FlashFaceSampler or LoRA loaders.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        model_paths.register_model_folders()
        return {
            "required": {
                "ckpt_name": (folder_paths.get_filename_list(model_paths.FLASHFACE), {
                    "tooltip": "A file in models/flashface: flashface.ckpt from the FlashFace-SD1.5 release, "
                               "or a .safetensors made by `python -m flashface_core.convert`.",
                }),
                "weight_dtype": (list(WEIGHT_DTYPES), {
                    "default": "default",
                    "tooltip": "Weight precision. 'default' lets ComfyUI choose for your device (as for other "
                               "models); fp16/bf16 halve the memory of fp32.",
                }),
            }
        }

    def load(self, ckpt_name, weight_dtype):
        path = folder_paths.get_full_path_or_raise(model_paths.FLASHFACE, ckpt_name)
        return (load_flashface(path, weight_dtype),)


NODE_CLASS_MAPPINGS = {"LoadFlashFace": LoadFlashFace}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadFlashFace": "Load FlashFace Model"}
