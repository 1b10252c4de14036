"""Find the ComfyUI installation that hosts this pack, for the command-line tools and tests.

Inside a running ComfyUI the host is already imported and nothing here is needed. Outside
it (``python -m flashface_core.verify_golden``, pytest) the host is, in order:
``$COMFYUI_PATH``, the pack's grandparent when the pack sits in ``ComfyUI/custom_nodes/``,
then ``~/ComfyUI``.
"""

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]


def _is_host(path: Path) -> bool:
    return (path / "comfy" / "model_patcher.py").is_file() and (path / "folder_paths.py").is_file()


def find_comfyui() -> Path | None:
    """Return the ComfyUI folder to use, or None when there is none."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        return path if _is_host(path) else None
    if PACK_ROOT.parent.name == "custom_nodes" and _is_host(PACK_ROOT.parent.parent):
        return PACK_ROOT.parent.parent
    home = Path.home() / "ComfyUI"
    return home if _is_host(home) else None


def import_comfyui() -> Path:
    """Put ComfyUI on ``sys.path`` and configure it for this machine; raise if it is absent.

    A CUDA build of torch on a machine without a GPU only starts in ComfyUI's CPU mode, which
    must be chosen before ``comfy.model_management`` is imported.
    """
    host = find_comfyui()
    if host is None:
        raise RuntimeError(
            "ComfyUI was not found. Set COMFYUI_PATH to your ComfyUI folder, or install this "
            "pack into ComfyUI/custom_nodes/."
        )
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    if "comfy.model_management" not in sys.modules:
        import torch
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True
    return host


def load_nodes(other_custom_nodes: bool = True):
    """Register ComfyUI's nodes and this pack's in this process, as the server does at start.

    ``other_custom_nodes`` also loads the packs in ComfyUI's ``custom_nodes`` folders (user
    graphs may need them); this pack is loaded from ``PACK_ROOT`` when it is not one of them,
    after them, so its nodes are the ones used.
    """
    import_comfyui()
    import asyncio

    # As main.py: ComfyUI's utils package first, since nodes.py puts comfy/ (with its utils.py) on sys.path.
    import utils.extra_config  # noqa: F401
    import nodes

    if "LoadImage" in nodes.NODE_CLASS_MAPPINGS and "FlashFaceSampler" in nodes.NODE_CLASS_MAPPINGS and len(nodes.LOADED_MODULE_DIRS):
        return
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=other_custom_nodes, init_api_nodes=False))
    loaded = {Path(path).resolve() for path in nodes.LOADED_MODULE_DIRS.values()}
    if PACK_ROOT not in loaded and not asyncio.run(nodes.load_custom_node(str(PACK_ROOT))):
        raise RuntimeError(f"ComfyUI could not load the FlashFace nodes from {PACK_ROOT}; the log above says why.")
