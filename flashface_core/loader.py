"""Loading a FlashFace checkpoint as a ComfyUI MODEL that carries the FlashFace patches.

The one place where the model (``model/``) and the reference injection (``injection/``)
meet: the loader node, the golden checks and the tests all load through here.
"""

from .injection.wrappers import install
from .model.checkpoint import load_flashface_state_dict
from .model.loading import TORCH_DTYPES, WeightDtype, build_model_patcher


def load_flashface(path, weight_dtype: str = WeightDtype.DEFAULT):
    """Read a FlashFace checkpoint (official or pack layout) into a patched ComfyUI MODEL."""
    dtype = TORCH_DTYPES[WeightDtype.checked(weight_dtype, "weight_dtype")]
    patcher = build_model_patcher(load_flashface_state_dict(path), dtype)
    install(patcher)
    return patcher
