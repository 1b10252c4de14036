"""The FlashFace patches on a MODEL: installed once by the loader, active per U-Net call and per run.

- ``APPLY_MODEL``: per U-Net call, the reference pass (or its reuse) and each row's
  reference strength, for the attention patches of that call.
- ``OUTER_SAMPLE``: per sampling run, the face-position mask, the references and the
  people's regions on every condition, and the run's reference features
  (``run_references.py``: the schedule's timesteps to prefetch), handed to the cache and
  dropped when the run ends.
- ``DIFFUSION_MODEL``: the shared-encoder speed lever (``speed/shared_encoder.py``).
- ``attn1_patch`` / ``attn1_output_patch``: the reference attention (``reference_attention.py``).
- ``ON_DETACH``: the reference-pass cache emptied when ComfyUI unloads the model.
"""

import dataclasses
import logging

import comfy.patcher_extension
import torch

from ..contract import (CACHE_KEY, DEFAULT_CACHE_MB, FACE_MASK_KEY, INJECTION_STATE_KEY, REFERENCES_KEY, REGIONS_KEY, RUN_STATE_KEY,
                        SETTINGS_KEY, WRAPPER_KEY, condition_strengths, get_speed)
from ..people.regions import people_in_picture
from ..speed.attention_lse import attention_lse_function
from ..speed.reference_cache import ReferenceCache
from ..speed.shared_encoder import diffusion_model_with_shared_encoder
from .people_attention import PeopleMix
from .reference_attention import InjectionState, add_reference_attention, row_mix, stash_attention_input
from .run_references import RunReferences, planned_timesteps


def install(patcher, reference_cache_mb: int = DEFAULT_CACHE_MB):
    """Add the FlashFace patches to a freshly loaded FlashFace MODEL (done once by the loader).

    The reference-pass cache goes with them, bounded by ``reference_cache_mb`` (0: none):
    every clone of this MODEL shares it."""
    patcher.set_model_attn1_patch(stash_attention_input)
    patcher.set_model_attn1_output_patch(add_reference_attention)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, apply_model_with_references)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, sample_with_references)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, diffusion_model_with_shared_encoder)
    if reference_cache_mb > 0:
        patcher.model_options.setdefault("transformer_options", {})[CACHE_KEY] = ReferenceCache(reference_cache_mb)
        patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, WRAPPER_KEY, empty_reference_cache)


def reference_cache(patcher) -> ReferenceCache | None:
    """The reference-pass cache this MODEL shares with its clones."""
    return patcher.model_options.get("transformer_options", {}).get(CACHE_KEY)


def empty_reference_cache(patcher, unpatch_all: bool):
    """ON_DETACH: ComfyUI unloaded the model (``free_memory``: "Unload models", POST /free, or
    room for other models), so the cache goes too. A clone's ``__del__`` and ComfyUI's swap of
    one loaded clone for another detach without unpatching: the model stays, and so does the cache."""
    cache = reference_cache(patcher) if unpatch_all else None
    if cache is not None:
        cache.clear()


def _row_strengths(batch: int, transformer_options: dict, default: float) -> list[float]:
    """Strength of each batch row, from the condition index of each chunk of the batch."""
    table = condition_strengths(transformer_options)
    chunks = transformer_options.get("cond_or_uncond") or []
    if not table or not chunks or batch % len(chunks):
        return [default] * batch
    rows = batch // len(chunks)
    return [table.get(index, default) for index in chunks for _ in range(rows)]


