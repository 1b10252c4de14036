"""The shipped graphs in workflows/ (UI format) and workflows/api/ (API format), run for real.

Host-free: every file parses, uses only FlashFace nodes (read from the pack's mappings) and
core ComfyUI nodes, loads the model files the model guide names, and its links agree with the
nodes' inputs and outputs. With a ComfyUI host: the API files are what
``python -m flashface_core.tools.workflow_api`` makes of the UI files now, and each runs to a saved
image on a real server (tiny golden FlashFace, random SD1.5-layout CLIP and VAE, random
RetinaFace: ``model_folder``) at 64x64 and 2 steps; a graph naming a missing model file is
refused with the pack's message. With Chromium too: each UI file is dropped onto the real
frontend (the same call a file drop makes), with no missing-node dialog, serializes back as
it is on disk, the prompt the frontend builds is the converter's, and, queued at 64x64 and 2
steps, it finishes with a saved image.
"""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from comfy_server import Chromium, comfy_server_fixture, find_chromium  # noqa: F401 (fixture)
from conftest import HOST, ROOT
from comfyui_flashface.flashface_core.model_files import catalog
from comfyui_flashface.flashface_core.tools import workflow_api

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
# The shipped graphs as release 0.2.0 saved them, before the nodes moved to the V3 schema: users'
# saved graphs look like these and must keep loading and running.
SAVED_GRAPHS = Path(__file__).parent / "saved_graphs" / "workflows"
SAVED_WORKFLOWS = sorted(SAVED_GRAPHS.glob("*.json"))
SAVED_RECIPES = {"flashface_from_photos", "flashface_stock_ksampler", "flashface_face_inpaint", "flashface_age_change",
                 "flashface_many_references", "flashface_drawn_to_real", "flashface_sampler_custom_advanced"}
# Graphs shipped after 0.2.0, with no saved copy of theirs to keep loading.
NEW_RECIPES = {"flashface_two_people", "flashface_save_identity", "flashface_saved_identity", "flashface_detail",
               "flashface_detail_photo"}
RECIPES = SAVED_RECIPES | NEW_RECIPES
IDENTITY_FILE = "person.safetensors"  # what flashface_save_identity writes and flashface_saved_identity loads
# The model files the guide (models/README.md, python -m flashface_core.download) has users fetch.
MODEL_FILES = {"LoadFlashFace": catalog.FLASHFACE.filename, "CheckpointLoaderSimple": catalog.SD15.filename}
TEST_SIZE, TEST_STEPS = 64, 2
DETAIL_FEATHER, ONE_FACE = 8, "largest"
# Core ComfyUI 0.3.64 nodes the workflows may use, and the frontend's own note nodes.
CORE_NODES = {
    "LoadImage", "ImageBatch", "PreviewImage", "SaveImage", "CheckpointLoaderSimple", "CLIPTextEncode",
    "EmptyLatentImage", "VAEEncode", "VAEDecode", "SetLatentNoiseMask", "ImageCompositeMasked", "KSampler",
    "KSamplerAdvanced", "LoraLoaderModelOnly", "GrowMask", "LoadImageMask", "RandomNoise", "KSamplerSelect",
    "SamplerCustomAdvanced", "ConditioningSetAreaPercentage", "ConditioningSetArea", "ConditioningSetMask",
    "ConditioningCombine",
}
FRONTEND_NODES = {"Note", "MarkdownNote"}
OPTIONAL_SHAPE = 7  # how the frontend marks an optional input
ACTIVE, BYPASSED = 0, 4


