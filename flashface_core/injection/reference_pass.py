"""The reference pass: the reference faces through the reference U-Net at a call's timestep.

It records, at every reference-attention layer, the keys and values of the features there
(R in ``reference_attention.py``), once per person. The result depends only on the references, the negative
prompt, the timestep and the weights, so it is reused within a step (the run's state), and
across runs (the MODEL's ``ReferenceCache``, a speed lever).
"""

from dataclasses import dataclass

import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..contract import CACHE_KEY, RUN_STATE_KEY, FlashFaceSettings, get_speed
from ..model.key_layout import reference_attention_name
from ..model.references import FlashFaceReferences
from ..speed.reference_cache import CacheKey


@dataclass
class ReferenceFeatureCache:
    """Per sampling run: the reference pass's result for the last timestep, one entry per
    person, so conditions split over several U-Net calls in one step reuse it, and each
    person's reference latents as the model reads them. Shared by the run's option copies."""

    timestep: float | None = None
    features: list | None = None
    latents: list | None = None

    def __deepcopy__(self, memo):
        return self


def reference_latents(model, references: FlashFaceReferences, device, dtype) -> torch.Tensor:
    latents = references.model_latents().to(device=device, dtype=torch.float32)
    return model.process_latent_in(latents).to(dtype)


# Faces per reference U-Net batch: the pass's activations stay those of a few faces however
# many there are. Each face runs on its own (convolutions, group norms and attention within
# one face), so chunks give the same features as one batch.
REFERENCE_PASS_CHUNK = 8


def compute_reference_features(model, references: FlashFaceReferences | None, context: torch.Tensor, timestep: torch.Tensor,
                               device, dtype, latents=None, chunk: int = REFERENCE_PASS_CHUNK) -> dict:
    """Run the reference U-Net on one person's ``references`` at ``timestep`` and return each
    reference-attention layer's (K, V) of the recorded features, projected once for every row
    that reads them.

    As released, the pass runs the reference encoder, the *main* middle block and the
    reference decoder, with the negative prompt (``context``) as context and no mask channel.
    It runs ``chunk`` faces at a time; the features of all faces are joined along the token axis.
    ``latents``, when given, are the references as the model reads them (``reference_latents``).
    """
    layers = model.reference_attention
    if latents is None:
        latents = reference_latents(model, references, device, dtype)
    parts = [_reference_pass(model, context, timestep, device, dtype, latents[start:start + chunk])
             for start in range(0, latents.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return {name: tuple(torch.cat([part[name][i] for part in parts], dim=1) for i in (0, 1)) for name in layers.keys()}


def _reference_pass(model, context: torch.Tensor, timestep: torch.Tensor, device, dtype, latents) -> dict:
    unet = model.diffusion_model
    reference_unet = model.reference_unet
    layers = model.reference_attention
    count = latents.shape[0]
    context = context.to(device=device, dtype=dtype).expand(count, -1, -1)
    steps = timestep.reshape(1).to(device).expand(count)
    emb = unet.time_embed(timestep_embedding(steps, unet.model_channels).to(dtype))

    features = {}

    def record(n, context_attn1, value_attn1, extra_options):
        name = reference_attention_name(extra_options["block"], extra_options["block_index"])
        if name in layers:
            recorded = n.reshape(1, -1, n.shape[-1])
            features[name] = (layers[name].to_k(recorded), layers[name].to_v(recorded))
        return n, context_attn1, value_attn1

    options = {"patches": {"attn1_patch": [record]}}
    skips = []
    h = latents
    for index, block in enumerate(reference_unet.input_blocks):
        options["block"] = ("input", index)
        h = forward_timestep_embed(block, h, emb, context, options)
        skips.append(h)
    options["block"] = ("middle", 0)
    h = forward_timestep_embed(unet.middle_block, h, emb, context, options)
    for index, block in enumerate(reference_unet.output_blocks):
        options["block"] = ("output", index)
        h = torch.cat([h, skips.pop()], dim=1)
        h = forward_timestep_embed(block, h, emb, context, options, output_shape=skips[-1].shape if skips else None)
    missing = set(layers.keys()) - set(features)
    if missing:
        raise RuntimeError(f"FlashFace reference pass recorded no features for {sorted(missing)}.")
    return features


def _cache_key(model, context: torch.Tensor, latents: torch.Tensor, device, dtype) -> CacheKey | None:
    """What the reference pass read besides the timestep; None when the weights are not known
    (a model not loaded by its patcher) or hooks patch them per condition."""
    weights = getattr(model, "current_weight_patches_uuid", None)
    patcher = getattr(model, "current_patcher", None)
    if weights is None or patcher is None or patcher.current_hooks is not None:
        return None
    return CacheKey(latents, context, weights, dtype, torch.device(device))


def _people_reference_pass(model, latents: list, context, timestep, device, dtype) -> list[dict]:
    """One reference pass over several people's faces (in chunks, as for one person), split back
    per person: faces run on their own, so this equals a pass per person in fewer U-Net batches."""
    if len(latents) == 1:
        return [compute_reference_features(model, None, context, timestep, device, dtype, latents[0])]
    counts = [part.shape[0] for part in latents]
    joined = compute_reference_features(model, None, context, timestep, device, dtype, torch.cat(latents))
    people = [{} for _ in counts]
    for name, pair in joined.items():
        tokens = pair[0].shape[1] // sum(counts)
        for person, parts in zip(people, zip(*(t.split([count * tokens for count in counts], dim=1) for t in pair))):
            person[name] = parts
    return people


def reference_features(model, settings: FlashFaceSettings, timestep: torch.Tensor, device, dtype, transformer_options: dict) -> list[dict]:
    """The reference pass at ``timestep``, one features dict per person: from this run's last
    step, the MODEL's cache (keyed by each person's references), or run now (one pass for
    every person the cache does not hold)."""
    step = float(timestep)
    run = transformer_options.get(RUN_STATE_KEY)
    if run is not None and run.timestep == step:
        return run.features
    speed = get_speed(transformer_options)
    cache = transformer_options.get(CACHE_KEY) if speed.cache_reference_pass else None
    context = settings.reference_context
    known = run.latents if run is not None and run.latents is not None else [None] * len(settings.people)
    all_latents, keys, all_features = [], [], []
    for person, latents in zip(settings.people, known):
        if latents is None or latents.device != torch.device(device) or latents.dtype != dtype:
            latents = reference_latents(model, person.references, device, dtype)
        key = _cache_key(model, context, latents, device, dtype) if cache is not None else None
        all_latents.append(latents)
        keys.append(key)
        all_features.append(cache.get(key, step) if key is not None else None)
    missing = [i for i, features in enumerate(all_features) if features is None]
    if missing:
        computed = _people_reference_pass(model, [all_latents[i] for i in missing], context, timestep, device, dtype)
        for i, features in zip(missing, computed):
            all_features[i] = features
            if keys[i] is not None:
                cache.put(keys[i], step, features)
    if run is not None:
        run.timestep, run.features, run.latents = step, all_features, all_latents
    return all_features
