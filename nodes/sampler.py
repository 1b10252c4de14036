"""FlashFace sampling nodes: the one-box sampler, the GUIDER and the official schedule."""

from comfy_api.v0_0_2 import io

from ..flashface_core.contract import GuidanceSettings
from ..flashface_core.guidance.guider import FlashFaceCFGGuider
from ..flashface_core.guidance.sampling import sample
from ..flashface_core.guidance.schedules import SCHEDULERS, TRAILING, calculate_sigmas
from ..flashface_core.injection.apply import apply_flashface
from . import widgets


class FlashFaceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceSampler",
            display_name="FlashFace Sampler",
            category="FlashFace",
            description="Samples with FlashFace in one node: reference faces, face position and both guidance scales, "
                        "with KSampler's inputs. Works on any LATENT: empty (txt2img), encoded with denoise < 1 "
                        "(img2img), or with a noise mask to regenerate only the face of a photo.",
            inputs=[
                widgets.flashface_model(),
                widgets.references_or_people(),
                io.Conditioning.Input("positive", tooltip="The prompt: what the picture shows. Age words help ('a 20 year old woman')."),
                io.Conditioning.Input("negative", tooltip="The negative prompt; the reference faces are also read with it."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise: Empty Latent Image, or an encoded photo."),
                *widgets.sampling(),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Below 1 keeps part of the input latent (img2img)."),
                widgets.strength("strength", 1.2, "Reference feature strength once reference guidance runs "
                                                  "(official 1.2; 0.9 for age changes)."),
                *widgets.guidance(),
                *widgets.face_position(),
                widgets.face_mask(),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    @classmethod
    def execute(cls, model, references, positive, negative, latent_image, seed, steps, sampler_name, scheduler, denoise,
                strength, face_x1, face_y1, face_x2, face_y2, face_mask=None, **guidance) -> io.NodeOutput:
        box = (face_x1, face_y1, face_x2, face_y2)
        patched = apply_flashface(model, references, negative, strength, box, face_mask, node="FlashFaceSampler")
        return io.NodeOutput(sample(patched, positive, negative, latent_image, seed, steps, sampler_name, scheduler,
                                    denoise, GuidanceSettings(**guidance)))


class FlashFaceGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceGuider",
            display_name="FlashFace Guider",
            category="FlashFace",
            description="FlashFace's disentangled text and reference guidance as a GUIDER for SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ApplyFlashFace (its strength is the feature strength with references)."),
                io.Conditioning.Input("positive", tooltip="The prompt: what the picture shows."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                *widgets.guidance(),
            ],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, **guidance) -> io.NodeOutput:
        guider = FlashFaceCFGGuider(model, GuidanceSettings(**guidance))
        guider.set_conds(positive, negative)
        return io.NodeOutput(guider)


class FlashFaceScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceScheduler",
            display_name="FlashFace Scheduler",
            category="FlashFace",
            description="The official FlashFace 'trailing' schedule (and ComfyUI's others) as SIGMAS for SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose noise levels the schedule uses."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default=TRAILING,
                               tooltip="'trailing' is the official FlashFace schedule."),
                io.Int.Input("steps", default=35, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Below 1 keeps the schedule's tail (img2img)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="The sigmas of the schedule.")],
        )

    @classmethod
    def execute(cls, model, scheduler, steps, denoise) -> io.NodeOutput:
        return io.NodeOutput(calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps, denoise))
