"""The reference attention: the one place FlashFace's reference features enter the main U-Net.

At every attention block of the main middle block and decoder (``attn1_patch`` sees the
block's input y = norm1(x), ``attn1_output_patch`` adds before the residual), the block
gets

    lam * RefAttn(q=y, kv=[y; R]) + (1 - lam) * RefAttn(q=y, kv=y)

with R the reference pass's features at that block (``reference_pass.py``) and lam the
reference feature strength of the row's condition. Without references the model still runs
``RefAttn(y, y)`` (the released model's strength-0 path). With several people, each token
takes this term with the references of the person whose region it is in
(``people_attention.py``). What one U-Net call's patches read is worked out once per call
by the ``APPLY_MODEL`` wrapper (``wrappers.py``).
"""

from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..contract import ATTENTION_INPUT_KEY, INJECTION_STATE_KEY
from ..model.key_layout import reference_attention_name
from .people_attention import merged_people_attention_term, people_attention_term


@dataclass
class RowMix:
    """Which rows take a term and with what weight ([n, 1, 1]); worked out once per U-Net call."""

    rows: slice | list[int]
    count: int
    weight: torch.Tensor


@dataclass
class InjectionState:
    """What the attention patches of one U-Net call need."""

    layers: torch.nn.ModuleDict
    features: list | None  # per person: name -> (K, V) of the recorded features, [1, N*L, C] each; None = no references
    with_refs: RowMix | None  # lam * RefAttn(y, [y; R]) on rows with lam != 0
    without_refs: RowMix | None  # (1 - lam) * RefAttn(y, y) on rows with lam != 1
    attention_lse: object = None  # set when the two terms are merged by their log-sum-exp
    people: object = None  # several people (a ``PeopleMix``): each token reads its person's references


def row_mix(weights: list[float], device, dtype) -> RowMix | None:
    rows = [i for i, w in enumerate(weights) if w != 0.0]
    if not rows:
        return None
    weight = torch.tensor([weights[i] for i in rows], device=device, dtype=dtype).reshape(-1, 1, 1)
    return RowMix(slice(None) if len(rows) == len(weights) else rows, len(rows), weight)


def stash_attention_input(n, context_attn1, value_attn1, extra_options):
    """attn1_patch: keep y = norm1(x) for ``add_reference_attention`` (same block call)."""
    if INJECTION_STATE_KEY in extra_options:
        extra_options[ATTENTION_INPUT_KEY] = n
    return n, context_attn1, value_attn1


def _attention(layer, q, k, v):
    return comfy_attention.optimized_attention(q, k, v, layer.heads, attn_precision=layer.attn_precision)


def reference_attention_term(layer, y: torch.Tensor, kv, with_refs: RowMix | None, without_refs: RowMix | None) -> torch.Tensor:
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


def merged_reference_attention_term(layer, y: torch.Tensor, kv, with_refs: RowMix, attention_lse) -> torch.Tensor:
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
    state = extra_options.get(INJECTION_STATE_KEY)
    y = extra_options.pop(ATTENTION_INPUT_KEY, None)
    if state is None or y is None:
        return out
    name = reference_attention_name(extra_options["block"], extra_options.get("block_index", 0))
    if name not in state.layers:
        return out
    layer = state.layers[name]
    if state.people is not None:
        features = [person[name] for person in state.features]
        size = extra_options["activations_shape"][-2:]
        if state.attention_lse is not None:
            return out + merged_people_attention_term(layer, y, features, state.people, size, state.attention_lse)
        return out + people_attention_term(layer, y, features, state.people, size)
    if state.attention_lse is not None:
        return out + merged_reference_attention_term(layer, y, state.features[0][name], state.with_refs, state.attention_lse)
    kv = state.features[0][name] if state.features is not None else None
    return out + reference_attention_term(layer, y, kv, state.with_refs, state.without_refs)
