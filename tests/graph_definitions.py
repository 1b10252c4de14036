"""Node definitions (``workflow_api.NodeDef``) of the nodes the shipped graphs use, read in this process
from the node classes (ComfyUI's core nodes, two comfy_extras modules, this pack's V3 nodes) without
registering any pack: enough to convert and map the shipped graphs host-side in milliseconds."""

import functools


@functools.cache
def shipped_definitions() -> dict:
    import utils.extra_config  # noqa: F401 (ComfyUI's utils package before nodes puts comfy/ on sys.path)
    import nodes
    from comfy_extras import nodes_custom_sampler, nodes_mask

    from comfyui_flashface.flashface_core.model_files.folders import register_model_folders
    from comfyui_flashface.flashface_core.tools import workflow_api
    from comfyui_flashface.nodes import (ApplyFlashFace, FlashFaceEncodeReferenceFaces, FlashFaceGuider,
                                         FlashFaceSampler, FlashFaceScheduler, LoadFlashFace)
    from comfyui_flashface.nodes.detail import FlashFaceCropFaces, FlashFaceFaceDetail, FlashFaceStitchFaces
    from comfyui_flashface.nodes.identity import FlashFaceLoadIdentity, FlashFaceSaveIdentity
    from comfyui_flashface.nodes.people import FlashFacePerson

    register_model_folders()  # what the pack's __init__ does before ComfyUI reads its nodes
    classes = {**nodes.NODE_CLASS_MAPPINGS, **nodes_custom_sampler.NODE_CLASS_MAPPINGS, **nodes_mask.NODE_CLASS_MAPPINGS}
    names = {**nodes.NODE_DISPLAY_NAME_MAPPINGS, **nodes_custom_sampler.NODE_DISPLAY_NAME_MAPPINGS,
             **nodes_mask.NODE_DISPLAY_NAME_MAPPINGS}
    definitions = {name: workflow_api.node_def(name, cls.INPUT_TYPES(), names.get(name)) for name, cls in classes.items()}
    for cls in (LoadFlashFace, FlashFaceEncodeReferenceFaces, ApplyFlashFace, FlashFaceSampler, FlashFaceGuider,
                FlashFaceScheduler, FlashFacePerson, FlashFaceSaveIdentity, FlashFaceLoadIdentity, FlashFaceCropFaces,
                FlashFaceStitchFaces, FlashFaceFaceDetail):
        schema = cls.GET_SCHEMA()
        definitions[schema.node_id] = workflow_api.node_def(schema.node_id, cls.INPUT_TYPES(), schema.display_name)
    return definitions
