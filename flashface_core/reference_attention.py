"""FlashFace's reference injection, carried by ComfyUI's own patch points.

This is the one place reference attention lives. Per U-Net call (an ``APPLY_MODEL``
wrapper) the reference faces go through the reference U-Net at the call's timestep and the
input y = norm1(x) of every attention block in the main middle block and decoder is
recorded. The main pass then adds, at those blocks (``attn1_patch`` sees y,
``attn1_output_patch`` adds before the residual):

    lam * RefAttn(q=y, kv=[y; R]) + (1 - lam) * RefAttn(q=y, kv=y)

with lam the reference feature strength of the row's condition. Without references the
model still runs ``RefAttn(y, y)`` (the released model's strength-0 path).

Settings travel in ``transformer_options`` (so every clone carries its own and the
caller's MODEL is never changed): ``SETTINGS_KEY`` holds ``FlashFaceSettings``;
a guider may add ``STRENGTHS_KEY``, a {condition index: strength} table.
"""

import logging
from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from .checkpoint import reference_attention_name
from .face_position import FacePosition
from .references import FlashFaceReferences

SETTINGS_KEY = "flashface"
STRENGTHS_KEY = "flashface_strengths"
RUN_CACHE_KEY = "flashface_run_cache"
FACE_MASK_KEY = "flashface_face_mask"
_STATE_KEY = "flashface_state"
_Y_KEY = "flashface_y"
WRAPPER_KEY = "flashface"


@dataclass(frozen=True)
class FlashFaceSettings:
    """What ApplyFlashFace sets on a MODEL clone. Immutable, so clones share it."""

    references: FlashFaceReferences | None = None
    reference_context: torch.Tensor | None = None  # the negative prompt's text embedding [1, 77, C]
    strength: float = 1.0
    face_position: FacePosition | None = None

    def __deepcopy__(self, memo):
        return self


@dataclass
class ReferenceFeatureCache:
    """Per sampling run: the reference pass's result for the last timestep, so conditions
    split over several U-Net calls in one step reuse it. Shared by the run's option copies."""

    timestep: float | None = None
    features: dict | None = None

    def __deepcopy__(self, memo):
        return self


@dataclass
class _RowMix:
    """Which rows take a term and with what weight ([n, 1, 1]); worked out once per U-Net call."""

    rows: slice | list[int]
    count: int
    weight: torch.Tensor


@dataclass
class _InjectionState:
    """What the attention patches of one U-Net call need."""

    layers: torch.nn.ModuleDict
    features: dict | None  # name -> (K, V) of the recorded features, [1, N*L, C] each; None = no references
    with_refs: _RowMix | None  # lam * RefAttn(y, [y; R]) on rows with lam != 0
    without_refs: _RowMix | None  # (1 - lam) * RefAttn(y, y) on rows with lam != 1


def _row_mix(weights: list[float], device, dtype) -> _RowMix | None:
    rows = [i for i, w in enumerate(weights) if w != 0.0]
    if not rows:
        return None
    weight = torch.tensor([weights[i] for i in rows], device=device, dtype=dtype).reshape(-1, 1, 1)
    return _RowMix(slice(None) if len(rows) == len(weights) else rows, len(rows), weight)


def install(patcher):
    """Add the FlashFace patches to a freshly loaded FlashFace MODEL (done once by the loader)."""
    patcher.set_model_attn1_patch(stash_attention_input)
    patcher.set_model_attn1_output_patch(add_reference_attention)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, apply_model_with_references)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, sample_with_references)


def get_settings(model_options: dict) -> FlashFaceSettings | None:
    return model_options.get("transformer_options", {}).get(SETTINGS_KEY)


def set_settings(patcher, settings: FlashFaceSettings):
    """Put the settings on ``patcher`` (a clone the caller owns)."""
    patcher.model_options.setdefault("transformer_options", {})[SETTINGS_KEY] = settings


# ---------------------------------------------------------------- the reference pass

def compute_reference_features(model, settings: FlashFaceSettings, timestep: torch.Tensor, device, dtype) -> dict:
    """Run the reference U-Net at ``timestep`` and return each reference-attention layer's
    (K, V) of the recorded features.

    As released, the pass runs the reference encoder, the *main* middle block and the
    reference decoder, with the negative prompt as context and no mask channel.
    """
    unet = model.diffusion_model
    reference_unet = model.reference_unet
    layers = model.reference_attention
    latents = model.process_latent_in(settings.references.model_latents().to(device=device, dtype=torch.float32)).to(dtype)
    count = latents.shape[0]
    context = settings.reference_context.to(device=device, dtype=dtype).expand(count, -1, -1)
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


