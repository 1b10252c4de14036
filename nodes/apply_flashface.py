"""ApplyFlashFace: reference faces on a FlashFace MODEL, for any stock sampler node."""

from comfy_api.v0_0_2 import io

from ..flashface_core.injection.apply import apply_flashface
from . import widgets


class ApplyFlashFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyFlashFace",
            display_name="Apply FlashFace",
            category="FlashFace",
            description="Gives the FlashFace MODEL the reference faces. The patched MODEL works in KSampler, "
                        "KSamplerAdvanced and SamplerCustomAdvanced, with the feature strength on every condition. "
                        "For FlashFace's separate reference guidance use FlashFaceSampler or FlashFaceGuider.",
            inputs=[
                widgets.flashface_model(),
                widgets.references_or_people(),
                io.Conditioning.Input("negative", tooltip="The negative prompt: the reference faces are read with its "
                                                          "text embedding, as in the official model."),
                widgets.strength("strength", 1.2, "Reference feature strength on every condition: how much the faces' "
                                                  "features are used. 0 switches them off; too high gives a pasted look. "
                                                  "Official values: 0.85 to 1.2."),
                *widgets.face_position(),
                widgets.face_mask(),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the MODEL that reads the reference faces; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, references, negative, strength, face_x1, face_y1, face_x2, face_y2, face_mask=None) -> io.NodeOutput:
        box = (face_x1, face_y1, face_x2, face_y2)
        return io.NodeOutput(apply_flashface(model, references, negative, strength, box, face_mask, node="ApplyFlashFace"))
