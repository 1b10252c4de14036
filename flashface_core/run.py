"""python -m flashface_core.run: a FlashFace graph without the browser (tools/runner.py).

The runner loads this pack into ComfyUI as the server does, so it runs from the copy of
the pack that ComfyUI imports (under the module name ComfyUI gives a custom node folder):
the pack is in memory once, with one set of module state, as in the server.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent


def _pack_package() -> str:
    """The pack's package under ComfyUI's name for it, registered without running its __init__
    (ComfyUI runs that when it loads the nodes, reusing the modules imported here)."""
    name = str(PACK_ROOT).replace(".", "_x_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return name


def main(argv=None) -> int:
    return importlib.import_module(f"{_pack_package()}.flashface_core.tools.runner").main(argv)


if __name__ == "__main__":
    sys.exit(main())
