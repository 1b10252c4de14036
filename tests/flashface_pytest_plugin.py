"""Keep pytest from importing the pack root as a test package.

The pack root's ``__init__.py`` registers the nodes with a running ComfyUI, so importing it
outside ComfyUI fails, and importing it under pytest would load the pack a second time under
another name. Tests import the pack through ``conftest.py`` as ``comfyui_flashface`` instead.
"""

from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]


def pytest_collect_directory(path, parent):
    if path == PACK_ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
