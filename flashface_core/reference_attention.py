"""FlashFace's reference injection, carried by ComfyUI's own patch points.

This is the one place reference attention lives. Per U-Net call (an ``APPLY_MODEL``
wrapper) the reference faces go through the reference U-Net at the call's timestep and the
input y = norm1(x) of every attention block in the main middle block and decoder is
recorded. The main pass then adds, at those blocks (``attn1_patch`` sees y,
``attn1_output_patch`` adds before the residual):

    lam * RefAttn(q=y, kv=[y; R]) + (1 - lam) * RefAttn(q=y, kv=y)

with lam the reference feature strength of the row's condition. Without references the
model still runs ``RefAttn(y, y)`` (the released model's strength-0 path).

The settings and option keys this module reads are in ``contract.py``. The speed levers
(``SpeedSettings``): the reference pass's features are kept with the MODEL across runs
(``reference_cache.py``), identical conditions share their encoder (``shared_encoder.py``),
and a row's two attentions come from one attention over y and one over R, merged by their
log-sum-exp (``attention_lse.py``).
"""

import logging
from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from .attention_lse import attention_lse_function
from .contract import FACE_MASK_KEY, REFERENCES_KEY, SETTINGS_KEY, FlashFaceSettings, condition_strengths, get_speed, reference_attention_name
from .reference_cache import CacheKey, ReferenceCache
from .shared_encoder import diffusion_model_with_shared_encoder

RUN_CACHE_KEY = "flashface_run_cache"
_CACHE_KEY = "flashface_reference_cache"
_STATE_KEY = "flashface_state"
_Y_KEY = "flashface_y"
WRAPPER_KEY = "flashface"


@dataclass
class ReferenceFeatureCache:
    """Per sampling run: the reference pass's result for the last timestep, so conditions
    split over several U-Net calls in one step reuse it, and the reference latents as the
    model reads them. Shared by the run's option copies."""

    timestep: float | None = None
    features: dict | None = None
    latents: torch.Tensor | None = None

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
    attention_lse: object = None  # set when the two terms are merged by their log-sum-exp


def _row_mix(weights: list[float], device, dtype) -> _RowMix | None:
    rows = [i for i, w in enumerate(weights) if w != 0.0]
    if not rows:
        return None
    weight = torch.tensor([weights[i] for i in rows], device=device, dtype=dtype).reshape(-1, 1, 1)
    return _RowMix(slice(None) if len(rows) == len(weights) else rows, len(rows), weight)


def install(patcher):
    """Add the FlashFace patches to a freshly loaded FlashFace MODEL (done once by the loader).

    The reference-pass cache goes with them: every clone of this MODEL shares it."""
    patcher.set_model_attn1_patch(stash_attention_input)
    patcher.set_model_attn1_output_patch(add_reference_attention)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, apply_model_with_references)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, sample_with_references)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, diffusion_model_with_shared_encoder)
    patcher.model_options.setdefault("transformer_options", {})[_CACHE_KEY] = ReferenceCache()


def reference_cache(patcher) -> ReferenceCache | None:
    """The reference-pass cache this MODEL shares with its clones."""
    return patcher.model_options.get("transformer_options", {}).get(_CACHE_KEY)


# ---------------------------------------------------------------- the reference pass

def reference_latents(model, settings: FlashFaceSettings, device, dtype) -> torch.Tensor:
    latents = settings.references.model_latents().to(device=device, dtype=torch.float32)
    return model.process_latent_in(latents).to(dtype)


def compute_reference_features(model, settings: FlashFaceSettings, timestep: torch.Tensor, device, dtype, latents=None) -> dict:
    """Run the reference U-Net at ``timestep`` and return each reference-attention layer's
    (K, V) of the recorded features, projected once for every row that reads them.

    As released, the pass runs the reference encoder, the *main* middle block and the
    reference decoder, with the negative prompt as context and no mask channel.
    """
    unet = model.diffusion_model
    reference_unet = model.reference_unet
    layers = model.reference_attention
    if latents is None:
        latents = reference_latents(model, settings, device, dtype)
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


def _cache_key(model, settings: FlashFaceSettings, latents: torch.Tensor, device, dtype) -> CacheKey | None:
    """What the reference pass read besides the timestep; None when the weights are not known
    (a model not loaded by its patcher) or hooks patch them per condition."""
    weights = getattr(model, "current_weight_patches_uuid", None)
    patcher = getattr(model, "current_patcher", None)
    if weights is None or patcher is None or patcher.current_hooks is not None:
        return None
    return CacheKey(latents, settings.reference_context, weights, dtype, torch.device(device))


def reference_features(model, settings: FlashFaceSettings, timestep: torch.Tensor, device, dtype, transformer_options: dict) -> dict:
    """The reference pass at ``timestep``: from this run's last step, the MODEL's cache, or run now."""
    step = float(timestep)
    run = transformer_options.get(RUN_CACHE_KEY)
    if run is not None and run.timestep == step:
        return run.features
    if run is not None and run.latents is not None and run.latents.device == torch.device(device) and run.latents.dtype == dtype:
        latents = run.latents
    else:
        latents = reference_latents(model, settings, device, dtype)
    speed = get_speed(transformer_options)
    cache = transformer_options.get(_CACHE_KEY)
    key = _cache_key(model, settings, latents, device, dtype) if speed.cache_reference_pass and cache is not None else None
    features = cache.get(key, step) if key is not None else None
    if features is None:
        features = compute_reference_features(model, settings, timestep, device, dtype, latents)
        if key is not None:
            cache.put(key, step, features, speed.cache_mb, model.current_patcher.offload_device)
    if run is not None:
        run.timestep, run.features, run.latents = step, features, latents
    return features