def pack_node_ids() -> set[str]:
    """The ``node_id`` of every ``io.Schema`` in nodes/*.py (read, not imported: no host needed)."""
    ids = set()
    for path in (ROOT / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "node_id" and isinstance(node.value, ast.Constant):
                ids.add(node.value.value)
    return ids


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_recipe_has_a_graph_and_an_api_file():
    assert {path.stem for path in WORKFLOWS} == RECIPES
    assert [path.name for path in API_FILES] == [path.name for path in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_graphs_load_the_files_the_model_guide_names(path):
    nodes = load(path)["nodes"]
    for node in nodes:
        if node["type"] in MODEL_FILES:
            assert node["widgets_values"][0] == MODEL_FILES[node["type"]], node
        if node["type"] == "FlashFaceEncodeReferenceFaces":
            assert node["widgets_values"][0] in ("retinaface", "none (images are face crops)"), node
    notes = [node["widgets_values"][0] for node in nodes if node["type"] == "Note"]
    assert len(notes) == 1 and "reference_start" in notes[0], notes
    assert "face box" in notes[0] or "MaskEditor" in notes[0], notes


def shrink(prompt: dict, seed: int | None = None) -> dict:
    """The graph at TEST_SIZE pixels and TEST_STEPS steps, so a CPU runs it in seconds (and another seed); a
    detail pass's crops at TEST_SIZE too, one face per image (the random RetinaFace finds hundreds)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        for name in ("seed", "noise_seed"):
            if seed is not None and name in node["inputs"]:
                node["inputs"][name] = seed
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=TEST_SIZE, height=TEST_SIZE)
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = TEST_STEPS
        if "crop_size" in node["inputs"]:
            node["inputs"].update(crop_size=TEST_SIZE, feather=DETAIL_FEATHER, face_selection=ONE_FACE)
    return prompt


def saved_images(server, entry) -> list[Path]:
    status = entry["status"]
    assert status["status_str"] == "success", [m for m in status["messages"] if m[0] == "execution_error"] or server.log()[-5000:]
    images = [image for output in entry["outputs"].values() for image in output.get("images", []) if image["type"] == "output"]
    paths = [server.output_dir / image["subfolder"] / image["filename"] for image in images]
    assert paths and all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in paths)
    return paths


@pytest.mark.host
def test_graph_files_are_what_the_scripts_make_now():
    """The --check of python -m flashface_core.workflow_build and workflow_api: the UI files are what their
    descriptions give, and the API files what the converter makes of the UI files."""
    env = {**os.environ, "COMFYUI_PATH": str(HOST), "PYTHONDONTWRITEBYTECODE": "1"}
    check = ("import sys; from flashface_core.tools import workflow_api, workflow_build; "
             "sys.exit(workflow_build.main(['--check']) or workflow_api.main(['--check']))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _graph_folders() -> list[tuple[str, Path]]:
    """(test id, folder) of every graph to run: the shipped ones, and each saved 0.2.0 graph that is no
    longer the same as the shipped one (an identical file is the same test, and ComfyUI's cache would
    answer it without running)."""
    graphs = [(name, ROOT / "workflows") for name in sorted(RECIPES)]
    for name in sorted(SAVED_RECIPES):
        if any(load(folder / f"{name}.json") != load(ROOT / "workflows" / kind / f"{name}.json")
               for folder, kind in ((SAVED_GRAPHS, ""), (SAVED_GRAPHS / "api", "api"))):
            graphs.append((f"saved_0.2.0_{name}", SAVED_GRAPHS))
    return graphs


def test_the_saved_graphs_of_every_recipe_are_kept():
    assert {path.stem for path in SAVED_WORKFLOWS} == SAVED_RECIPES
    assert {path.stem for path in (SAVED_GRAPHS / "api").glob("*.json")} == SAVED_RECIPES


@pytest.fixture(scope="module", params=_graph_folders(), ids=lambda graph: graph[0])
def recipe(request) -> tuple[str, Path]:
    """A graph's name and folder; module-scoped so that pytest runs each graph's server and frontend tests one
    after the other, and the server reuses the outputs it cached for the first."""
    name, folder = request.param
    return name.removeprefix("saved_0.2.0_"), folder


def ensure_identity(server):
    """The identity flashface_saved_identity loads, made as a user makes it: by running flashface_save_identity."""
    if not (server.base / "models" / "flashface_identities" / IDENTITY_FILE).is_file():
        saved_images(server, server.run(shrink(load(ROOT / "workflows" / "api" / "flashface_save_identity.json")), timeout=240))
    assert (server.base / "models" / "flashface_identities" / IDENTITY_FILE).is_file()


@pytest.mark.host
def test_api_graph_runs_on_the_server(comfy_server, recipe):
    name, folder = recipe
    ensure_identity(comfy_server)
    saved_images(comfy_server, comfy_server.run(shrink(load(folder / "api" / f"{name}.json")), timeout=240))


@pytest.mark.host
def test_missing_model_file_is_refused_with_what_to_download(comfy_server):
    prompt = load(API_FILES[0])
    loader = next(node_id for node_id, node in prompt.items() if node["class_type"] == "LoadFlashFace")
    prompt[loader]["inputs"]["ckpt_name"] = "flashface.safetensors"
    # The face-crop preview does not need the model, so ComfyUI may still accept the rest of the graph.
    status, answer = comfy_server.post("/prompt", {"prompt": prompt, "client_id": "flashface-tests"})
    assert status in (200, 400) and list(answer["node_errors"]) == [loader], answer
    (error,) = answer["node_errors"][loader]["errors"]
    assert error["type"] == "custom_validation_failed"
    message = error["details"]
    folder = str(comfy_server.base / "models" / "flashface")
    for part in ("flashface.safetensors is not in", folder, catalog.FLASHFACE.url, "python -m flashface_core.download`",
                 "python -m flashface_core.convert"):
        assert part in message, message


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_uses_known_nodes(path):
    flashface = pack_node_ids()
    assert "FlashFaceSampler" in flashface
    workflow = load(path)
    assert workflow["version"] == 0.4 and workflow["nodes"]
    types = {node["type"] for node in workflow["nodes"]}
    assert types <= flashface | CORE_NODES | FRONTEND_NODES, types - flashface - CORE_NODES - FRONTEND_NODES
    assert types & flashface


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_links_are_consistent(path):
    workflow = load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and max(nodes) <= workflow["last_node_id"]
    links = {link[0]: link for link in workflow["links"]}
    assert len(links) == len(workflow["links"]) and max(links) <= workflow["last_link_id"]

    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        output = nodes[origin]["outputs"][origin_slot]
        input_ = nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and input_["link"] == link_id, link_id
        assert output["type"] == link_type, (link_id, output["type"], link_type)
        # An input of several types lists them with commas, as LiteGraph reads them.
        assert link_type in input_["type"].split(",") or input_["type"] == "*", (link_id, input_["type"], link_type)

    for node in workflow["nodes"]:
        for slot in node.get("outputs", []):
            for link_id in slot.get("links") or []:
                assert links[link_id][1] == node["id"], (node["id"], link_id)
        for slot in node.get("inputs", []):
            if slot["link"] is not None:
                assert links[slot["link"]][3] == node["id"], (node["id"], slot["name"])
            elif node["mode"] == ACTIVE and "widget" not in slot and slot.get("shape") != OPTIONAL_SHAPE:
                pytest.fail(f"{path.name}: required input {node['type']}.{slot['name']} of node {node['id']} "
                            "is not connected")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_encoders_use_the_official_detector_and_no_onnx_one(path):
    """The shipped graphs run after `pip install -r requirements.txt`: RetinaFace (or pre-cropped faces)."""
    encoders = [node for node in load(path)["nodes"] if node["type"] == "FlashFaceEncodeReferenceFaces"]
    for node in encoders:
        assert node["widgets_values"][0] in ("retinaface", "none (images are face crops)"), node["widgets_values"]


# In the real frontend


@pytest.fixture(scope="module")
def frontend(request, tmp_path_factory):
    """Headless Chromium with the ComfyUI page of the test server open."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium not found (Debian: apt-get install chromium): frontend tests skipped")
    comfy_server = request.getfixturevalue("comfy_server")
    browser = Chromium(executable, tmp_path_factory.mktemp("chromium"))
    try:
        browser.navigate(comfy_server.url)
        browser.wait_for("!!(window.app && app.graph && window.LiteGraph && app.graph.nodes.length > 0)", timeout=90)
        yield browser
    finally:
        browser.close()


def drop(browser, workflow: dict, name: str):
    """Load a workflow the way a file dropped on the page is loaded (app.handleFile), then report."""
    script = """
    (async () => {
      document.querySelectorAll('.p-dialog-close-button').forEach(button => button.click());
      const file = new File([JSON.stringify(WORKFLOW)], NAME, {type: 'application/json'});
      await app.handleFile(file);
      await new Promise(resolve => setTimeout(resolve, 500));
      const nodes = app.graph.nodes;
      return {
        count: nodes.length,
        types: nodes.map(node => node.type).sort(),
        unregistered: nodes.filter(node => !LiteGraph.registered_node_types[node.type]).map(node => node.type),
        errors: nodes.filter(node => node.has_errors).map(node => node.type),
        dialogs: [...document.querySelectorAll('.p-dialog')].map(dialog => dialog.innerText),
      };
    })()
    """
    # The name first: a graph's own text (a note) may hold the word NAME.
    return browser.evaluate(script.replace("NAME", json.dumps(name)).replace("WORKFLOW", json.dumps(workflow)))


def graph_to_prompt(browser) -> dict:
    return browser.evaluate("app.graphToPrompt().then(p => p.output)")


@pytest.mark.host
def test_missing_node_types_are_noticed(frontend):
    """The check below is meaningful: a node type no pack provides brings up the dialog."""
    workflow = load(WORKFLOWS[0])
    workflow["nodes"][0]["type"] = "NoSuchFlashFaceNode"
    report = drop(frontend, workflow, "broken.json")
    assert "NoSuchFlashFaceNode" in report["unregistered"]
    assert any("NoSuchFlashFaceNode" in text for text in report["dialogs"]), report["dialogs"]


@pytest.mark.host
def test_page_errors_are_noticed(frontend):
    """The check at the end of the test below is meaningful: an error thrown in the page is seen."""
    frontend.events.clear()
    frontend.evaluate("setTimeout(() => { throw new Error('flashface test error') }, 0), 1")
    frontend.evaluate("new Promise(resolve => setTimeout(resolve, 200))")
    assert any("flashface test error" in error for error in frontend.console_errors())


@pytest.mark.host
def test_workflow_loads_in_the_frontend(frontend, comfy_server, recipe, tmp_path_factory):
    name, folder = recipe
    path = folder / f"{name}.json"
    workflow = load(path)
    ensure_identity(comfy_server)
    frontend.events.clear()
    report = drop(frontend, workflow, path.name)
    assert report["count"] == len(workflow["nodes"])
    assert report["types"] == sorted(node["type"] for node in workflow["nodes"])
    assert not report["unregistered"] and not report["errors"], report
    assert not report["dialogs"], report["dialogs"]
    screenshot = tmp_path_factory.getbasetemp() / f"workflow_{path.stem}.png"
    time.sleep(0.3)
    frontend.screenshot(screenshot)

    # Saved back by the frontend, the graph is the file: the file is in the frontend's own format
    # (a graph saved before a node gained optional widgets at its end gets them with their defaults).
    definitions = workflow_api.definitions_from_object_info(comfy_server.get("/object_info"))
    saved = {node["id"]: node for node in frontend.evaluate("app.graph.serialize()")["nodes"]}
    for node in workflow["nodes"]:
        page = with_saved_socket_types(without_new_widgets(node_form(saved[node["id"]]), node_form(node), definitions), node_form(node))
        assert page == node_form(node), node["id"]

    # The prompt the frontend makes is the converter's, and it runs.
    prompt = graph_to_prompt(frontend)
    assert prompt == workflow_api.to_api(workflow, definitions)
    active = [node for node in workflow["nodes"] if node["mode"] == ACTIVE and node["type"] not in FRONTEND_NODES]
    assert len(prompt) == len(active)
    # Another seed than the server test's, so the sampler runs again rather than coming from ComfyUI's cache.
    frontend.evaluate(SHRINK.replace("SIZE", str(TEST_SIZE)).replace("STEPS", str(TEST_STEPS)).replace("SEED", "1")
                      .replace("FEATHER", str(DETAIL_FEATHER)).replace("ONE_FACE", ONE_FACE))
    prompt = graph_to_prompt(frontend)
    assert prompt == shrink(workflow_api.to_api(workflow, definitions), seed=1)
    before = set(comfy_server.output_dir.rglob("*.png"))
    assert not set(saved_images(comfy_server, comfy_server.run(prompt, timeout=240))) & before
    assert not frontend.console_errors(), "the page threw while loading, saving or queueing the graph"


# What the frontend keeps of a node when it saves the graph (positions and sizes it may round or grow).
def node_form(node: dict) -> dict:
    return {
        "type": node["type"], "mode": node["mode"], "title": node.get("title"),
        "widgets_values": node.get("widgets_values") or [],
        "inputs": [(i["name"], i["type"], i.get("link"), i.get("widget", {}).get("name"), i.get("shape"))
                   for i in node.get("inputs", [])],
        "outputs": [(o["name"], o["type"], o.get("links") or []) for o in node.get("outputs", [])],
    }


def without_new_widgets(page: dict, file: dict, definitions) -> dict:
    """``page`` less the widgets the page added at the end of a node saved without them, after
    checking that each holds its default, as the converter gives them."""
    known = {entry[3] for entry in file["inputs"]}
    added = [entry[3] for entry in page["inputs"] if entry[3] and entry[3] not in known]
    if not added or page["type"] not in definitions:
        return page
    defaults = [definitions[page["type"]].input(name).options.get("default") for name in added]
    assert page["widgets_values"][-len(added):] == defaults, (page["type"], added)
    return {**page, "widgets_values": page["widgets_values"][:-len(added)],
            "inputs": [entry for entry in page["inputs"] if entry[3] not in added]}


def with_saved_socket_types(page: dict, file: dict) -> dict:
    """``page`` with the file's socket type on each input whose type the node widened since the
    file was saved (the samplers' references came to take people too: "FLASHFACE_REFERENCES" ->
    "FLASHFACE_REFERENCES,FLASHFACE_PEOPLE"); the page takes the node's current type."""
    saved = {entry[0]: entry[1] for entry in file["inputs"]}
    inputs = [(name, saved[name], *rest) if name in saved and kind.split(",")[0] == saved[name] else (name, kind, *rest)
              for name, kind, *rest in page["inputs"]]
    return {**page, "inputs": inputs}


# Set in the page as a user would: small image, few steps, a seed.
SHRINK = """
(() => {
  for (const node of app.graph.nodes) {
    for (const widget of node.widgets || []) {
      if (node.type === 'EmptyLatentImage' && (widget.name === 'width' || widget.name === 'height')) widget.value = SIZE;
      if (widget.name === 'steps') widget.value = STEPS;
      if (widget.name === 'seed' || widget.name === 'noise_seed') widget.value = SEED;
      if (widget.name === 'crop_size') widget.value = SIZE;
      if (widget.name === 'feather') widget.value = FEATHER;
      if (widget.name === 'face_selection') widget.value = 'ONE_FACE';
    }
  }
  return true;
})()
"""


@pytest.mark.host
def test_face_inpainting_without_a_painted_mask_says_to_paint_it(comfy_server):
    """Load Image gives an empty 64x64 mask for a photo with no painted mask: the run says what to do."""
    prompt = shrink(load(ROOT / "workflows" / "api" / "flashface_face_inpaint.json"))
    photo = next(node for node in prompt.values() if node["_meta"]["title"].startswith("Photo to change"))
    photo["inputs"]["image"] = "face_1.png"  # an RGB photo: no alpha, so no mask
    entry = comfy_server.run(prompt, timeout=240)
    assert entry["status"]["status_str"] == "error"
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert error["node_type"] == "FlashFaceSampler"
    assert "MaskEditor" in error["exception_message"] and "64x64" in error["exception_message"], error


@pytest.mark.host
def test_the_detail_pass_at_denoise_zero_keeps_every_pixel_outside_the_face_masks(comfy_server):
    """The photo detail graph on the server, with the offline detector (the random RetinaFace finds no real
    face) and denoise 0: the saved picture is the photo outside the face masks, pixel for pixel, and only the
    VAE's round trip inside them."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    from PIL import Image

    from comfyui_flashface.flashface_core.detail.crop import CropSettings
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail

    prompt = shrink(load(ROOT / "workflows" / "api" / "flashface_detail_photo.json"))
    detail = next(node for node in prompt.values() if node["class_type"] == "FlashFaceFaceDetail")
    settings = {**detail["inputs"], "denoise": 0.0, "detector": "centerface (offline)", "crop_size": 128, "feather": 16}
    detail["inputs"].update(settings)
    (path,) = saved_images(comfy_server, comfy_server.run(prompt, timeout=240))
    with Image.open(comfy_server.base / "input" / "photo.png") as photo:
        pixels = np.asarray(photo.convert("RGB")).astype(np.float32) / 255.0  # as Load Image reads it
    unchanged = np.clip(255.0 * pixels, 0, 255).astype(np.uint8)  # as Save Image writes it
    with Image.open(path) as saved:
        result = np.asarray(saved.convert("RGB"))
    crops = crop_for_detail(torch.from_numpy(pixels)[None], CropSettings(**{name: settings[name] for name in (
        "detector", "threshold", "face_selection", "face_index", "min_face_size", "context_factor", "crop_size",
        "mask_grow", "feather", "no_face")})).stitch.crops
    assert crops, "the offline detector found no face in photo.png"
    masked = np.zeros(result.shape[:2], dtype=bool)
    for crop in crops:
        rows, cols = crop.in_image()
        masked[rows, cols] |= crop.image_mask().numpy() > 0
    assert np.array_equal(result[~masked], unchanged[~masked])
    assert not np.array_equal(result[masked], unchanged[masked])  # the VAE's round trip inside the masks
