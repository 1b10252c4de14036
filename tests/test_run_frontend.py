"""A PNG the runner wrote, dropped on the real ComfyUI page, queues and runs as it ran.

The runner runs the three-photo graph with four --ref photos (one more than its Load Image nodes) into
a test server's input and output folders, as a user's runner writes into their ComfyUI's. The PNG is
then handed to the page as a dropped file is (a File of its bytes to app.handleFile): the page's
graphToPrompt must be the prompt the runner ran, and queued on the server it makes the same image.
"""

import base64
import json

import numpy as np
import pytest
from comfy_server import comfy_server_fixture  # noqa: F401 (fixture)
from PIL import Image
from test_run import runner
from test_workflows import frontend, saved_images  # noqa: F401 (fixture)

import model_folder

pytestmark = pytest.mark.host

DROP_PNG = """
(async () => {
  document.querySelectorAll('.p-dialog-close-button').forEach(button => button.click());
  const bytes = Uint8Array.from(atob(DATA), c => c.charCodeAt(0));
  await app.handleFile(new File([bytes], NAME, {type: 'image/png'}));
  await new Promise(resolve => setTimeout(resolve, 500));
  return {
    loaders: app.graph.nodes.filter(node => node.type === 'LoadImage').map(node => node.widgets[0].value).sort(),
    unregistered: app.graph.nodes.filter(node => !LiteGraph.registered_node_types[node.type]).map(node => node.type),
    dialogs: [...document.querySelectorAll('.p-dialog')].map(dialog => dialog.innerText),
  };
})()
"""


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_runner_png_dropped_on_the_page_runs_as_it_ran(comfy_server, frontend, tmp_path):  # noqa: F811
    photos = tmp_path / "photos"
    photos.mkdir()
    model_folder.fill_inputs(photos)
    refs = [arg for index in range(1, 5) for arg in ("--ref", str(photos / f"face_{index}.png"))]
    before = set(comfy_server.output_dir.rglob("*.png"))
    result = runner("from_photos", *refs, "--prompt", "a man on a boat", "--seed", "3", "--steps", "2", "--width", "64",
                    "--height", "64", "--out", str(comfy_server.output_dir), "--input-directory",
                    str(comfy_server.base / "input"), "--extra-model-paths-config",
                    str(comfy_server.base / "extra_model_paths.yaml"), "--no-custom-nodes")
    assert result.returncode == 0, result.stdout + result.stderr
    (png,) = set(comfy_server.output_dir.rglob("*.png")) - before
    with Image.open(png) as image:
        ran, workflow = json.loads(image.info["prompt"]), json.loads(image.info["workflow"])
    names = sorted(node["inputs"]["image"] for node in ran.values() if node["class_type"] == "LoadImage")
    assert len(names) == 4 and all(name.startswith("flashface-run/") for name in names), names
    assert sorted(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "LoadImage") == names

    script = DROP_PNG.replace("DATA", json.dumps(base64.b64encode(png.read_bytes()).decode())).replace("NAME", json.dumps(png.name))
    report = frontend.evaluate(script, timeout=60)
    assert report["loaders"] == names and not report["unregistered"] and not report["dialogs"], report
    page_prompt = frontend.evaluate("app.graphToPrompt().then(p => p.output)")
    for node in ran.values():
        node.pop("is_changed", None)  # ComfyUI's executor notes each Load Image's file hash in the prompt it saves
    assert page_prompt == ran

    (queued,) = saved_images(comfy_server, comfy_server.run(page_prompt, timeout=240))
    assert np.abs(pixels(queued) - pixels(png)).max() <= 1  # the same image again
