"""Messages for model files a graph names that are not where ComfyUI looks.

Each names the file, the folder it belongs in, where to download it and the command that
fetches it (``catalog.py`` holds the official files), instead of ComfyUI's bare "value not
in list". LoadFlashFace's ``validate_inputs`` returns it, so the server refuses the graph at
/prompt with it; the detector says it when its weights are missing; the runner checks
every file of a graph before running.
"""

from . import folders
from .catalog import DETECTOR, FLASHFACE, ModelFile, human_size


def _comfy_folder(folder_name: str) -> str:
    import folder_paths

    found = folder_paths.get_folder_paths(folder_name) if folder_name in folder_paths.folder_names_and_paths else []
    return found[0] if found else f"models/{folder_name}"


def missing_message(official: ModelFile, name: str, folder: str, searched: list[str] | None = None) -> str:
    """What to do when ``name`` (the graph's choice) is not in ``folder`` (nor in ``searched``); ``official`` is the file to get."""
    text = f"{name} is not in {'any of ' + ', '.join(searched) if searched else folder}."
    if name != official.filename:
        text += f" The graph names {name}; pick a file you have, or get the official {official.filename}:"
    text += (f" Download {official.filename} ({human_size(official.size)}, {official.role}) from "
             f"{official.url} into {folder}, or run `{official.download_command}` from the ComfyUI-FlashFace folder.")
    if official is FLASHFACE and name.endswith(".safetensors"):
        text += f" A .safetensors is made from it by `python -m flashface_core.convert {official.filename} {name}`."
    return text


def check_in_folder(folder_name: str, name: str, official: ModelFile) -> str | None:
    """None when ComfyUI finds ``name`` in its model folder ``folder_name``; else the message."""
    import folder_paths

    if isinstance(name, str) and folder_paths.get_full_path(folder_name, name) is not None:
        return None
    return missing_message(official, str(name), _comfy_folder(folder_name))


def missing_detector_message() -> str:
    """The official detector's weights are in none of the detector folders: what to do."""
    searched = folders.detector_folders()
    return (missing_message(DETECTOR, DETECTOR.filename, _comfy_folder(DETECTOR.folder), searched)
            + " Or choose another detector.")
