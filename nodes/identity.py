"""FlashFaceSaveIdentity and FlashFaceLoadIdentity: a person's references kept by name in models/flashface_identities."""

import os

import folder_paths
from comfy_api.v0_0_2 import io

from ..flashface_core.identities.files import check_identity_file
from ..flashface_core.identities.library import load_identity, save_identity
from ..flashface_core.identities.names import identity_file_name
from ..flashface_core.model_files import folders
from . import widgets


class FlashFaceSaveIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceSaveIdentity",
            display_name="FlashFace Save Identity",
            category="FlashFace",
            description="Saves a person's references (the aligned face crops, their latents, the detector and VAE that "
                        "made them) as models/flashface_identities/NAME.safetensors, to load by name later with FlashFace "
                        "Load Identity, without the photos or the detector. Never replaces a file unless overwrite is on. "
                        "The references pass through, so sampling can follow in the same graph.",
            is_output_node=True,
            inputs=[
                widgets.references(tooltip="The person's reference faces, from FlashFace Encode Reference Faces."),
                io.String.Input("name", default="person", tooltip=(
                    "The identity's name: the file NAME.safetensors in models/flashface_identities. Letters, digits, "
                    "spaces, '.', '-', '_' and brackets; no folders.")),
                io.Boolean.Input("overwrite", default=False, tooltip=(
                    "Replace an identity of the same name. Off: an existing name stops the graph with a message "
                    "(the old file is kept); saving the very same references again is fine.")),
            ],
            outputs=[widgets.References.Output(display_name="references", tooltip=(
                "The same references, unchanged, so a sampler can follow the save in one graph."))],
        )

    @classmethod
    def validate_inputs(cls, name=None):
        """A bad name is refused when the graph is queued, before anything runs (a linked name is checked on running)."""
        if name is None:
            return True
        try:
            identity_file_name(name)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, references, name, overwrite) -> io.NodeOutput:
        save_identity(references, name, overwrite)
        return io.NodeOutput(references)


def _missing_message(identity) -> str:
    searched = ", ".join(folders.identity_folders()) or f"models/{folders.IDENTITIES}"
    return (f"The identity {identity} is not in {searched}. Save it with FlashFace Save Identity (or the runner), "
            "or pick one from the list (refresh the page after saving).")


class FlashFaceLoadIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashFaceLoadIdentity",
            display_name="FlashFace Load Identity",
            category="FlashFace",
            description="Loads an identity saved by FlashFace Save Identity as FlashFace references, in place of photos and "
                        "Encode Reference Faces. With the VAE that saved it the saved latents come back exactly; with "
                        "another VAE the saved face crops are encoded again with it.",
            inputs=[
                io.Combo.Input("identity", options=folder_paths.get_filename_list(folders.IDENTITIES), tooltip=(
                    "A saved identity in models/flashface_identities (written by FlashFace Save Identity).")),
                io.Vae.Input("vae", tooltip=(
                    "The SD1.5 VAE of your graph. When it is not the VAE that saved the identity, the saved crops are "
                    "encoded again with it (one log line).")),
            ],
            outputs=[
                widgets.References.Output(display_name="references", tooltip=(
                    "The person's reference faces for FlashFace, as Encode Reference Faces gives them.")),
                io.Image.Output(display_name="face_crops", tooltip="The saved aligned 224x224 face crops."),
            ],
        )

    @classmethod
    def validate_inputs(cls, identity=None):
        """A missing, cut-short or foreign file is refused when the graph is queued (header only, no tensors read);
        naming ``identity`` here turns off ComfyUI's bare "value not in list" for it. A linked value is checked on running."""
        if identity is None:
            return True
        path = folder_paths.get_full_path(folders.IDENTITIES, identity) if isinstance(identity, str) else None
        if path is None:
            return _missing_message(identity)
        try:
            check_identity_file(path)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, identity, **_):
        """A file replaced under the same name is read again."""
        path = folder_paths.get_full_path(folders.IDENTITIES, identity) if isinstance(identity, str) else None
        if path is None:
            return identity
        stat = os.stat(path)
        return f"{identity}:{stat.st_size}:{stat.st_mtime_ns}"

    @classmethod
    def execute(cls, identity, vae) -> io.NodeOutput:
        path = folder_paths.get_full_path(folders.IDENTITIES, identity)
        if path is None:
            raise FileNotFoundError(_missing_message(identity))
        return io.NodeOutput(*load_identity(path, vae))
