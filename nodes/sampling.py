"""FlashFace sampling nodes: the one-box sampler, the GUIDER and the official schedule."""

import comfy.samplers

from ..flashface_core import guider, sampling
from ..flashface_core.apply import apply_flashface
from . import inputs

_GUIDANCE_INPUTS = {
    "text_guidance": ("FLOAT", {
        "default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
        "tooltip": "How closely the image follows the prompt (CFG on the text).",
    }),
    "reference_guidance": ("FLOAT", {
        "default": 3.2, "min": 0.0, "max": 10.0, "step": 0.1, "round": 0.01,
        "tooltip": "How strongly the face is pulled towards the references, separately from the prompt. "
                   "Lower it (about 2.5) for prompts that contradict the references, e.g. another age.",
    }),
    "reference_start": ("FLOAT", {
        "default": 0.25, "min": 0.0, "max": 1.0, "step": 0.01,
        "tooltip": "Share of the 1000-step schedule before reference guidance starts: 0.25 is the official "
                   "t=750. Later starts leave the prompt more room for pose and layout.",
    }),
    "early_strength": inputs.strength(0.85, "Reference feature strength on every condition before reference guidance starts."),
    "cfg_rescale": ("FLOAT", {
        "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
        "tooltip": "CFG rescale towards the plain prompt prediction's spread; 0.5 as the official model.",
    }),
}


class FlashFaceGuider:
    DESCRIPTION = "FlashFace's disentangled text and reference guidance as a GUIDER for SamplerCustomAdvanced."
    CATEGORY = "FlashFace"
    RETURN_TYPES = ("GUIDER",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced.",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL from ApplyFlashFace (its strength is the feature strength with references)."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt: what the picture shows."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt."}),
                **_GUIDANCE_INPUTS,
            }
        }

    def get_guider(self, model, positive, negative, text_guidance, reference_guidance, reference_start, early_strength, cfg_rescale):
        flashface_guider = guider.FlashFaceGuider(model, text_guidance, reference_guidance, reference_start, early_strength, cfg_rescale)
        flashface_guider.set_conds(positive, negative)
        return (flashface_guider,)


class FlashFaceSampler:
    DESCRIPTION = (
        "Samples with FlashFace in one node: reference faces, face position and both guidance scales, "
        "with KSampler's inputs. Works on any LATENT: empty (txt2img), encoded with denoise < 1 (img2img), "
        "or with a noise mask to regenerate only the face of a photo."
    )
    CATEGORY = "FlashFace"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": inputs.FLASHFACE_MODEL,
                "references": inputs.REFERENCES,
                "positive": ("CONDITIONING", {"tooltip": "The prompt: what the picture shows. Age words help ('a 20 year old woman')."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt; the reference faces are also read with it."}),
                "latent_image": ("LATENT", {"tooltip": "The latent to denoise: Empty Latent Image, or an encoded photo."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "The random seed for the noise."}),
                "steps": ("INT", {"default": 35, "min": 1, "max": 10000, "tooltip": "Sampling steps (official: 35)."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip": "The sampler; 'euler' with the 'trailing' schedule is the official DDIM."}),
                "scheduler": (sampling.SCHEDULERS, {"default": sampling.TRAILING, "tooltip": "The noise schedule; 'trailing' is the official one."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Below 1 keeps part of the input latent (img2img)."}),
                "strength": inputs.strength(1.2, "Reference feature strength once reference guidance runs (official 1.2; 0.9 for age changes)."),
                **_GUIDANCE_INPUTS,
                **inputs.FACE_POSITION,
            },
            "optional": inputs.FACE_MASK,
        }

    def sample(self, model, references, positive, negative, latent_image, seed, steps, sampler_name, scheduler, denoise,
               strength, text_guidance, reference_guidance, reference_start, early_strength, cfg_rescale,
               face_x1, face_y1, face_x2, face_y2, face_mask=None):
        patched = apply_flashface(model, references, negative, strength, (face_x1, face_y1, face_x2, face_y2), face_mask, node="FlashFaceSampler")
        return (sampling.sample(patched, positive, negative, latent_image, seed, steps, sampler_name, scheduler, denoise,
                                text_guidance, reference_guidance, reference_start, early_strength, cfg_rescale),)


class FlashFaceScheduler:
    DESCRIPTION = "The official FlashFace 'trailing' schedule (and ComfyUI's others) as SIGMAS for SamplerCustomAdvanced."
    CATEGORY = "FlashFace"
    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("The sigmas of the schedule.",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose noise levels the schedule uses."}),
                "scheduler": (sampling.SCHEDULERS, {"default": sampling.TRAILING, "tooltip": "'trailing' is the official FlashFace schedule."}),
                "steps": ("INT", {"default": 35, "min": 1, "max": 10000, "tooltip": "Sampling steps."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Below 1 keeps the schedule's tail (img2img)."}),
            }
        }

    def get_sigmas(self, model, scheduler, steps, denoise):
        return (sampling.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps, denoise),)


NODE_CLASS_MAPPINGS = {
    "FlashFaceSampler": FlashFaceSampler,
    "FlashFaceGuider": FlashFaceGuider,
    "FlashFaceScheduler": FlashFaceScheduler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FlashFaceSampler": "FlashFace Sampler",
    "FlashFaceGuider": "FlashFace Guider",
    "FlashFaceScheduler": "FlashFace Scheduler",
}
