"""One sampling run's reference features: prefetched for the schedule, kept on the device, handed to the cache.

The reference pass reads the references, the negative prompt, the U-Net timestep and the
weights, and the schedule says which timesteps a run evaluates. So when a run's first step
asks for its features, the pass runs for the next few timesteps of the schedule at once
(timesteps stacked along the batch, each sample with its own time embedding; the
``prefetch_reference_pass`` lever), as many as ComfyUI's memory estimate of that U-Net call
allows; the features stay on the compute device while the run reads them. Timesteps the
schedule did not predict (samplers that evaluate between sigmas) run on their own when asked.

The MODEL's ``ReferenceCache`` is matched once per run (its key compares tensors, a host
sync), read once per chunk, and given a chunk's new features when the run moves past it
and when it ends, never at every step.
"""

from dataclasses import dataclass

import torch

from ..contract import CACHE_KEY, FlashFaceSettings, get_speed
from ..speed.reference_cache import CacheKey, ReferenceCache, moved
from .reference_pass import REFERENCE_PASS_CHUNK, people_reference_pass_at, reference_latents


def planned_timesteps(model_sampling, sigmas: torch.Tensor) -> tuple[float, ...]:
    """The U-Net timesteps every sampler evaluates for ``sigmas`` (each sigma but the last, which
    only ends the schedule, and none at sigma 0), once each, in the order they come."""
    evaluated = sigmas.detach().to("cpu", torch.float32)[:-1]
    evaluated = evaluated[evaluated > 0]
    if evaluated.numel() == 0:
        return ()
    return tuple(dict.fromkeys(model_sampling.timestep(evaluated).tolist()))


def cache_key(model, context: torch.Tensor, latents: torch.Tensor, device, dtype) -> CacheKey | None:
    """What the reference pass read besides the timestep; None when the weights are not known
    (a model not loaded by its patcher) or hooks patch them per condition."""
    weights = getattr(model, "current_weight_patches_uuid", None)
    patcher = getattr(model, "current_patcher", None)
    if weights is None or patcher is None or patcher.current_hooks is not None:
        return None
    return CacheKey(latents, context, weights, dtype, torch.device(device))


@dataclass
class _Person:
    """One person's reference latents as the model reads them, and what the cache keeps of them."""

    latents: torch.Tensor
    key: CacheKey | None
    kept: dict  # {timestep: features in system memory}, the cache's entries for ``key``


class RunReferences:
    """The reference features of one sampling run, shared by the run's option copies.

    ``planned`` are the timesteps the schedule will evaluate; a run without a plan (a
    U-Net call outside a sampler, or hooks) computes each timestep when asked. ``finish``
    hands what was computed to the cache; the run's sampler wrapper calls it however the
    run ends.
    """

    def __init__(self, planned: tuple[float, ...] = ()):
        self.planned = planned
        self.ready: dict[float, list[dict]] = {}  # timestep -> per person: {layer: (K, V)} on the device
        self.new: list[float] = []  # timesteps of ``ready`` computed by this run, not yet in the cache
        self.people: list[_Person] | None = None
        self.prepared_for = None  # (device, dtype) of ``people``
        self.cache: ReferenceCache | None = None
        self.constants: dict = {}  # small per-call tensors (row weights), made once per run

    def __deepcopy__(self, memo):
        return self

    def constant(self, key, make):
        """``make()``, made once per run for ``key`` (small tensors every U-Net call reads)."""
        if key not in self.constants:
            self.constants[key] = make()
        return self.constants[key]

    def features(self, model, settings: FlashFaceSettings, timestep: float, device, dtype, transformer_options: dict,
                 call_area: int, conds: int) -> list[dict]:
        """Each person's features at ``timestep``: from the run's prefetched chunk, else from the
        cache or the reference pass for the next chunk of the schedule.

        ``call_area`` (rows x latent height x width) and ``conds`` size the chunk as ComfyUI's
        ``memory_required`` sizes the U-Net call the pass runs in: the call's latent tokens plus,
        per condition, twice the reference tokens (the pass's activations and the keys and values
        it leaves). A chunk's batch holds as many face samples as that, each counted twice too.
        """
        if self.prepared_for != (device, dtype):
            self._prepare(model, settings, device, dtype, transformer_options)
        if timestep not in self.ready:
            faces = sum(person.latents.shape[0] for person in self.people)
            face_area = self.people[0].latents.shape[-2] * self.people[0].latents.shape[-1]
            budget_samples = (call_area + conds * 2 * faces * face_area) // (2 * face_area)
            prefetch = get_speed(transformer_options).prefetch_reference_pass
            if prefetch and timestep in self.planned:
                start = self.planned.index(timestep)
                ahead = self.planned[start:start + max(1, budget_samples // faces)]
                self._hand_off(keep=ahead)
                chunk = [t for t in ahead if t not in self.ready]
            else:  # a timestep between the schedule's sigmas, or no prefetch: this one alone
                if not prefetch:
                    self._hand_off()
                chunk = [timestep]
            self._load(model, settings.reference_context, chunk, device, dtype, budget_samples)
        return self.ready[timestep]

    def _prepare(self, model, settings: FlashFaceSettings, device, dtype, transformer_options: dict):
        self.finish()
        speed = get_speed(transformer_options)
        self.cache = transformer_options.get(CACHE_KEY) if speed.cache_reference_pass else None
        self.people = []
        for person in settings.people:
            latents = reference_latents(model, person.references, device, dtype)
            key = cache_key(model, settings.reference_context, latents, device, dtype) if self.cache is not None else None
            self.people.append(_Person(latents, key, self.cache.kept(key) if key is not None else {}))
        self.prepared_for = (device, dtype)

    def _load(self, model, context, chunk: list[float], device, dtype, budget_samples: int):
        """Put ``chunk``'s features in ``ready``: the cache's copies where every person has the
        timestep, one reference pass for the rest (the people missing any, at every such timestep)."""
        missing = [t for t in chunk if any(t not in person.kept for person in self.people)]
        who = [i for i, person in enumerate(self.people) if any(t not in person.kept for t in missing)]
        for t in chunk:
            if t not in missing:
                self.ready[t] = [moved(person.kept[t], torch.device(device)) for person in self.people]
        if not missing:
            return
        batch = max(REFERENCE_PASS_CHUNK, budget_samples) if len(missing) > 1 else REFERENCE_PASS_CHUNK
        computed = people_reference_pass_at(model, [self.people[i].latents for i in who], context, missing, device, dtype, batch)
        for t, per_person in zip(missing, computed):
            features = [None if i in who else moved(person.kept[t], torch.device(device)) for i, person in enumerate(self.people)]
            for i, person_features in zip(who, per_person):
                features[i] = person_features
            self.ready[t] = features
            self.new.append(t)

    def _hand_off(self, keep=()):
        """Give the cache the features computed since the last hand-off, and free the device
        copies of every timestep but ``keep``."""
        if self.cache is not None and self.new:
            for i, person in enumerate(self.people):
                if person.key is not None:
                    self.cache.put_all(person.key, {t: self.ready[t][i] for t in self.new})
                    person.kept = self.cache.kept(person.key)
        self.new.clear()
        self.ready = {t: features for t, features in self.ready.items() if t in keep}

    def finish(self):
        """The run is over (or moves to another device or dtype): hand its features to the cache."""
        if self.people is not None:
            self._hand_off()
