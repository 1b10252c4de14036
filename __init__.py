"""ComfyUI-FlashFace: FlashFace (arXiv 2403.17008) as a native ComfyUI model and nodes."""

from .flashface_core.model_paths import register_model_folders
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_model_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
