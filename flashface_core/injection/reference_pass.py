"""The reference pass: the reference faces through the reference U-Net at one or more timesteps.

It records, at every reference-attention layer, the keys and values of the features there
(R in ``reference_attention.py``). The result depends only on the references, the negative
prompt, the timestep and the weights, so a run computes it for several timesteps of its
schedule at once and reuses it across its steps (``run_references.py``), and across runs
(the MODEL's ``ReferenceCache``, a speed lever).
"""

import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..model.key_layout import reference_attention_name
from ..model.references import FlashFaceReferences


def reference_latents(model, references: FlashFaceReferences, device, dtype) -> torch.Tensor:
    latents = references.model_latents().to(device=device, dtype=torch.float32)
    return model.process_latent_in(latents).to(dtype)


# Faces per reference U-Net batch: the pass's activations stay those of a few faces however
# many there are. Each face runs on its own (convolutions, group norms and attention within
# one face), so batches give the same features as one face at a time.
REFERENCE_PASS_CHUNK = 8


def compute_reference_features(model, references: FlashFaceReferences | None, context: torch.Tensor, timestep: torch.Tensor,
                               device, dtype, latents=None, chunk: int = REFERENCE_PASS_CHUNK) -> dict:
    """Run the reference U-Net on one person's ``references`` at ``timestep`` and return each
    reference-attention layer's (K, V) of the recorded features, projected once for every row
    that reads them. ``latents``, when given, are the references as the model reads them
    (``reference_latents``); ``chunk`` faces run per U-Net batch."""
    if latents is None:
        latents = reference_latents(model, references, device, dtype)
    return reference_pass_at(model, latents, context, [float(timestep)], device, dtype, chunk)[0]


def reference_pass_at(model, latents: torch.Tensor, context: torch.Tensor, timesteps: list[float], device, dtype,
                      batch: int = REFERENCE_PASS_CHUNK) -> list[dict]:
    """The reference pass of ``latents`` at each of ``timesteps``, in U-Net batches of at most
    ``batch`` samples (a sample: one face at one timestep, each with its own time embedding).

    As released, the pass runs the reference encoder, the *main* middle block and the
    reference decoder, with the negative prompt (``context``) as context and no mask channel.
    Samples run on their own, so any batching gives the features of one face at one timestep
    at a time. Returns, per timestep, each layer's (K, V) with every face's tokens joined, [1, N*L, C].
    """
    faces = latents.shape[0]
    samples = len(timesteps) * faces
    steps = torch.tensor(timesteps, dtype=torch.float32).repeat_interleave(faces).to(device)
    parts = []  # per U-Net batch: name -> (K, V) of its samples, [1, b*L, C]
    for start in range(0, samples, batch):
        faces_here = torch.arange(start, min(start + batch, samples), device=latents.device) % faces
        parts.append((start, _reference_pass(model, context, steps[start:start + batch], device, dtype, latents[faces_here])))
    tokens = {name: pair[0].shape[1] // min(batch, samples) for name, pair in parts[0][1].items()}
    return [{name: tuple(_sample_range(parts, i, name, index * faces, faces, tokens[name]) for i in (0, 1)) for name in tokens}
            for index in range(len(timesteps))]


def _sample_range(parts: list, i: int, name: str, first: int, count: int, tokens: int) -> torch.Tensor:
    """The tokens of samples ``first`` .. ``first + count`` of K (i = 0) or V (i = 1) at layer
    ``name``: a view where one U-Net batch holds them all, else the batches' pieces joined."""
    pieces = []
    for start, features in parts:
        size = features[name][i].shape[1] // tokens
        low, high = max(first, start), min(first + count, start + size)
        if low < high:
            pieces.append(features[name][i][:, (low - start) * tokens:(high - start) * tokens])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def _reference_pass(model, context: torch.Tensor, steps: torch.Tensor, device, dtype, latents) -> dict:
    unet = model.diffusion_model
    reference_unet = model.reference_unet
    layers = model.reference_attention
    count = latents.shape[0]
    context = context.to(device=device, dtype=dtype).expand(count, -1, -1)
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


def people_reference_pass_at(model, latents: list, context, timesteps: list[float], device, dtype,
                             batch: int = REFERENCE_PASS_CHUNK) -> list[list[dict]]:
    """One reference pass over several people's faces at ``timesteps`` (``reference_pass_at``),
    split back per timestep and person: faces run on their own, so this equals a pass per
    person and timestep in fewer U-Net batches."""
    counts = [part.shape[0] for part in latents]
    joined = reference_pass_at(model, torch.cat(latents) if len(latents) > 1 else latents[0], context, timesteps, device, dtype, batch)
    if len(latents) == 1:
        return [[features] for features in joined]
    at_timesteps = []
    for features in joined:
        people = [{} for _ in counts]
        for name, pair in features.items():
            tokens = pair[0].shape[1] // sum(counts)
            for person, parts in zip(people, zip(*(t.split([count * tokens for count in counts], dim=1) for t in pair))):
                person[name] = parts
        at_timesteps.append(people)
    return at_timesteps