def apply_model_with_references(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
    """APPLY_MODEL wrapper: read (or run) the reference pass for this call, then the main pass."""
    model = executor.class_obj
    settings = transformer_options.get(SETTINGS_KEY)
    regions = kwargs.pop(REGIONS_KEY, None)
    dtype = model.manual_cast_dtype or model.get_dtype()
    features = None
    strengths = [0.0] * x.shape[0]  # without references: RefAttn(y, y) on every row
    run = transformer_options.get(RUN_STATE_KEY)
    constant = run.constant if run is not None else lambda key, make: make()
    if settings is not None and settings.people:
        # ComfyUI's samplers give every row of a call the same sigma; its timestep is worked out on the CPU.
        timestep = float(model.model_sampling.timestep(t[:1].cpu()))
        call_run = run if run is not None else RunReferences()  # outside a sampler: this call's own
        conds = len(transformer_options.get("cond_or_uncond") or ()) or 1
        call_area = x.shape[0] * x.shape[-2] * x.shape[-1]
        features = call_run.features(model, settings, timestep, x.device, dtype, transformer_options, call_area, conds)
        if run is None:
            call_run.finish()
        strengths = _row_strengths(x.shape[0], transformer_options, settings.strength)
    lse = attention_lse_function(x.device) if features is not None and get_speed(transformer_options).merged_attention else None
    if features is not None and regions is not None:
        scales = constant(("scales", x.device, dtype),
                          lambda: torch.tensor([person.strength_scale for person in settings.people], device=x.device, dtype=dtype))
        lams = constant(("strengths", tuple(strengths), x.device, dtype),
                        lambda: torch.tensor(strengths, device=x.device, dtype=dtype))
        mix = PeopleMix(regions.to(x.device, dtype), lams, scales)
        state = InjectionState(model.reference_attention, features, None, None, lse, mix)
    else:
        if features is not None:
            strengths = [s * settings.people[0].strength_scale for s in strengths]
        with_refs, without_refs = constant(("rows", tuple(strengths), features is not None, x.device, dtype), lambda: (
            row_mix(strengths, x.device, dtype) if features is not None else None,
            row_mix([1.0 - s for s in strengths], x.device, dtype),
        ))
        state = InjectionState(model.reference_attention, features, with_refs, without_refs, lse if with_refs is not None else None)
    options = transformer_options.copy()
    options[INJECTION_STATE_KEY] = state
    return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def _people_conditions(transformer_options: dict, settings, noise: torch.Tensor) -> dict:
    """What every condition of the run gets for the model: the face-position channel, the
    references (for the memory estimate) and, with several people, their region weights.
    Puts the run's people (those whose region is not empty) in the run's settings."""
    people, regions, face_position = people_in_picture(settings.people, noise.shape[0], noise.shape[-2], noise.shape[-1])
    if len(people) != len(settings.people):
        transformer_options[SETTINGS_KEY] = dataclasses.replace(settings, people=people)
    extra = {REFERENCES_KEY: tuple(person.references for person in people)}
    if face_position is not None:
        extra[FACE_MASK_KEY] = face_position
    if regions is not None:
        extra[REGIONS_KEY] = regions
    return extra


def sample_with_references(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: give every condition the people's conditions (before the model
    is loaded, so bad regions stop the run at once) and give the run its reference features,
    planned from the run's sigmas; all are dropped when the run ends, however it ends, and
    what the run computed goes to the cache."""
    guider = executor.class_obj
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    settings = transformer_options.get(SETTINGS_KEY)
    if settings is not None and settings.people:
        extra = _people_conditions(transformer_options, settings, args[0] if args else kwargs["noise"])
        for name, conds in guider.conds.items():
            guider.conds[name] = [{**extra, **c} for c in conds]
    run = None
    if not guider.model_options.get("registered_hooks"):
        # With hooks, conditions may run under different weights: recompute per call.
        planned = ()
        if settings is not None and settings.people and get_speed(transformer_options).prefetch_reference_pass:
            sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
            planned = planned_timesteps(guider.model_patcher.get_model_object("model_sampling"), sigmas)
        run = transformer_options[RUN_STATE_KEY] = RunReferences(planned)
    try:
        return executor(*args, **kwargs)
    finally:
        transformer_options.pop(RUN_STATE_KEY, None)
        if run is not None:
            run.finish()
        logging.debug("FlashFace: sampling run finished")
