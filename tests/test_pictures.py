"""The pictures of the shipped graphs (``python -m flashface_core.tools.screenshots`` makes them).

Host-free: every ``workflows/<name>.json`` has its thumbnail ``workflows/<name>.jpg`` beside it, a
JPEG small enough for the template browser's card, and the README's picture of the main graph is
there. With a ComfyUI host: ComfyUI serves the pack's ``workflows/`` folder where the frontend asks
for a custom node's templates and their pictures, and the installed frontend asks for ``.jpg``.
"""

import re
from pathlib import Path

import pytest
from conftest import ROOT
from PIL import Image

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
THUMBNAIL_BOX = (1024, 640)
THUMBNAIL_MAX_BYTES = 150_000
README_PICTURE = ROOT / "docs" / "images" / "flashface_from_photos.png"
README_MAX_BYTES = 300_000


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_graph_has_its_thumbnail_beside_it(path):
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"no {thumbnail.name}: run python -m flashface_core.tools.screenshots"
    assert thumbnail.stat().st_size <= THUMBNAIL_MAX_BYTES
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        width, height = image.size
    assert width <= THUMBNAIL_BOX[0] and height <= THUMBNAIL_BOX[1]
    assert max(width / THUMBNAIL_BOX[0], height / THUMBNAIL_BOX[1]) == pytest.approx(1, abs=0.01)
    with Image.open(thumbnail) as image:
        extremes = image.convert("L").getextrema()
    assert extremes[1] - extremes[0] > 100, "a blank picture"


def test_no_picture_without_its_graph():
    names = {path.stem for path in WORKFLOWS}
    assert {path.stem for path in (ROOT / "workflows").glob("*.jpg")} == names


def test_the_readme_shows_the_main_graph():
    assert README_PICTURE.is_file() and README_PICTURE.stat().st_size <= README_MAX_BYTES
    with Image.open(README_PICTURE) as image:
        assert image.format == "PNG" and image.width >= 1200


@pytest.mark.host
def test_comfyui_serves_the_workflows_folder_as_the_packs_templates():
    from aiohttp import web
    from app.custom_node_manager import CustomNodeManager

    class Routes:
        def get(self, path):
            return lambda handler: handler

    class WebApp:
        def __init__(self):
            self.routes = []

        def add_routes(self, routes):
            self.routes += routes

    webapp = WebApp()
    CustomNodeManager().add_routes(Routes(), webapp, [("ComfyUI-FlashFace", str(ROOT))])
    static = {route.prefix: Path(route.path) for route in webapp.routes if isinstance(route, web.StaticDef)}
    assert static.get("/api/workflow_templates/ComfyUI-FlashFace") == ROOT / "workflows", static


@pytest.mark.host
def test_the_frontend_asks_for_jpg_pictures_of_custom_node_templates():
    import comfyui_frontend_package as frontend  # a requirement of ComfyUI

    bundle = "".join(path.read_text(encoding="utf-8", errors="replace")
                     for path in (Path(frontend.__file__).parent / "static" / "assets").glob("index-*.js"))
    assert "/workflow_templates/${sourceModule}/${" in bundle
    # The templates of custom nodes: each a name from /workflow_templates, with a picture of one subtype.
    subtypes = set(re.findall(r'name: \w+,\s*mediaType: "image",\s*mediaSubtype: "(\w+)"', bundle))
    assert subtypes == {"jpg"}, subtypes
