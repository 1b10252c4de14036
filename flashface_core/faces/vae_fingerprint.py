"""A VAE's fingerprint: which VAE encoded a set of reference latents.

A saved identity keeps its latents with the fingerprint of the VAE that made them; loaded
with a VAE whose fingerprint differs, its crops are encoded again. Only the encoder side
is read (the encoder, ``quant_conv``): that is all the latents depend on, so a VAE whose
decoder alone was fine-tuned (as sd-vae-ft-mse) counts as the same, rightly.

It must not depend on where or how ComfyUI holds the weights (fp32 on the CPU, bf16 or fp16
on a GPU), so it is not a hash of the bytes: it is a few statistics of a few tensors (their
size, mean, root mean square and a position-weighted mean), computed in float64 from the
weights cast to float32 on the CPU, written as text. ``same_vae`` compares two of them with
a tolerance of 1% of each tensor's root mean square: rounding to bf16 or fp16 moves each value
by at most 0.2% of itself, so each statistic by at most 0.2% of the root mean square (a bound,
not a likelihood: the same weights in any of these dtypes always match), while two trained
encoders differ by far more. Weights stored in fp8 (6% rounding) may not match: their crops
are then encoded again, which costs a VAE pass and changes nothing else.
Reading a few tensors of a few hundred thousand values keeps it cheap (milliseconds).
"""

import math

import torch

FORMAT = "flashface-vae-1"
# Encoder-side tensors of ComfyUI's SD1.5 AutoencoderKL (first_stage_model), first and last layers and the middle.
TENSORS = (
    "encoder.conv_in.weight",
    "encoder.mid.attn_1.q.weight",
    "encoder.norm_out.weight",
    "encoder.conv_out.weight",
    "encoder.conv_out.bias",
    "quant_conv.weight",
    "quant_conv.bias",
)
TOLERANCE = 1e-2  # of a tensor's root mean square
_STATS = 4  # per tensor: size, mean, rms, weighted mean


def _stats(tensor: torch.Tensor) -> list[float]:
    values = tensor.detach().to(device="cpu", dtype=torch.float32).flatten().double()
    weights = torch.cos(torch.arange(values.numel(), dtype=torch.float64) * 0.618034)
    return [float(values.numel()), float(values.mean()), float(values.square().mean().sqrt()),
            float((values * weights).mean())]


def vae_fingerprint(vae) -> str | None:
    """The fingerprint of ComfyUI VAE ``vae`` (``comfy.sd.VAE``), or None when it has none of these tensors.

    A tensor the VAE lacks is recorded as absent, so two VAEs of other layouts still differ.
    """
    model = getattr(vae, "first_stage_model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    state = model.state_dict(keep_vars=True)
    if not any(name in state for name in TENSORS):
        return None
    parts = [FORMAT]
    for name in TENSORS:
        parts.append(",".join(f"{v:.9g}" for v in _stats(state[name])) if name in state else "-")
    return ";".join(parts)


def _parse(fingerprint) -> list[list[float] | None] | None:
    if not isinstance(fingerprint, str):
        return None
    parts = fingerprint.split(";")
    if parts[0] != FORMAT or len(parts) != len(TENSORS) + 1:
        return None
    try:
        tensors = [None if part == "-" else [float(v) for v in part.split(",")] for part in parts[1:]]
    except ValueError:
        return None
    if any(t is not None and (len(t) != _STATS or not all(map(math.isfinite, t))) for t in tensors):
        return None
    return tensors


def same_vae(first: str | None, second: str | None) -> bool:
    """Whether two fingerprints name the same VAE encoder; an unknown or unreadable one never does."""
    a, b = _parse(first), _parse(second)
    if a is None or b is None:
        return False
    for x, y in zip(a, b):
        if (x is None) != (y is None):
            return False
        if x is None:
            continue
        if x[0] != y[0]:
            return False
        scale = TOLERANCE * max(x[2], y[2], 1e-12)
        if any(abs(p - q) > scale for p, q in zip(x[1:], y[1:])):
            return False
    return True
