"""Model folders this pack reads, registered with ComfyUI's ``folder_paths``.

``models/flashface`` holds FlashFace checkpoints (and may hold the face detector);
``models/facedetection`` is where other face packs (facexlib users) keep face detectors;
``models/insightface`` is where ComfyUI's other face packs keep insightface model packs
(``models/insightface/models/<pack>/``); ``models/flashface_identities`` holds the identities the
pack's FlashFace Save Identity node writes (``NAME.safetensors``). Registered once, when ComfyUI imports the pack (after
main.py has read ``extra_model_paths.yaml``): a folder name the user's configuration already
defines keeps exactly the user's paths (the default ``models/<name>`` is not added back), and
only gains the pack's file extensions.
"""

import os

import folder_paths

FLASHFACE = "flashface"
FACE_DETECTION = "facedetection"
INSIGHTFACE = "insightface"
IDENTITIES = "flashface_identities"
IDENTITY_EXTENSIONS = {".safetensors"}
CHECKPOINT_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".bin"}


def _register(name: str, extensions: set[str]):
    if name in folder_paths.folder_names_and_paths:
        paths, known = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)
    else:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))


def register_model_folders():
    """Called once, from the pack's ``__init__`` (and by the downloader, which reads the YAML first)."""
    _register(FLASHFACE, CHECKPOINT_EXTENSIONS)
    _register(FACE_DETECTION, {".pth", ".pt"})
    _register(INSIGHTFACE, set())
    _register(IDENTITIES, IDENTITY_EXTENSIONS)


def identity_folders() -> list[str]:
    """Folders listed for saved identities, in ComfyUI's order (an ``is_default`` YAML path first); saving writes to the first."""
    return folder_paths.get_folder_paths(IDENTITIES)


def insightface_roots() -> list[str]:
    """Folders that may hold ``models/<pack>/`` insightface model packs, user paths first."""
    return folder_paths.get_folder_paths(INSIGHTFACE)


def detector_folders() -> list[str]:
    """Folders searched for a face detector's weight file, in order: FlashFace's, then face detection's."""
    return [*folder_paths.get_folder_paths(FLASHFACE), *folder_paths.get_folder_paths(FACE_DETECTION)]


def find_detector_weights(filename: str) -> str | None:
    """The first ``filename`` in ``detector_folders()``, or None."""
    for folder in detector_folders():
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None
