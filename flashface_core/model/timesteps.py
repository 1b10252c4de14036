"""Timesteps as the official FlashFace sampler chooses them.

The official sampler never rounds its trailing times t_i itself: it turns each t_i into a
VP sigma, and at every evaluation turns the solver's sigma back into a fractional time
(``_sigma_to_t`` in the official ``ldm/ops/diffusion.py``, all in float32) and rounds that,
halves to even. When t_i ends in .5 (16, 48, 80, ... steps) the float32 round trip decides
the side, so ComfyUI's nearest-timestep lookup differs from it at some steps. Both rules
agree on every sigma that sits on an integer timestep.
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


def official_timestep(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The integer timestep the official sampler evaluates at for the (ComfyUI, VE) ``sigma``.

    ``log_sigmas``: the schedule's VE log-sigmas, float32 (ComfyUI's ``log_sigmas`` buffer,
    which equals the official table cast to float32).
    """
    sigma = sigma.to(device=log_sigmas.device, dtype=torch.float32)
    table = log_sigmas.float()
    vp = (sigma**2 / (1 + sigma**2)) ** 0.5  # the official solver works on VP sigmas
    log_sigma = ((vp**2 / (1 - vp**2)) ** 0.5).log().reshape(-1, 1)  # ... and maps them back to VE
    low = ((log_sigma - table).ge(0).sum(dim=1) - 1).clamp(0, table.shape[0] - 2)
    high = low + 1
    weight = ((table[low] - log_sigma[:, 0]) / (table[low] - table[high])).clamp(0, 1)
    t = (1 - weight) * low + weight * high
    return t.round().reshape(sigma.shape)


class OfficialTimestepSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """SD1.5's discrete eps sampling with the official sigma -> timestep rule.

    ComfyUI asks ``timestep`` for the U-Net's timestep on every model call, so the U-Net,
    the reference pass and FlashFace's guidance all see the official timestep, whatever
    sampler or scheduler runs.
    """

    def timestep(self, sigma):
        return official_timestep(self.log_sigmas, sigma).to(sigma.device)
