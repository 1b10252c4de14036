"""Pictures of the shipped graphs as ComfyUI's page draws them, for the template browser and the README.

    python -m flashface_core.tools.screenshots [--chromium PATH] [--browser-shot PNG] [NAME ...]

Starts ComfyUI (the host found as for the other tools) on a temporary base folder with this
pack as a custom node, an empty placeholder file for every model a graph names (so the
graphs' menus hold their values) and a drawn placeholder for every photo. In headless
Chromium each ``workflows/<name>.json`` is loaded as a dropped file is (``app.handleFile``),
the view is fitted to the graph (the frontend's Fit View command, menus hidden, full detail
at any zoom) and the graph's area is saved as ``workflows/<name>.jpg``: the frontend
(1.27, ComfyUI 0.3.64) shows a custom node's template ``<name>`` with the picture
``/api/workflow_templates/<pack folder>/<name>.jpg``, which ComfyUI serves from the pack's
``workflows/`` folder. The main graph is also saved as ``docs/images/<name>.png`` for the
README. Last, the template browser is opened on the pack's list and every card must show
its picture (``--browser-shot`` saves what it looked like).
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from . import chromium as chromium_tool
from . import comfy_server
from .host import PACK_ROOT

log = logging.getLogger(__name__)

WORKFLOWS_DIR = PACK_ROOT / "workflows"
README_IMAGES_DIR = PACK_ROOT / "docs" / "images"
README_GRAPHS = ("flashface_from_photos", "flashface_detail")
THUMBNAIL_SUFFIX = ".jpg"  # the frontend asks for <name>.jpg for every custom node template
THUMBNAIL_BOX, THUMBNAIL_QUALITY = (1024, 640), 80
README_WIDTH, README_COLORS = 1600, 256
VIEWPORT = (2400, 1300)  # large enough that Fit View draws the graphs near 80 % zoom
PADDING = 24
FIT_ZOOM = 0.95  # the share of the page the fitted graph takes (the Fit View command: 0.75)
PAGE_TIMEOUT = 120.0
CARDS_TIMEOUT = 20.0
# Where the first widget of these nodes names a file: the model folder it lists, or the input folder.
FILE_WIDGETS = {"LoadFlashFace": "flashface", "CheckpointLoaderSimple": "checkpoints",
                "LoraLoaderModelOnly": "loras", "LoadImage": "input", "LoadImageMask": "input",
                "FlashFaceLoadIdentity": "flashface_identities"}
MODEL_FOLDERS = sorted({folder for folder in FILE_WIDGETS.values() if folder != "input"})
# Frontend settings of the pictures: no minimap or canvas statistics; text drawn at every zoom.
VIEW_SETTINGS = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                 "Comfy.Canvas.SelectionToolbox": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0}
# The page's own buttons, which focus mode leaves over the canvas.
HIDE_CSS = ".comfy-menu-hamburger, .graph-canvas-container .p-buttongroup { display: none !important; }"


class ScreenshotError(Exception):
    """A graph the page did not draw as it should, or a missing browser or host."""


def named_files(graphs: list[Path]) -> dict[str, set[str]]:
    """Folder ("input" or a model folder) -> the file names the graphs' file widgets hold."""
    files = {}
    for path in graphs:
        for node in json.loads(path.read_text())["nodes"]:
            folder = FILE_WIDGETS.get(node["type"])
            if folder and node.get("widgets_values"):
                files.setdefault(folder, set()).add(node["widgets_values"][0])
    return files


def placeholder_photo(name: str, size: int = 256):
    """A grey head-and-shoulders drawing with its file name: the graphs' photos are the user's."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (92, 104, 120))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size * 0.32, size * 0.16, size * 0.68, size * 0.58), fill=(176, 184, 196))
    draw.ellipse((size * 0.14, size * 0.62, size * 0.86, size * 1.25), fill=(176, 184, 196))
    draw.text((8, 8), name, fill=(235, 238, 242))
    return image


def fill_base(paths: dict, files: dict[str, set[str]]):
    for folder, names in files.items():
        for name in names:
            if folder == "input":
                placeholder_photo(name).save(paths["input"] / name)
            else:
                (paths["models"] / folder / name).write_bytes(b"")


DROP = """
(async () => {
  document.querySelectorAll('.p-dialog-close-button').forEach(button => button.click());
  await app.handleFile(new File([TEXT], NAME, {type: 'application/json'}));
  return true;
})()
"""
# Once the page holds the dropped graph (handleFile returns before the graph is in place), what loaded badly.
LOADED = """
(() => {
  const nodes = app.graph.nodes;
  if (nodes.length !== COUNT) return null;
  return {
    unregistered: nodes.filter(node => !LiteGraph.registered_node_types[node.type]).map(node => node.type),
    dialogs: [...document.querySelectorAll('.p-dialog')].map(dialog => dialog.innerText),
  };
})()
"""
PHOTOS_LOADED = """
app.graph.nodes.filter(node => node.type === 'LoadImage' || node.type === 'LoadImageMask')
  .every(node => (node.imgs || []).length && node.imgs.every(image => image.complete))
