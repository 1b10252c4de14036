"""The reference attention with several people: each image token reads the references of the
person whose region it is in.

With a_i = lam * s_i * w_i the weight of person i at a token (lam the row's reference
strength, s_i the person's ``strength_scale``, w_i their region weight, normalised so the
w_i never sum above one; ``people/regions.py``), a token takes

    sum_i a_i RefAttn(y, [y; R_i]) + (1 - sum_i a_i) RefAttn(y, y),

which is ``reference_attention_term`` of one person wherever one person's a_i = lam. Each
person's queries are gathered from every row and token where their weight is not zero, so
k people together cost about one person's reference attention. With the log-sum-exp merge,
RefAttn(y, [y; R_i]) = o_y + s (o_i - o_y) as in ``merged_reference_attention_term``.
"""

from dataclasses import dataclass, field

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..people.regions import block_weights


def _attention(layer, q, k, v):
    return comfy_attention.optimized_attention(q, k, v, layer.heads, attn_precision=layer.attn_precision)


@dataclass
class Gathered:
    """One person's tokens at one block resolution: flat indices into [rows * tokens] and their weights."""

    index: torch.Tensor
    weight: torch.Tensor
    tokens: int
    _by_row: list | None = None

    def by_row(self) -> list:
        """[(row, token indices in the row, weights)], for the plain-attention path (made once)."""
        if self._by_row is None:
            rows = self.index.div(self.tokens, rounding_mode="floor")
            self._by_row = [(row, self.index[rows == row] - row * self.tokens, self.weight[rows == row])
                            for row in rows.unique().tolist()]
        return self._by_row


@dataclass
class PeopleMix:
    """Each person's weight at each token of one U-Net call, at every block resolution
    (worked out on the first block of each size and kept for the call)."""

    regions: torch.Tensor  # [b, k, H, W] region weights of the call's rows, at latent resolution
    row_strengths: torch.Tensor  # [b] lam of each row
    scales: torch.Tensor  # [k] each person's strength_scale
    _sizes: dict = field(default_factory=dict)

    def at(self, height: int, width: int):
        """([Gathered per person; None where the person has no token], the plain term's weight
        [b, L], the rows where that weight is not zero)."""
        if (height, width) not in self._sizes:
            weights = block_weights(self.regions, height, width)
            weights = weights * self.row_strengths[:, None, None] * self.scales[None, :, None]
            tokens = weights.shape[-1]
            people = []
            for person in range(weights.shape[1]):
                flat = weights[:, person].reshape(-1)
                index = flat.nonzero().squeeze(1)
                people.append(Gathered(index, flat[index], tokens) if index.numel() else None)
            plain = 1.0 - weights.sum(1)
            self._sizes[(height, width)] = people, plain, (plain != 0).any(1).nonzero().squeeze(1).tolist()
        return self._sizes[(height, width)]


def people_attention_term(layer, y: torch.Tensor, features: list, mix: PeopleMix, size) -> torch.Tensor:
    """The term from plain attentions: for each person and row, the gathered queries against
    that row's own keys and the person's references."""
    q, k, v = layer.to_q(y), layer.to_k(y), layer.to_v(y)
    people, plain, rows = mix.at(*size)
    mixed = torch.zeros_like(q)
    if rows:
        mixed[rows] += plain[rows].unsqueeze(-1).to(q.dtype) * _attention(layer, q[rows], k[rows], v[rows])
    for gathered, (ref_k, ref_v) in zip(people, features):
        if gathered is None:
            continue
        for row, at, weight in gathered.by_row():
            keys, values = torch.cat([k[row:row + 1], ref_k], dim=1), torch.cat([v[row:row + 1], ref_v], dim=1)
            mixed[row, at] += weight.unsqueeze(-1).to(q.dtype) * _attention(layer, q[row:row + 1, at], keys, values)[0]
    return layer.to_out(mixed)


def merged_people_attention_term(layer, y: torch.Tensor, features: list, mix: PeopleMix, size, attention_lse) -> torch.Tensor:
    """The same term from one attention over y (every row) and, per person, one over their
    references for the gathered queries of every row at once."""
    q, k, v = layer.to_q(y), layer.to_k(y), layer.to_v(y)
    heads = layer.heads
    out, lse = attention_lse(q, k, v, heads, layer.attn_precision)  # [b, heads, L, d], [b, heads, L]
    batch, _, tokens, dim_head = out.shape
    own = out.transpose(1, 2).reshape(batch * tokens, heads, dim_head)
    own_lse = lse.transpose(1, 2).reshape(batch * tokens, heads)
    queries = q.reshape(batch * tokens, -1)
    people, _, _ = mix.at(*size)
    mixed = own.clone()
    for gathered, (ref_k, ref_v) in zip(people, features):
        if gathered is None:
            continue
        index, weight = gathered.index, gathered.weight
        ref_out, ref_lse = attention_lse(queries[index][None], ref_k, ref_v, heads, layer.attn_precision)
        ref_out, ref_lse = ref_out[0].transpose(0, 1), ref_lse[0].transpose(0, 1)  # [n, heads, d], [n, heads]
        share = torch.sigmoid(ref_lse - own_lse[index]).unsqueeze(-1).to(out.dtype)
        mixed.index_add_(0, index, weight.to(out.dtype)[:, None, None] * share * (ref_out - own[index]))
    return layer.to_out(mixed.reshape(batch, tokens, heads * dim_head))
