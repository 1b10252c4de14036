"""ComfyUI-FlashFace: FlashFace (arXiv 2403.17008) as a native ComfyUI model and nodes."""

from .flashface_core.model_files.folders import register_model_folders
from .nodes import comfy_entrypoint

register_model_folders()

__all__ = ["comfy_entrypoint"]
