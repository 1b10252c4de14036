"""Schedules and the one-call sampling path behind FlashFaceSampler."""

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from .guider import FlashFaceGuider
from .timesteps import trailing_timesteps

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


def sample(model, positive, negative, latent: dict, seed: int, steps: int, sampler_name: str, scheduler: str,
           denoise: float, text_scale: float, ref_scale: float, start_fraction: float, early_strength: float,
           rescale: float, noise: torch.Tensor | None = None) -> dict:
    """Sample a LATENT with FlashFace guidance; ``model`` carries ApplyFlashFace's settings.

    Works as KSampler does: batch sizes above 1, denoise below 1 and latent noise masks,
    with ComfyUI's progress bar, previews and Cancel.
    """
    guider = FlashFaceGuider(model, text_scale, ref_scale, start_fraction, early_strength, rescale)
    guider.set_conds(positive, negative)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if noise is None:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    model_sampling = model.get_model_object("model_sampling")
    if sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS:  # as KSampler does
        sigmas = calculate_sigmas(model_sampling, scheduler, steps + 1, denoise)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = calculate_sigmas(model_sampling, scheduler, steps, denoise)
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    samples = guider.sample(
        noise, latent_image, comfy.samplers.sampler_object(sampler_name), sigmas,
        denoise_mask=latent.get("noise_mask"), callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
    )
    out = latent.copy()
    out["samples"] = samples.to(comfy.model_management.intermediate_device())
    return out
