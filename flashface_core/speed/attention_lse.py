"""Attention that also returns its log-sum-exp, computed by ComfyUI's chosen implementation.

Two attentions over disjoint key sets with the same queries merge exactly into the
attention over their union: weight each by exp(its log-sum-exp) and normalise. ComfyUI's
attention functions return only the output, so this module runs the same implementation
ComfyUI chose (its sub-quadratic chunk summaries, or PyTorch's fused kernels) and keeps
the log-sum-exp. For any other choice (xformers, sage, flash-attn, split), and for PyTorch
attention on a GPU, it offers nothing and the caller keeps its unmerged path.
"""

import logging

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import torch

logger = logging.getLogger(__name__)
_refused = set()  # (device type, dtype, head size) the fused kernel refused: not asked again


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, tokens, inner = t.shape
    return t.reshape(b, tokens, heads, inner // heads).transpose(1, 2)


def _query_chunk_size(batch_x_heads: int, k_tokens: int, bytes_per_token: int, device) -> int:
    """The query chunk ComfyUI's ``attention_sub_quad`` picks for this much free memory."""
    free, _ = comfy.model_management.get_free_memory(device, True)
    for size in (4096, 2048, 1024, 512, 256):
        if free / (batch_x_heads * bytes_per_token * size * 4.0) >= k_tokens:
            return size
    return 512


def sub_quad_attention_lse(q, k, v, heads: int, attn_precision=None):
    """ComfyUI's sub-quadratic attention as it runs when all keys fit one chunk (scores,
    softmax, product per query chunk of the size it picks), keeping the log-sum-exp."""
    attn_precision = comfy_attention.get_attn_precision(attn_precision, q.dtype)
    b, q_tokens, inner = q.shape
    dim_head = inner // heads
    query = _split_heads(q, heads).reshape(b * heads, q_tokens, dim_head)
    key_t = _split_heads(k, heads).transpose(2, 3).reshape(b * heads, dim_head, -1)
    value = _split_heads(v, heads).reshape(b * heads, -1, dim_head)
    upcast = attn_precision == torch.float32 and q.dtype != torch.float32
    bytes_per_token = 4 if upcast else q.element_size()
    chunk = _query_chunk_size(b * heads, key_t.shape[-1], bytes_per_token, q.device)
    outputs, lses = [], []
    for start in range(0, q_tokens, chunk):
        query_chunk = query[:, start:start + chunk]
        if upcast:
            query_chunk, key_t = query_chunk.float(), key_t.float()
        scores = torch.baddbmm(
            torch.empty(1, 1, 1, device=q.device, dtype=query_chunk.dtype), query_chunk, key_t, alpha=dim_head**-0.5, beta=0
        )
        probs = scores.softmax(dim=-1)
        # The log-sum-exp from the softmax's largest entry: p_max = exp(s_max - lse).
        p_max, at = probs.max(dim=-1, keepdim=True)
        lses.append((scores.gather(-1, at) - p_max.log()).squeeze(-1).float())
        del scores
        outputs.append(torch.bmm(probs.to(value.dtype), value))
    out = torch.cat(outputs, dim=1).to(q.dtype).reshape(b, heads, q_tokens, dim_head)
    return out, torch.cat(lses, dim=1).reshape(b, heads, q_tokens)


def _fused_attention_lse(q, k, v):
    """[b, heads, L, d] inputs; the output and the log-sum-exp."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]


def pytorch_attention_lse(q, k, v, heads: int, attn_precision=None):
    """PyTorch's fused CPU attention kernel (what ``attention_pytorch`` runs there), asked for the log-sum-exp.

    A kernel that refuses the inputs (a dtype or head size it lacks) leaves the chunked
    computation of ``sub_quad_attention_lse``, which gives the same values.
    """
    q_tokens = q.shape[1]
    case = (q.device.type, q.dtype, q.shape[-1] // heads)
    if case in _refused:
        return sub_quad_attention_lse(q, k, v, heads, attn_precision)
    try:
        out, lse = _fused_attention_lse(*(_split_heads(t, heads) for t in (q, k, v)))
    except torch.OutOfMemoryError:
        raise  # ComfyUI's own handling frees memory and says so
    except RuntimeError as error:
        _refused.add(case)
        logger.warning("FlashFace: PyTorch's fused attention refused %s %s heads of %d (%s); the merged "
                       "reference attention uses chunked attention there.", *case, str(error).splitlines()[0])
        return sub_quad_attention_lse(q, k, v, heads, attn_precision)
    return out, lse[..., :q_tokens].float()


def attention_lse_function(device: torch.device):
    """The log-sum-exp attention matching ComfyUI's chosen attention on ``device``, or None.

    None for PyTorch attention on a GPU, where the two fused attentions of the unmerged path
    measured faster than the merged one (docs/performance.md).
    """
    chosen = comfy_attention.optimized_attention
    if chosen is comfy_attention.attention_sub_quad:
        return sub_quad_attention_lse
    if chosen is comfy_attention.attention_pytorch and device.type == "cpu":
        return pytorch_attention_lse
    return None
