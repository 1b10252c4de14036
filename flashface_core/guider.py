"""FlashFaceGuider: a ComfyUI GUIDER that runs FlashFace's two- then three-way guidance.

Each step evaluates its conditions in one ``calc_cond_batch`` call (ComfyUI batches them
where memory allows) with a per-condition reference strength, so the reference pass runs
once per step. The pre/post CFG hooks run as in ComfyUI's own guiders.
"""

import torch
import comfy.samplers

from . import guidance
from .reference_attention import STRENGTHS_KEY, get_settings


def eps_from_denoised(x, denoised, sigma):
    return (x - denoised) / sigma


class FlashFaceGuider(comfy.samplers.CFGGuider):
    """Text guidance ``text_scale``, reference guidance ``ref_scale`` from ``launch_t`` on.

    The U-Net sees the integer timestep nearest each sigma (as in all of ComfyUI); the x0
    prediction uses that timestep's own noise level, as the official sampler does. For
    sigmas that sit on integer timesteps this is ComfyUI's usual x0 prediction.
    """

    def __init__(self, model_patcher, text_scale: float, ref_scale: float, start_fraction: float, early_strength: float, rescale: float):
        settings = get_settings(model_patcher.model_options)
        if settings is None or settings.references is None:
            raise ValueError(
                "FlashFaceGuider needs a FlashFace MODEL with reference faces: connect LoadFlashFace -> "
                "ApplyFlashFace -> this guider."
            )
        super().__init__(model_patcher)
        self.text_scale = float(text_scale)
        self.ref_scale = float(ref_scale)
        self.launch_t = guidance.launch_timestep(start_fraction)
        self.strength = settings.strength
        self.early_strength = float(early_strength)
        self.rescale = float(rescale)

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def _options_with_strengths(self, model_options: dict, strengths: list) -> dict:
        options = model_options.copy()
        options["transformer_options"] = {**model_options.get("transformer_options", {}), STRENGTHS_KEY: dict(enumerate(strengths))}
        return options

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        model_sampling = self.inner_model.model_sampling
        unet_timestep = model_sampling.timestep(timestep[:1])
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        launched = float(unet_timestep) <= self.launch_t
        if launched:
            conds = [positive, positive, negative]
            strengths = [self.strength, 0.0, 0.0]
        else:
            conds = [positive, negative]
            strengths = [self.early_strength, self.early_strength]
        options = self._options_with_strengths(model_options, strengths)
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            args = {"conds": conds, "conds_out": out, "cond_scale": self.text_scale, "timestep": timestep,
                    "input": x, "sigma": timestep, "model": self.inner_model, "model_options": options}
            out = fn(args)

        sigma = timestep.reshape(-1, *([1] * (x.ndim - 1)))
        eps = [eps_from_denoised(x, d, sigma) for d in out]
        if launched:
            text_and_refs, text, uncond = eps
            guided = guidance.reference_guidance(uncond, text, text_and_refs, self.text_scale, self.ref_scale)
        else:
            text, uncond = eps
            guided = guidance.text_guidance(uncond, text, self.text_scale)
        guided = guidance.rescale(guided, text, self.rescale)

        # x0 at the noise level of the timestep the U-Net saw: x a(s) / a(s') - s' eps.
        unet_sigma = model_sampling.sigma(unet_timestep).to(x).reshape(-1, *([1] * (x.ndim - 1)))
        input_scale = torch.rsqrt(sigma**2 + 1.0) / torch.rsqrt(unet_sigma**2 + 1.0)
        denoised = x * input_scale - unet_sigma * guided

        for fn in model_options.get("sampler_post_cfg_function", []):
            args = {"denoised": denoised, "cond": positive, "uncond": negative, "cond_scale": self.text_scale,
                    "model": self.inner_model, "uncond_denoised": out[-1], "cond_denoised": out[-2] if launched else out[0],
                    "sigma": timestep, "model_options": options, "input": x}
            denoised = fn(args)
        return denoised
