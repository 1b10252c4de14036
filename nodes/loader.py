"""LoadFlashFace: the FlashFace checkpoint as a ComfyUI MODEL."""

import folder_paths

from ..flashface_core import download, model_files, model_paths
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

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name):
        """A missing file gets what to download and where (this turns off ComfyUI's bare list check for it)."""
        return model_files.check_in_folder(model_paths.FLASHFACE, ckpt_name, download.FLASHFACE) or True

    def load(self, ckpt_name, weight_dtype):
        missing = model_files.check_in_folder(model_paths.FLASHFACE, ckpt_name, download.FLASHFACE)
        if missing:
            raise FileNotFoundError(missing)
        return (load_flashface(folder_paths.get_full_path(model_paths.FLASHFACE, ckpt_name), weight_dtype),)


NODE_CLASS_MAPPINGS = {"LoadFlashFace": LoadFlashFace}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadFlashFace": "Load FlashFace Model"}
