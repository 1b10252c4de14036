"""A real ComfyUI server with this pack, in a temporary folder, for the server and workflow tests.

``comfy_server`` (module-scoped fixture; import it into a test module) lays out a temporary
ComfyUI base (``flashface_core.tools.comfy_server.make_base``): ``custom_nodes/ComfyUI-FlashFace``
(a link to this pack), a tiny test-only node file (seeded CONDITIONING and a small random
SD1.5-layout VAE, which no download provides), ``models/`` with every model file the shipped
graphs name (``model_folder``: the golden tiny FlashFace, a random SD1.5-layout checkpoint, the
random golden RetinaFace), ``input/`` with the photos the tests and graphs load as RGB PNGs, and
an ``extra_model_paths.yaml`` registering the custom nodes and model folders.
It starts the host's ``main.py`` on a free 127.0.0.1 port and kills it at teardown (the server
itself is the developer tool's ``ComfyServer``).

``Chromium`` (``flashface_core.tools.chromium``) drives headless Chromium through the DevTools
protocol over a pipe, to load workflows into the real frontend.
"""

from pathlib import Path

import pytest
import model_folder
from conftest import FACES_DIR, HOST
from comfyui_flashface.flashface_core.tools import comfy_server as server_tool
from comfyui_flashface.flashface_core.tools.chromium import Chromium, find_chromium  # noqa: F401 (for the tests)
from comfyui_flashface.flashface_core.tools.comfy_server import PACK_DIR_NAME, PROMPT_TIMEOUT, START_TIMEOUT, free_port  # noqa: F401
from PIL import Image

CHECKPOINT = model_folder.TINY_FILE
# Two reference photos (one face each), saved as RGB PNGs of at most PHOTO_SIZE pixels.
PHOTOS = {"man.png": "man_face/1.png", "woman.png": "woman_face/1.png"}
PHOTO_SIZE = 512
TEST_NODES_FILE = "flashface_test_nodes.py"

TEST_NODES = '''"""Test-only nodes for the FlashFace server tests: inputs that no download provides."""

import torch

import comfy.sd
from comfy.ldm.models.autoencoder import AutoencoderKL


class TestTinyConditioning:
    """A seeded random CLIP-L sized prompt embedding [1, 77, 768]."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def make(self, seed):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 77, 768, generator=generator), {}]],)


class TestTinyVAE:
    """A randomly initialised comfy.sd.VAE with the SD1.5 layout at 32 base channels."""

    CATEGORY = "testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
        generator = torch.Generator().manual_seed(0)
        shapes = AutoencoderKL(ddconfig=ddconfig, embed_dim=4).state_dict()
        state = {key: torch.randn(value.shape, generator=generator) * 0.05 for key, value in shapes.items()}
        return (comfy.sd.VAE(sd=state, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}}),)


NODE_CLASS_MAPPINGS = {"TestTinyConditioning": TestTinyConditioning, "TestTinyVAE": TestTinyVAE}
'''


def prepare_base(base: Path, cache: Path) -> dict:
    """Lay out the temporary ComfyUI folders; return the paths main.py is started with."""
    if not FACES_DIR.is_dir():
        pytest.skip(f"no reference photos at {FACES_DIR}")
    paths = server_tool.make_base(base, model_folder.FOLDERS, {TEST_NODES_FILE: TEST_NODES})
    model_folder.fill_models(paths["models"], cache)
    for name, source in PHOTOS.items():
        with Image.open(FACES_DIR / source) as photo:
            rgb = photo.convert("RGB")
        rgb.thumbnail((PHOTO_SIZE, PHOTO_SIZE))
        rgb.save(paths["input"] / name)
    model_folder.fill_inputs(paths["input"])
    return paths


class ComfyServer(server_tool.ComfyServer):
    """The developer tool's server on a base laid out by ``prepare_base`` when it starts."""

    def __init__(self, base: Path, cache: Path):
        super().__init__(base, HOST)
        self.cache = cache

    def start(self):
        prepare_base(self.base, self.cache)
        return super().start()


@pytest.fixture(scope="module", name="comfy_server")
def comfy_server_fixture(tmp_path_factory):
    """A started ComfyUI server with the pack (import this into a test module to use it)."""
    if HOST is None:
        pytest.skip("no ComfyUI host")
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"), tmp_path_factory.getbasetemp() / "model_cache")
    try:
        server.start()
        yield server
    finally:
        server.stop()
