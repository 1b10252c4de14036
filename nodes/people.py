"""FlashFacePerson: one person of a picture with several people, chained person to person."""

from comfy_api.v0_0_2 import io

from ..flashface_core.model.face_position import face_position
from ..flashface_core.people.person import add_person
from ..flashface_core.people.regions import region_of
from . import widgets


def _region_box(name: str, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=0.0, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


class FlashFacePerson(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFacePerson",
            display_name="FlashFace Person",
            category="FlashFace",
            description="One person of a picture with several people: their reference faces, the part of the image they "
                        "are in and where their face goes. Chain one node per person (people -> people) and connect the "
                        "last to the references input of FlashFace Sampler or Apply FlashFace. Image tokens in a "
                        "person's region read only that person's references, so identities do not blend. Prompt each "
                        "person with ConditioningSetMask or ConditioningSetArea on the same region.",
            inputs=[
                widgets.references(tooltip="This person's reference faces, from FlashFace Encode Reference Faces or "
                                           "FlashFace Load Identity."),
                _region_box("region_x1", "Left edge of this person's region as a fraction of the width. All four region "
                                         "values at 0 = the default region: the part of the image closer to this "
                                         "person's face box than to anyone else's (the whole image for one person)."),
                _region_box("region_y1", "Top edge of this person's region as a fraction of the height."),
                _region_box("region_x2", "Right edge of this person's region."),
                _region_box("region_y2", "Bottom edge of this person's region."),
                *widgets.face_position(people_note=" Several people's face boxes also give their default regions."),
                io.Float.Input("strength_scale", default=1.0, min=0.0, max=3.0, step=0.05, tooltip=(
                    "Multiplies the sampler's reference feature strength for this person only (1 = the same as "
                    "everyone; lower it if this face looks pasted, raise it if it drifts).")),
                widgets.People.Input("people", optional=True, tooltip=(
                    "The people before this one (the people output of another FlashFace Person node). Leave empty "
                    "for the first person.")),
                io.Mask.Input("region_mask", optional=True, tooltip=(
                    "This person's region as a painted mask, instead of the region box (soft edges blend with the "
                    "neighbours; another size is resized to the image, as ConditioningSetMask does).")),
                widgets.face_mask(),
            ],
            outputs=[widgets.People.Output(display_name="people", tooltip=(
                "Everyone so far, this person last: chain into the next FlashFace Person, or connect to the references "
                "input of FlashFace Sampler or Apply FlashFace."))],
        )

    @classmethod
    def execute(cls, references, region_x1, region_y1, region_x2, region_y2, face_x1, face_y1, face_x2, face_y2,
                strength_scale, people=None, region_mask=None, face_mask=None) -> io.NodeOutput:
        region_box = (region_x1, region_y1, region_x2, region_y2)
        face_box = (face_x1, face_y1, face_x2, face_y2)
        return io.NodeOutput(add_person(people, references, region_of(region_box, region_mask),
                                        face_position(face_box, face_mask), strength_scale))

