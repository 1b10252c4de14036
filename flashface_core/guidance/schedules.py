"""The FlashFace schedule ('trailing', the official one) beside ComfyUI's, as sigmas."""

import comfy.samplers
import torch

from ..model.timesteps import trailing_timesteps

TRAILING = "trailing"
SCHEDULERS = [TRAILING] + list(comfy.samplers.SCHEDULER_NAMES)


def trailing_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """The official schedule: t_i = 999 - i * 1000 / steps (fractional when steps does not
    divide 1000), sigmas interpolated in log space at those t_i, then 0."""
    sigmas = model_sampling.sigma(trailing_timesteps(steps))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def calculate_sigmas(model_sampling, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Sigmas for ``steps`` steps of ``scheduler``; denoise < 1 keeps the schedule's tail, as KSampler does."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}.")
    if denoise <= 0.0:
        return torch.zeros(0)
    if denoise >= 1.0:
        return _full_sigmas(model_sampling, scheduler, steps)
    return _full_sigmas(model_sampling, scheduler, int(steps / denoise))[-(steps + 1):]


def _full_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    if scheduler == TRAILING:
        return trailing_sigmas(model_sampling, steps)
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()
