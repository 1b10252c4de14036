"""Messages for model files a graph names that are not where ComfyUI looks.

Each names the file, the folder it belongs in, where to download it and the command that
fetches it (``download.py`` holds the official files), instead of ComfyUI's bare "value not
in list". LoadFlashFace's VALIDATE_INPUTS returns it, so the server refuses the graph at
/prompt with it; the runner checks every file of a graph before running, the stock
CheckpointLoaderSimple's too.
"""

from . import download

COMMAND = "python -m flashface_core.download"
FLAGS = {download.FLASHFACE: "", download.DETECTOR: " --detector", download.SD15: " --sd15"}


def _comfy_folder(folder_name: str) -> str:
    import folder_paths

    folders = folder_paths.get_folder_paths(folder_name) if folder_name in folder_paths.folder_names_and_paths else []
    return folders[0] if folders else f"models/{folder_name}"


def missing_message(official: download.ModelFile, name: str, folder: str) -> str:
    """What to do when ``name`` (the graph's choice) is not in ``folder``; ``official`` is the file to get."""
    text = f"{name} is not in {folder}."
    if name != official.filename:
        text += f" The graph names {name}; pick a file you have, or get the official {official.filename}:"
    text += (f" Download {official.filename} ({download.human_size(official.size)}, {official.role}) from "
             f"{official.url} into {folder}, or run `{COMMAND}{FLAGS[official]}` from the ComfyUI-FlashFace folder.")
    if official is download.FLASHFACE and name.endswith(".safetensors"):
        text += f" A .safetensors is made from it by `python -m flashface_core.convert {official.filename} {name}`."
    return text


def check_in_folder(folder_name: str, name: str, official: download.ModelFile) -> str | None:
    """None when ComfyUI finds ``name`` in its model folder ``folder_name``; else the message."""
    import folder_paths

    from . import model_paths

    model_paths.register_model_folders()
    if isinstance(name, str) and folder_paths.get_full_path(folder_name, name) is not None:
        return None
    return missing_message(official, str(name), _comfy_folder(folder_name))


def check_detector(detector: str) -> str | None:
    """None unless ``detector`` is the official RetinaFace and its weights are in no detector folder."""
    from . import model_paths
    from .faces.detection import RETINAFACE

    if detector != RETINAFACE or model_paths.find_detector_weights(download.DETECTOR.filename):
        return None
    return missing_message(download.DETECTOR, download.DETECTOR.filename, _comfy_folder(download.DETECTOR.folder))


def missing_in_prompt(prompt: dict) -> list[str]:
    """A message per missing model file of an API prompt (FlashFace, SD1.5 checkpoint, detector)."""
    messages = []
    for node_id, node in prompt.items():
        inputs, kind = node["inputs"], node["class_type"]
        message = None
        if kind == "LoadFlashFace" and not isinstance(inputs.get("ckpt_name"), list):
            message = check_in_folder("flashface", inputs.get("ckpt_name"), download.FLASHFACE)
        elif kind == "CheckpointLoaderSimple" and not isinstance(inputs.get("ckpt_name"), list):
            message = check_in_folder("checkpoints", inputs.get("ckpt_name"), download.SD15)
        elif kind == "FlashFaceEncodeReferenceFaces" and isinstance(inputs.get("detector"), str):
            message = check_detector(inputs["detector"])
        if message and message not in messages:
            messages.append(message)
    return messages
