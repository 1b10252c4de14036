"""What the FlashFace modules share: option keys, settings and their get/set helpers.

The patch module (``reference_attention.py``) reads these; the apply helper, the guider,
the model and the golden checks write them only through the helpers here, so a key lives
in one place. Everything here is immutable, so MODEL clones share it instead of copying.
"""

import logging
import os
from dataclasses import dataclass

import torch

from .face_position import FacePosition
from .references import FlashFaceReferences

SETTINGS_KEY = "flashface"  # transformer_options: FlashFaceSettings
SPEED_KEY = "flashface_speed"  # transformer_options: SpeedSettings
STRENGTHS_KEY = "flashface_strengths"  # transformer_options: {condition index: reference strength}
FACE_MASK_KEY = "flashface_face_mask"  # a condition: the FacePosition the model's mask channel reads
REFERENCES_KEY = "flashface_references"  # a condition: the references, for the model's memory estimate
CACHE_MB_ENV = "FLASHFACE_REFERENCE_CACHE_MB"
DEFAULT_CACHE_MB = 2048


@dataclass(frozen=True)
class FlashFaceSettings:
    """What ApplyFlashFace sets on a MODEL clone."""

    references: FlashFaceReferences | None = None
    reference_context: torch.Tensor | None = None  # the negative prompt's text embedding [1, 77, C]
    strength: float = 1.0
    face_position: FacePosition | None = None

    def __deepcopy__(self, memo):
        return self


def _default_cache_mb() -> int:
    value = os.environ.get(CACHE_MB_ENV)
    if value is None:
        return DEFAULT_CACHE_MB
    try:
        return max(0, int(value))
    except ValueError:
        logging.getLogger(__name__).warning(
            "%s must be a whole number of megabytes, got %r; using %d.", CACHE_MB_ENV, value, DEFAULT_CACHE_MB
        )
        return DEFAULT_CACHE_MB


@dataclass(frozen=True)
class SpeedSettings:
    """The three speed levers, each exact up to float rounding; turn one off to compare or debug.

    - ``cache_reference_pass``: keep the reference pass's features per timestep with the
      MODEL, across runs, for the same references, negative prompt, weights, dtype and device
      (at most ``cache_mb`` megabytes; default from ``FLASHFACE_REFERENCE_CACHE_MB``, else 2048).
    - ``share_encoder``: conditions with identical U-Net inputs in one call (the positive
      and positive-with-references rows) run the encoder once.
    - ``merged_attention``: a row's two reference attentions come from one attention over
      its own tokens and one over the references, merged by their log-sum-exp.
    """

    cache_reference_pass: bool = True
    share_encoder: bool = True
    merged_attention: bool = True
    cache_mb: int = -1  # -1: the environment's or the default bound

    def __post_init__(self):
        if self.cache_mb < 0:
            object.__setattr__(self, "cache_mb", _default_cache_mb())

    def __deepcopy__(self, memo):
        return self


ALL_OFF = SpeedSettings(cache_reference_pass=False, share_encoder=False, merged_attention=False)


def get_settings(model_options: dict) -> FlashFaceSettings | None:
    return model_options.get("transformer_options", {}).get(SETTINGS_KEY)


def set_settings(patcher, settings: FlashFaceSettings):
    """Put the settings on ``patcher`` (a clone the caller owns)."""
    patcher.model_options.setdefault("transformer_options", {})[SETTINGS_KEY] = settings


def get_speed(transformer_options: dict) -> SpeedSettings:
    return transformer_options.get(SPEED_KEY) or SpeedSettings()


def set_speed(patcher, speed: SpeedSettings):
    """Choose the speed levers on ``patcher`` (a clone the caller owns)."""
    patcher.model_options.setdefault("transformer_options", {})[SPEED_KEY] = speed


def with_condition_strengths(model_options: dict, strengths: list[float]) -> dict:
    """A copy of ``model_options`` giving condition ``i`` of the next ``calc_cond_batch`` the
    reference strength ``strengths[i]``; the caller's dicts are left as they are."""
    options = model_options.copy()
    options["transformer_options"] = {**model_options.get("transformer_options", {}), STRENGTHS_KEY: dict(enumerate(strengths))}
    return options


def condition_strengths(transformer_options: dict) -> dict:
    return transformer_options.get(STRENGTHS_KEY) or {}


def reference_attention_name(block: tuple[str, int], transformer_index: int) -> str:
    """Module name of the reference attention at ComfyUI's ``transformer_options['block']``."""
    return f"{block[0]}_{block[1]}_{transformer_index}"
