"""Timesteps as the official FlashFace sampler chooses them, computed the same way everywhere.

The official sampler never rounds its trailing times t_i itself: it turns each t_i into a
VP sigma, and at every evaluation turns the solver's sigma back into a fractional time
(``_sigma_to_t`` in the official ``ldm/ops/diffusion.py``, all in float32) and rounds that,
halves to even. Away from halves any faithful arithmetic gives the official timestep.

When t_i ends in .5 (16, 48, 80, ... steps) the float32 round trip lands within a few ulps
of the half, and the side is decided by the last bit of float32 ``sqrt``, ``exp`` and ``log``.
On CPU torch takes those from MKL's vector math, which is not correctly rounded and whose
bits change with the code path (AVX-512, AVX2 or SSE, tail or body of the vector): the
official code itself gives different timesteps at these halves on different machines (see
docs/timesteps.md). So this module does the official float32 arithmetic with correctly
rounded ``sqrt``, ``exp`` and ``log`` (each done in float64 and rounded once to float32), which
no machine, thread count or device changes; it matches the official timesteps everywhere but
at a few exact halves.
"""

import comfy.model_sampling
import torch

T_MAX = 999  # the official t_max: num_timesteps - 1


def trailing_timesteps(steps: int) -> torch.Tensor:
    """The official trailing times, computed as the official code does (a float32 ``arange``
    from 999 down by 1000 / steps, clamped to [0, 999]).

    The float32 ``arange`` yields one extra time, 0, at 61, 103, 121 and 122 steps: the
    official sampler evaluates it, so this does too.
    """
    return torch.arange(T_MAX, -1, -(1000.0 / steps), dtype=torch.float32).clamp(0, T_MAX)


# These few values are worked out on the CPU, whatever device the model is on: float64 is not
# on every device (Apple's MPS has none), and the CPU gives the same bits everywhere.
def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt: float64 sqrt rounded to float32 is exact rounding
    (53 >= 2 * 24 + 2 bits), unlike MKL's float32 ``vsSqrt``."""
    return x.double().sqrt().float()


def _exp(x: torch.Tensor) -> torch.Tensor:
    """float32 exp rounded once from float64 (correctly rounded but for inputs whose exp lies
    within about 1e-16 relative of a float32 rounding boundary)."""
    return x.double().exp().float()


def _log(x: torch.Tensor) -> torch.Tensor:
    """float32 log rounded once from float64; see ``_exp``."""
    return x.double().log().float()


CPU = torch.device("cpu")


def official_time(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The fractional time the official sampler finds for the (ComfyUI, VE) ``sigma``: its
    float32 VE -> VP -> VE round trip and log-sigma interpolation, with correctly rounded
    sqrt, exp and log. Float32 +, -, *, / are IEEE on every device.

    ``log_sigmas``: the schedule's VE log-sigmas, float32 (ComfyUI's ``log_sigmas`` buffer,
    which equals the official table cast to float32).
    """
    sigma = sigma.to(device=CPU, dtype=torch.float32)
    table = log_sigmas.to(device=CPU, dtype=torch.float32)
    square = sigma * sigma
    vp = _sqrt(square / (1 + square))  # the official solver works on VP sigmas
    vp_square = vp * vp
    log_sigma = _log(_sqrt(vp_square / (1 - vp_square))).reshape(-1, 1)  # ... and maps them back to VE
    low = (log_sigma.ge(table).sum(dim=1) - 1).clamp(0, table.shape[0] - 2)
    high = low + 1
    weight = ((table[low] - log_sigma[:, 0]) / (table[low] - table[high])).clamp(0, 1)
    return ((1 - weight) * low.float() + weight * high.float()).reshape(sigma.shape)


def official_timestep(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The integer timestep the official sampler evaluates at for ``sigma``: ``official_time``
    rounded halves to even, as ``torch.round`` does there."""
    return official_time(log_sigmas, sigma).round()


class OfficialTimestepSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """SD1.5's discrete eps sampling with the official sigma -> timestep rule.

    ComfyUI asks ``timestep`` for the U-Net's timestep on every model call, so the U-Net,
    the reference pass and FlashFace's guidance all see the official timestep, whatever
    sampler or scheduler runs. ``sigma`` is ComfyUI's log-sigma interpolation with a
    correctly rounded exp, so the trailing schedule's sigmas, and with them the timesteps
    at half times, are the same bits on every machine.
    """

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(CPU), min=0, max=(len(self.sigmas) - 1))
        w = t.frac()
        table = self.log_sigmas.to(CPU)
        log_sigma = (1 - w) * table[t.floor().long()] + w * table[t.ceil().long()]
        return _exp(log_sigma).to(timestep.device)

    def timestep(self, sigma):
        return official_timestep(self.log_sigmas, sigma).to(sigma.device)