def _row_strengths(batch: int, transformer_options: dict, default: float) -> list[float]:
    """Strength of each batch row, from the condition index of each chunk of the batch."""
    table = transformer_options.get(STRENGTHS_KEY) or {}
    chunks = transformer_options.get("cond_or_uncond") or []
    if not table or not chunks or batch % len(chunks):
        return [default] * batch
    rows = batch // len(chunks)
    return [table.get(index, default) for index in chunks for _ in range(rows)]


def apply_model_with_references(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
    """APPLY_MODEL wrapper: run the reference pass for this call, then the main pass."""
    model = executor.class_obj
    settings = transformer_options.get(SETTINGS_KEY)
    dtype = model.manual_cast_dtype or model.get_dtype()
    features = None
    strengths = [0.0] * x.shape[0]  # without references: RefAttn(y, y) on every row
    if settings is not None and settings.references is not None:
        # ComfyUI's samplers give every row of a call the same sigma.
        timestep = model.model_sampling.timestep(t[:1]).float()
        cache = transformer_options.get(RUN_CACHE_KEY)
        if cache is not None and cache.timestep == float(timestep):
            features = cache.features
        else:
            features = compute_reference_features(model, settings, timestep, x.device, dtype)
            if cache is not None:
                cache.timestep, cache.features = float(timestep), features
        strengths = _row_strengths(x.shape[0], transformer_options, settings.strength)
    state = _InjectionState(
        model.reference_attention,
        features,
        _row_mix(strengths, x.device, dtype) if features is not None else None,
        _row_mix([1.0 - s for s in strengths], x.device, dtype),
    )
    options = transformer_options.copy()
    options[_STATE_KEY] = state
    return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


# ---------------------------------------------------------------- the main pass

def stash_attention_input(n, context_attn1, value_attn1, extra_options):
    """attn1_patch: keep y = norm1(x) for ``add_reference_attention`` (same block call)."""
    if _STATE_KEY in extra_options:
        extra_options[_Y_KEY] = n
    return n, context_attn1, value_attn1


def _attention(layer, q, k, v):
    return comfy_attention.optimized_attention(q, k, v, layer.heads, attn_precision=layer.attn_precision)


def reference_attention_term(layer, y: torch.Tensor, kv, with_refs: _RowMix | None, without_refs: _RowMix | None) -> torch.Tensor:
    """lam * RefAttn(y, [y; R]) + (1 - lam) * RefAttn(y, y), per row; ``kv`` = (K, V) of R.

    The output projection is affine, so it is applied once to the mixed attention outputs.
    Rows with lam 0 skip the reference attention and rows with lam 1 the plain one.
    """
    q, k, v = layer.to_q(y), layer.to_k(y), layer.to_v(y)
    mixed = torch.zeros_like(q)
    if with_refs is not None:
        rows, (ref_k, ref_v) = with_refs.rows, kv
        k_all = torch.cat([k[rows], ref_k.expand(with_refs.count, -1, -1)], dim=1)
        v_all = torch.cat([v[rows], ref_v.expand(with_refs.count, -1, -1)], dim=1)
        mixed[rows] += with_refs.weight * _attention(layer, q[rows], k_all, v_all)
    if without_refs is not None:
        rows = without_refs.rows
        mixed[rows] += without_refs.weight * _attention(layer, q[rows], k[rows], v[rows])
    return layer.to_out(mixed)


def add_reference_attention(out, extra_options):
    """attn1_output_patch: add the reference attention term at the FlashFace blocks."""
    state = extra_options.get(_STATE_KEY)
    y = extra_options.pop(_Y_KEY, None)
    if state is None or y is None:
        return out
    name = reference_attention_name(extra_options["block"], extra_options.get("block_index", 0))
    if name not in state.layers:
        return out
    kv = state.features[name] if state.features is not None else None
    return out + reference_attention_term(state.layers[name], y, kv, state.with_refs, state.without_refs)


# ---------------------------------------------------------------- per sampling run

def sample_with_references(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: give every condition the face-position mask and give the run a
    reference-feature cache; both are dropped when the run ends, however it ends."""
    guider = executor.class_obj
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    settings = transformer_options.get(SETTINGS_KEY)
    if settings is not None and settings.face_position is not None:
        for name, conds in guider.conds.items():
            guider.conds[name] = [c if FACE_MASK_KEY in c else {**c, FACE_MASK_KEY: settings.face_position} for c in conds]
    if not guider.model_options.get("registered_hooks"):
        # With hooks, conditions may run under different weights: recompute per call.
        transformer_options[RUN_CACHE_KEY] = ReferenceFeatureCache()
    try:
        return executor(*args, **kwargs)
    finally:
        transformer_options.pop(RUN_CACHE_KEY, None)
        logging.debug("FlashFace: sampling run finished")
