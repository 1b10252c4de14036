"""LoadFlashFace: the FlashFace checkpoint as a ComfyUI MODEL."""

import folder_paths
from comfy_api.v0_0_2 import io

from ..flashface_core.contract import DEFAULT_CACHE_MB
from ..flashface_core.loader import load_flashface
from ..flashface_core.model.loading import WeightDtype
from ..flashface_core.model_files import folders, messages
from ..flashface_core.model_files.catalog import FLASHFACE


class LoadFlashFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadFlashFace",
            display_name="Load FlashFace Model",
            category="FlashFace",
            description="Loads FlashFace-SD1.5 (the official flashface.ckpt or a converted .safetensors) from "
                        "models/flashface as a ComfyUI MODEL. Use it with your SD1.5 CLIP and VAE.",
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(folders.FLASHFACE), tooltip=(
                    "A file in models/flashface: flashface.ckpt from the FlashFace-SD1.5 release, "
                    "or a .safetensors made by `python -m flashface_core.convert`.")),
                io.Combo.Input("weight_dtype", options=WeightDtype, default=WeightDtype.DEFAULT, tooltip=(
                    "Weight precision. 'default' lets ComfyUI choose for your device (as for other "
                    "models); fp16/bf16 halve the memory of fp32.")),
                io.Int.Input("reference_cache_mb", default=DEFAULT_CACHE_MB, min=0, max=1 << 20, step=256, optional=True,
                             tooltip=(
                    "System memory (MB) kept for the reference pass of repeat runs with the same faces: about 20 MB "
                    "per step with 4 references in fp16. 0 turns the cache off. At most a quarter of this machine's "
                    "memory; emptied when ComfyUI unloads the model (Unload models, /free).")),
            ],
            outputs=[io.Model.Output(tooltip="The FlashFace U-Net; connect it to ApplyFlashFace, FlashFaceSampler or LoRA loaders.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name):
        """A missing file gets what to download and where (this turns off ComfyUI's bare list check for it)."""
        return messages.check_in_folder(folders.FLASHFACE, ckpt_name, FLASHFACE) or True

    @classmethod
    def execute(cls, ckpt_name, weight_dtype, reference_cache_mb=DEFAULT_CACHE_MB) -> io.NodeOutput:
        missing = messages.check_in_folder(folders.FLASHFACE, ckpt_name, FLASHFACE)
        if missing:
            raise FileNotFoundError(missing)
        path = folder_paths.get_full_path(folders.FLASHFACE, ckpt_name)
        return io.NodeOutput(load_flashface(path, weight_dtype, reference_cache_mb))