"""
# What the Fit View command does (fit the view around every node and group), without its animation, so
# the picture is taken of the fitted view; then the graph's area on the screen (CSS pixels).
FIT = """
(async () => {
  app.canvas.deselectAll();
  const box = [Infinity, Infinity, -Infinity, -Infinity];
  for (const item of [...app.graph.nodes, ...app.graph.groups]) {
    const [x, y, w, h] = item.boundingRect;
    box[0] = Math.min(box[0], x); box[1] = Math.min(box[1], y);
    box[2] = Math.max(box[2], x + w); box[3] = Math.max(box[3], y + h);
  }
  app.canvas.ds.fitToBounds([box[0], box[1], box[2] - box[0], box[3] - box[1]], {zoom: ZOOM});
  app.canvas.setDirty(true, true);
  for (let frame = 0; frame < 3; frame++) await new Promise(resolve => requestAnimationFrame(resolve));
  const {scale, offset} = app.canvas.ds;
  return box.map((value, index) => (value + offset[index % 2]) * scale);
})()
"""
OPEN_TEMPLATES = """
(async () => {
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  for (let tries = 0; tries < 100; tries++) {
    const entry = [...document.querySelectorAll('.p-dialog *')]
      .find(element => element.children.length === 0 && element.textContent.trim() === PACK);
    if (entry) { entry.click(); return true; }
    await new Promise(resolve => setTimeout(resolve, 100));
  }
  return false;
})()
"""
# Each graph's card in the template browser: "shown" once its picture (``<name>.jpg``, fetched into a blob) has
# loaded, "broken" if it did not decode, "waiting" while the card or its picture is not there yet.
CARDS = """
Object.fromEntries(NAMES.map(name => {
  const image = document.querySelector(`.p-dialog [data-testid="template-workflow-${name}"] img`);
  if (!image || !image.complete) return [name, 'waiting'];
  return [name, image.naturalWidth > 0 ? 'shown' : 'broken'];
}))
"""


def open_page(browser, server):
    browser.set_viewport(*VIEWPORT)
    browser.navigate(server.url)
    # The default graph loaded first: a drop before it would be replaced by it.
    browser.wait_for("!!(window.app && app.graph && window.LiteGraph && app.graph.nodes.length > 0)", timeout=PAGE_TIMEOUT)
    browser.evaluate(f"(() => {{ const style = document.createElement('style'); style.textContent = {json.dumps(HIDE_CSS)};"
                     " document.head.append(style); return true; })()")
    browser.evaluate("app.extensionManager.command.execute('Workspace.ToggleFocusMode').then(() => true)")


def graph_picture(browser, path: Path):
    """The graph of ``path`` as the page draws it after a drop and Fit View (a PIL image)."""
    from PIL import Image

    text = path.read_text()
    # The name first: a graph's own text (a note) may hold the word NAME.
    browser.evaluate(DROP.replace("NAME", json.dumps(path.name)).replace("TEXT", json.dumps(text)))
    try:
        report = browser.wait_for(LOADED.replace("COUNT", str(len(json.loads(text)["nodes"]))), timeout=30)
        if not (report["unregistered"] or report["dialogs"]):
            browser.wait_for(PHOTOS_LOADED, timeout=30)
    except TimeoutError:
        raise ScreenshotError(f"the page did not load {path.name} and its photos") from None
    if report["unregistered"] or report["dialogs"]:
        raise ScreenshotError(f"{path.name} did not load cleanly in the page: {report}")
    box = browser.evaluate(FIT.replace("ZOOM", str(FIT_ZOOM)))
    page = Image.open(BytesIO(browser.screenshot())).convert("RGB")
    left, top = max(0, int(box[0]) - PADDING), max(0, int(box[1]) - PADDING)
    right, bottom = min(page.width, int(box[2]) + PADDING), min(page.height, int(box[3]) + PADDING)
    return page.crop((left, top, right, bottom))


def save_thumbnail(picture, target: Path):
    thumbnail = picture.copy()
    thumbnail.thumbnail(THUMBNAIL_BOX)
    thumbnail.save(target, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)


def save_readme_picture(picture, target: Path):
    """A PNG at README width, in a small palette (the canvas has few colours), to keep the file small."""
    from PIL import Image

    scaled = picture.copy()
    if scaled.width > README_WIDTH:
        scaled = scaled.resize((README_WIDTH, round(picture.height * README_WIDTH / picture.width)), Image.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    scaled.quantize(README_COLORS).save(target, "PNG", optimize=True)


def check_template_browser(browser, names: list[str], shot: Path | None):
    """Open the template browser on this pack's list; every graph's card must show its picture."""
    pack = comfy_server.PACK_DIR_NAME
    if not browser.evaluate(OPEN_TEMPLATES.replace("PACK", json.dumps(pack))):
        raise ScreenshotError(f"the template browser has no {pack} list")
    deadline = time.monotonic() + CARDS_TIMEOUT
    while True:
        cards = browser.evaluate(CARDS.replace("NAMES", json.dumps(names)))
        if all(state == "shown" for state in cards.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(0.5)
    if shot is not None:
        browser.screenshot(shot)
    missing = sorted(name for name, state in cards.items() if state != "shown")
    if missing:
        raise ScreenshotError(f"the template browser shows no picture for {', '.join(missing)}")


def take(graphs: list[Path], executable: str, work: Path, browser_shot: Path | None):
    paths = comfy_server.make_base(work / "comfyui", MODEL_FOLDERS, settings=VIEW_SETTINGS)
    fill_base(paths, named_files(graphs))
    with comfy_server.ComfyServer(work / "comfyui") as server, \
            chromium_tool.Chromium(executable, work / "chromium", window=VIEWPORT) as browser:
        open_page(browser, server)
        for path in graphs:
            picture = graph_picture(browser, path)
            target = path.with_suffix(THUMBNAIL_SUFFIX)
            save_thumbnail(picture, target)
            log.info("wrote %s (%d KB)", target, target.stat().st_size // 1024)
            if path.stem in README_GRAPHS:
                target = README_IMAGES_DIR / f"{path.stem}.png"
                save_readme_picture(picture, target)
                log.info("wrote %s (%d KB)", target, target.stat().st_size // 1024)
        check_template_browser(browser, [path.stem for path in graphs], browser_shot)
        log.info("the template browser shows the %d pictures under %s", len(graphs), comfy_server.PACK_DIR_NAME)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashface_core.tools.screenshots", description=(
        "Save a picture of each shipped graph as ComfyUI's page draws it, beside the graph as "
        "workflows/<name>.jpg (the template browser's thumbnail), and the main graph as docs/images/<name>.png. "
        "Needs a ComfyUI host and Chromium."))
    parser.add_argument("names", nargs="*", help="graph names (default: every workflows/*.json)")
    parser.add_argument("--chromium", default=None, help="the Chromium executable (default: found on PATH)")
    parser.add_argument("--browser-shot", type=Path, default=None,
                        help="also save a screenshot of the template browser showing the pack's graphs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    log.setLevel(logging.INFO)

    graphs = sorted(WORKFLOWS_DIR.glob("*.json"))
    if args.names:
        unknown = sorted(set(args.names) - {path.stem for path in graphs})
        if unknown:
            print(f"error: no graph {', '.join(unknown)} in {WORKFLOWS_DIR}", file=sys.stderr)
            return 2
        graphs = [path for path in graphs if path.stem in args.names]
    executable = args.chromium or chromium_tool.find_chromium()
    if executable is None:
        print("error: Chromium not found: install it (Debian: apt-get install chromium) or pass --chromium",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="flashface-screenshots-") as work:
        try:
            take(graphs, executable, Path(work), args.browser_shot)
        except (ScreenshotError, RuntimeError, TimeoutError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
