"""The pack's ComfyUI nodes, one file per group, registered as one ComfyUI extension.

Node classes here are thin: they declare their inputs (V3 schema) and call
``flashface_core``. Node ids, input names and widget order are those saved graphs hold.
"""

from comfy_api.v0_0_2 import ComfyExtension, io

from .apply_flashface import ApplyFlashFace
from .detail import FlashFaceCropFaces, FlashFaceFaceDetail, FlashFaceStitchFaces
from .encode_faces import FlashFaceEncodeReferenceFaces
from .identity import FlashFaceLoadIdentity, FlashFaceSaveIdentity
from .loader import LoadFlashFace
from .people import FlashFacePerson
from .sampler import FlashFaceGuider, FlashFaceSampler, FlashFaceScheduler


class FlashFaceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadFlashFace, FlashFaceEncodeReferenceFaces, ApplyFlashFace, FlashFaceSampler, FlashFaceGuider, FlashFaceScheduler,
                FlashFaceSaveIdentity, FlashFaceLoadIdentity, FlashFacePerson, FlashFaceCropFaces, FlashFaceStitchFaces,
                FlashFaceFaceDetail]


async def comfy_entrypoint() -> FlashFaceExtension:
    return FlashFaceExtension()
