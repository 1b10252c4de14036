"""Test setup: find the ComfyUI host and make the pack importable as ``comfyui_flashface``.

The pack is registered as a package without running its ``__init__`` (which registers
nodes with ComfyUI), so host-free tests can import ``comfyui_flashface.flashface_core``
modules, and host tests import ``comfyui_flashface.nodes`` after the host is set up.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN_DIR = SHARED / "golden"
GOLDEN_STEPS_DIR = SHARED / "golden_steps"  # sampling runs at step counts with half timesteps
GOLDEN_FACES_DIR = SHARED / "golden_faces"
FACES_DIR = SHARED / "faces"
PACKAGE = "comfyui_flashface"


def _register_pack():
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)


_register_pack()

from comfyui_flashface.flashface_core.tools import host as comfy_host  # noqa: E402

HOST = comfy_host.find_comfyui()
if os.environ.get("COMFYUI_PATH"):
    NO_HOST_REASON = f"COMFYUI_PATH={os.environ['COMFYUI_PATH']} is not a ComfyUI folder: host tests skipped"
else:
    NO_HOST_REASON = (
        "ComfyUI host not found (set COMFYUI_PATH, or put this pack in ComfyUI/custom_nodes/, "
        "or keep ~/ComfyUI): host tests skipped"
    )
if HOST is not None:
    comfy_host.import_comfyui()


@pytest.fixture(scope="session", autouse=True)
def float32_means_float32():
    """The tests compare float32 values to 1e-5 and 1e-4; on NVIDIA GPUs since Ampere, PyTorch
    runs float32 convolutions in TF32 by default, which rounds to about 1e-3."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pytest_report_header(config):
    return f"ComfyUI host: {HOST}" if HOST else NO_HOST_REASON


def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    skip = pytest.mark.skip(reason=NO_HOST_REASON)
    for item in items:
        if "host" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if HOST is None:
        terminalreporter.write_line(NO_HOST_REASON, yellow=True)


@pytest.fixture(scope="session")
def golden_sets():
    sets = sorted(p.parent for root in (GOLDEN_DIR, GOLDEN_STEPS_DIR) for p in root.glob("*/golden.json"))
    if not sets:
        pytest.skip(f"no golden sets under {GOLDEN_DIR}")
    return sets


@pytest.fixture(scope="session")
def golden_face_sets():
    from comfyui_flashface.flashface_core.tools import golden_faces as golden

    sets = golden.find_golden_sets([GOLDEN_FACES_DIR])
    if not sets:
        pytest.skip(f"no detector golden sets under {GOLDEN_FACES_DIR}")
    return sets


@pytest.fixture(scope="session")
def faces_dir():
    if not FACES_DIR.is_dir():
        pytest.skip(f"no reference photos at {FACES_DIR}")
    return FACES_DIR


@pytest.fixture(scope="module")
def golden(golden_sets):
    """The first golden set: the tiny FlashFace checkpoint, its inputs and official outputs."""
    from comfyui_flashface.flashface_core.tools.golden_model import GoldenSet

    return GoldenSet.load(golden_sets[0])


@pytest.fixture(scope="module")
def flashface(golden):
    """The golden checkpoint loaded through LoadFlashFace's loader in float32 (one per module)."""
    from comfyui_flashface.flashface_core.loader import load_flashface

    return load_flashface(golden.checkpoint, "fp32")


@pytest.fixture(scope="module")
def inputs(golden, flashface):
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    t = golden.tensors
    return {
        "references": FlashFaceReferences(flashface.model.latent_format.process_out(t["ref_latents"])),
        "positive": [[t["cond"], {}]],
        "negative": [[t["uncond"], {}]],
    }
