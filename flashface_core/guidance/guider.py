"""FlashFaceCFGGuider: a ComfyUI GUIDER that runs FlashFace's two- then three-way guidance.

Each step evaluates its conditions in one ``calc_cond_batch`` call (ComfyUI batches them
where memory allows) with a per-condition reference strength, so the reference pass runs
once per step. The conditions are ordered [positive, negative, positive + references], so
pre/post CFG hooks of other nodes (APG, TCFG, ...) see cond and uncond where they expect.
"""

import logging

import comfy.samplers
import torch

from ..contract import GuidanceSettings, get_settings, with_condition_strengths
from ..injection.apply import check_latent, require_flashface_model, text_embedding
from . import formulas

logger = logging.getLogger(__name__)
_REPLACED_HOOKS = ("sampler_cfg_function", "sampler_calc_cond_batch_function")


class FlashFaceCFGGuider(comfy.samplers.CFGGuider):
    """FlashFace's text and reference guidance (``GuidanceSettings``) on a MODEL from ApplyFlashFace.

    The U-Net sees the integer timestep the official sampler picks for each sigma (the
    model's ``timestep``, see ``model/timesteps.py``); the x0 prediction uses that timestep's own
    noise level, as the official sampler does. For sigmas that sit on integer timesteps this
    is ComfyUI's usual x0 prediction.
    """

    def __init__(self, model_patcher, guidance: GuidanceSettings):
        require_flashface_model(model_patcher, "FlashFaceGuider")
        settings = get_settings(model_patcher.model_options)
        if settings is None or not settings.people:
            raise ValueError(
                "FlashFaceGuider needs a FlashFace MODEL with reference faces: connect LoadFlashFace -> "
                "ApplyFlashFace -> this guider."
            )
        super().__init__(model_patcher)
        self.guidance = guidance
        self.launch_t = formulas.launch_timestep(guidance.reference_start)
        self.strength = settings.strength
        for hook in _REPLACED_HOOKS:
            if hook in model_patcher.model_options:
                logger.warning("FlashFace guidance replaces this MODEL's %s (e.g. RescaleCFG); use cfg_rescale instead.", hook)

    def set_conds(self, positive, negative):
        text_embedding(self.model_patcher, positive, "positive")
        text_embedding(self.model_patcher, negative, "negative")
        self.inner_set_conds({"positive": positive, "negative": negative})

    def sample(self, noise, latent_image, *args, **kwargs):
        check_latent(latent_image)
        return super().sample(noise, latent_image, *args, **kwargs)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        model_sampling = self.inner_model.model_sampling
        # Worked out on the CPU (as the official timestep rule is): one read of the sigma per step.
        unet_timestep = model_sampling.timestep(timestep[:1].cpu())
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        launched = float(unet_timestep) <= self.launch_t
        if launched:
            conds = [positive, negative, positive]
            strengths = [0.0, 0.0, self.strength]
        else:
            conds = [positive, negative]
            strengths = [self.guidance.early_strength] * 2
        options = with_condition_strengths(model_options, strengths)
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            args = {"conds": conds, "conds_out": out, "cond_scale": self.guidance.text_guidance, "timestep": timestep,
                    "input": x, "sigma": timestep, "model": self.inner_model, "model_options": options}
            out = fn(args)

        sigma = timestep.reshape(-1, *([1] * (x.ndim - 1)))
        text, uncond, *with_references = [(x - denoised) / sigma for denoised in out]
        if launched:
            guided = formulas.reference_guidance(uncond, text, with_references[0], self.guidance.text_guidance, self.guidance.reference_guidance)
        else:
            guided = formulas.text_guidance(uncond, text, self.guidance.text_guidance)
        guided = formulas.rescale(guided, text, self.guidance.cfg_rescale)

        # x0 at the noise level of the timestep the U-Net saw: x a(s) / a(s') - s' eps.
        unet_sigma = model_sampling.sigma(unet_timestep).to(x).reshape(-1, *([1] * (x.ndim - 1)))
        input_scale = torch.rsqrt(sigma**2 + 1.0) / torch.rsqrt(unet_sigma**2 + 1.0)
        denoised = x * input_scale - unet_sigma * guided

        for fn in model_options.get("sampler_post_cfg_function", []):
            args = {"denoised": denoised, "cond": positive, "uncond": negative, "cond_scale": self.guidance.text_guidance,
                    "model": self.inner_model, "uncond_denoised": out[1], "cond_denoised": out[0],
                    "sigma": timestep, "model_options": options, "input": x}
            denoised = fn(args)
        return denoised
