"""The one-call sampling path behind FlashFaceSampler: KSampler's steps with FlashFace's guider."""

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..contract import GuidanceSettings
from .guider import FlashFaceCFGGuider
from .schedules import calculate_sigmas


def sample(model, positive, negative, latent: dict, seed: int, steps: int, sampler_name: str, scheduler: str,
           denoise: float, guidance: GuidanceSettings, noise: torch.Tensor | None = None) -> dict:
    """Sample a LATENT with FlashFace guidance; ``model`` carries ApplyFlashFace's settings.

    Works as KSampler does: batch sizes above 1, denoise below 1 and latent noise masks,
    with ComfyUI's progress bar, previews and Cancel.
    """
    guider = FlashFaceCFGGuider(model, guidance)
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
