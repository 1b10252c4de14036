"""Loading a FlashFace checkpoint as a ComfyUI MODEL that carries the FlashFace patches.

The one place where the model (``model/``) and the reference injection (``injection/``)
meet: the loader node, the golden checks and the tests all load through here.
"""

from pathlib import Path

from .contract import DEFAULT_CACHE_MB
from .injection.wrappers import install
from .model.checkpoint import load_flashface_state_dict
from .model.loading import TORCH_DTYPES, WeightDtype, build_model_patcher, checked_unet_config


def read_checkpoint(path) -> tuple[dict, dict]:
    """A FlashFace checkpoint's tensors (pack layout) and U-Net configuration, every tensor checked
    against the architecture; nothing allocated beyond what the file maps. CheckpointError otherwise."""
    state_dict = load_flashface_state_dict(path)
    return state_dict, checked_unet_config(state_dict, Path(path).name)


def load_flashface(path, weight_dtype: str = WeightDtype.DEFAULT, reference_cache_mb: int = DEFAULT_CACHE_MB):
    """Read a FlashFace checkpoint (official or pack layout) into a patched ComfyUI MODEL whose
    reference-pass cache holds at most ``reference_cache_mb`` megabytes (0: no cache)."""
    dtype = TORCH_DTYPES[WeightDtype.checked(weight_dtype, "weight_dtype")]
    if type(reference_cache_mb) is not int or reference_cache_mb < 0:
        raise ValueError(f"reference_cache_mb must be a whole number of megabytes, 0 or more; got {reference_cache_mb!r}.")
    state_dict, unet_config = read_checkpoint(path)
    patcher = build_model_patcher(state_dict, dtype, unet_config, Path(path).name)
    install(patcher, reference_cache_mb)
    return patcher