def _row_strengths(batch: int, transformer_options: dict, default: float) -> list[float]:
    """Strength of each batch row, from the condition index of each chunk of the batch."""
    table = condition_strengths(transformer_options)
    chunks = transformer_options.get("cond_or_uncond") or []
    if not table or not chunks or batch % len(chunks):
        return [default] * batch
    rows = batch // len(chunks)
    return [table.get(index, default) for index in chunks for _ in range(rows)]


def apply_model_with_references(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
    """APPLY_MODEL wrapper: run (or reuse) the reference pass for this call, then the main pass."""
    model = executor.class_obj
    settings = transformer_options.get(SETTINGS_KEY)
    dtype = model.manual_cast_dtype or model.get_dtype()
    features = None
    strengths = [0.0] * x.shape[0]  # without references: RefAttn(y, y) on every row
    if settings is not None and settings.references is not None:
        # ComfyUI's samplers give every row of a call the same sigma.
        timestep = model.model_sampling.timestep(t[:1]).float()
        features = reference_features(model, settings, timestep, x.device, dtype, transformer_options)
        strengths = _row_strengths(x.shape[0], transformer_options, settings.strength)
    with_refs = _row_mix(strengths, x.device, dtype) if features is not None else None
    state = _InjectionState(model.reference_attention, features, with_refs, _row_mix([1.0 - s for s in strengths], x.device, dtype))
    if with_refs is not None and get_speed(transformer_options).merged_attention:
        state.attention_lse = attention_lse_function(x.device)
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


def merged_reference_attention_term(layer, y: torch.Tensor, kv, with_refs: _RowMix, attention_lse) -> torch.Tensor:
    """The same term from one attention over y (every row) and one over R (rows with lam != 0).

    With o_y, o_R the two attentions and s the share of a query's softmax mass on R
    (sigmoid of the difference of their log-sum-exps), RefAttn(y, [y; R]) = o_y + s (o_R - o_y),
    so the term is o_y + lam s (o_R - o_y). The rows' queries are stacked into one batch for
    R, so R's keys and values are read once, never copied per row.
    """
    q, k, v = layer.to_q(y), layer.to_k(y), layer.to_v(y)
    heads = layer.heads
    out, lse = attention_lse(q, k, v, heads, layer.attn_precision)  # [b, heads, L, d], [b, heads, L]
    rows, count = with_refs.rows, with_refs.count
    tokens, dim_head = out.shape[2], out.shape[3]
    ref_k, ref_v = kv
    ref_out, ref_lse = attention_lse(q[rows].reshape(1, count * tokens, -1), ref_k, ref_v, heads, layer.attn_precision)
    ref_out = ref_out.reshape(heads, count, tokens, dim_head).transpose(0, 1)
    ref_lse = ref_lse.reshape(heads, count, tokens).transpose(0, 1)
    share = torch.sigmoid(ref_lse - lse[rows]).unsqueeze(-1).to(out.dtype)
    own = out[rows]
    out[rows] = own + with_refs.weight.unsqueeze(1) * share * (ref_out - own)
    return layer.to_out(out.transpose(1, 2).reshape(y.shape[0], tokens, heads * dim_head))


def add_reference_attention(out, extra_options):
    """attn1_output_patch: add the reference attention term at the FlashFace blocks."""
    state = extra_options.get(_STATE_KEY)
    y = extra_options.pop(_Y_KEY, None)
    if state is None or y is None:
        return out
    name = reference_attention_name(extra_options["block"], extra_options.get("block_index", 0))
    if name not in state.layers:
        return out
    layer = state.layers[name]
    if state.attention_lse is not None:
        return out + merged_reference_attention_term(layer, y, state.features[name], state.with_refs, state.attention_lse)
    kv = state.features[name] if state.features is not None else None
    return out + reference_attention_term(layer, y, kv, state.with_refs, state.without_refs)


# ---------------------------------------------------------------- per sampling run

def sample_with_references(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: give every condition the face-position mask and the references
    (for the model's memory estimate), and give the run a reference-feature cache; all are
    dropped when the run ends, however it ends."""
    guider = executor.class_obj
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    settings = transformer_options.get(SETTINGS_KEY)
    extra = {}
    if settings is not None and settings.references is not None:
        extra[REFERENCES_KEY] = settings.references
    if settings is not None and settings.face_position is not None:
        extra[FACE_MASK_KEY] = settings.face_position
    if extra:
        for name, conds in guider.conds.items():
            guider.conds[name] = [{**extra, **c} for c in conds]
    if not guider.model_options.get("registered_hooks"):
        # With hooks, conditions may run under different weights: recompute per call.
        transformer_options[RUN_CACHE_KEY] = ReferenceFeatureCache()
    try:
        return executor(*args, **kwargs)
    finally:
        transformer_options.pop(RUN_CACHE_KEY, None)
        logging.debug("FlashFace: sampling run finished")
