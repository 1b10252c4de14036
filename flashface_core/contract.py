"""What the FlashFace modules share: every option and condition key, the settings, and their helpers.

The injection (``injection/``) and the speed levers (``speed/``) read these; the apply
helper, the guider and the golden checks write them only through the helpers here, so a
key lives in one place. Everything here is immutable, so MODEL clones share it instead of
copying it. This module imports nothing of the pack at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .people.person import Person

# model_options["transformer_options"] keys
SETTINGS_KEY = "flashface"  # FlashFaceSettings, set by ApplyFlashFace
SPEED_KEY = "flashface_speed"  # SpeedSettings
STRENGTHS_KEY = "flashface_strengths"  # {condition index: reference strength}, per calc_cond_batch call
CACHE_KEY = "flashface_reference_cache"  # the ReferenceCache the MODEL's clones share
RUN_STATE_KEY = "flashface_run_cache"  # the running sample's reference features (injection/run_references.py)
INJECTION_STATE_KEY = "flashface_state"  # what one U-Net call's attention patches read
ATTENTION_INPUT_KEY = "flashface_y"  # y = norm1(x), from attn1_patch to attn1_output_patch of one block
# The key of the pack's wrappers (APPLY_MODEL, OUTER_SAMPLE, DIFFUSION_MODEL).
WRAPPER_KEY = "flashface"
# Condition keys
FACE_MASK_KEY = "flashface_face_mask"  # the FacePosition the model's mask channel reads
REFERENCES_KEY = "flashface_references"  # each person's references (a tuple), for the model's memory estimate
REGIONS_KEY = "flashface_regions"  # several people: their region weights [B, people, H, W] (also an apply_model input)

DEFAULT_CACHE_MB = 2048  # the reference-pass cache's bound, LoadFlashFace's reference_cache_mb


class MenuChoice(str, Enum):
    """A node menu whose values are the labels saved graphs hold (they never change).

    A member is the string itself (``str()``, f-strings and ``==`` give the label) on every
    Python ComfyUI runs on.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def checked(cls, value, what: str):
        """The member for ``value``; a ValueError naming ``what`` and the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"Unknown {what} '{value}'; choose one of {', '.join(m.value for m in cls)}.") from None


@dataclass(frozen=True)
class FlashFaceSettings:
    """What ApplyFlashFace sets on a MODEL clone: the people (one for plain references), the
    negative prompt's text embedding [1, 77, C] the references are read with, and the reference
    feature strength (each person's ``strength_scale`` multiplies it)."""

    people: tuple[Person, ...] = ()
    reference_context: torch.Tensor | None = None
    strength: float = 1.0

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class GuidanceSettings:
    """FlashFace's guidance, named as the sampler and guider nodes' inputs are.

    ``text_guidance`` is the CFG scale on the prompt, ``reference_guidance`` the reference
    guidance from ``reference_start`` of the 1000-step schedule on (0.25: the official
    t = 750), ``early_strength`` the reference feature strength before that, ``cfg_rescale``
    the CFG rescale factor.
    """

    text_guidance: float = 7.5
    reference_guidance: float = 3.2
    reference_start: float = 0.25
    early_strength: float = 0.85
    cfg_rescale: float = 0.5

    def __post_init__(self):
        for name in ("text_guidance", "reference_guidance", "reference_start", "early_strength", "cfg_rescale"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not 0.0 <= self.reference_start <= 1.0:
            raise ValueError(f"The reference guidance start must be a fraction between 0 and 1, got {self.reference_start}.")


@dataclass(frozen=True)
class SpeedSettings:
    """The speed levers, each exact up to float rounding; turn one off to compare or debug.

    - ``cache_reference_pass``: keep the reference pass's features per timestep with the
      MODEL, across runs, for the same references, negative prompt, weights, dtype and device
      (bounded by the loader's ``reference_cache_mb``; ``speed/reference_cache.py``).
    - ``share_encoder``: conditions with identical U-Net inputs in one call (the positive
      and positive-with-references rows) run the encoder once.
    - ``merged_attention``: a row's two reference attentions come from one attention over
      its own tokens and one over the references, merged by their log-sum-exp.
    - ``prefetch_reference_pass``: a run's reference pass runs for several timesteps of its
      schedule in one batched call, as many as ComfyUI's memory estimate of the call allows,
      instead of once per step (``injection/run_references.py``).
    """

    cache_reference_pass: bool = True
    share_encoder: bool = True
    merged_attention: bool = True
    prefetch_reference_pass: bool = True

    def __deepcopy__(self, memo):
        return self


def get_settings(model_options: dict) -> FlashFaceSettings | None:
    return model_options.get("transformer_options", {}).get(SETTINGS_KEY)


def set_settings(patcher, settings: FlashFaceSettings):
    """Put the settings on ``patcher`` (a clone the caller owns)."""
    patcher.model_options.setdefault("transformer_options", {})[SETTINGS_KEY] = settings


DEFAULT_SPEED = SpeedSettings()


def get_speed(transformer_options: dict) -> SpeedSettings:
    return transformer_options.get(SPEED_KEY) or DEFAULT_SPEED


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
