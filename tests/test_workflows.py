"""The example workflows in workflows/: well-formed UI JSON, and loadable in the real frontend.

Host-free: every file parses, uses only FlashFace nodes (read from the pack's mappings) and
core ComfyUI nodes, and its links agree with the nodes' inputs and outputs. With a ComfyUI host
and Chromium: each file is dropped onto the real frontend served by a test server (the same
call a file drop makes), with no missing-node dialog and every node present, and the prompt the
frontend makes from it passes the server's validation except for the model and photo files
a user supplies.
"""

import ast
import json
import time
from pathlib import Path

import pytest
from comfy_server import Chromium, comfy_server_fixture, find_chromium  # noqa: F401 (fixture)
from conftest import ROOT
from comfyui_flashface.flashface_core import workflow_api

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Core ComfyUI 0.3.64 nodes the workflows may use, and the frontend's own note nodes.
CORE_NODES = {
    "LoadImage", "ImageBatch", "PreviewImage", "SaveImage", "CheckpointLoaderSimple", "CLIPTextEncode",
    "EmptyLatentImage", "VAEEncode", "VAEDecode", "SetLatentNoiseMask", "ImageCompositeMasked", "KSampler",
    "KSamplerAdvanced", "LoraLoaderModelOnly", "GrowMask", "LoadImageMask",
}
FRONTEND_NODES = {"Note", "MarkdownNote"}
# Files a user brings: a prompt made from the workflows fails validation only on these inputs.
USER_FILE_INPUTS = {"ckpt_name", "lora_name", "image"}
OPTIONAL_SHAPE = 7  # how the frontend marks an optional input
ACTIVE, BYPASSED = 0, 4


def pack_node_ids() -> set[str]:
    """The node IDs in the NODE_CLASS_MAPPINGS literals of nodes/*.py (read, not imported: no host needed)."""
    ids = set()
    for path in (ROOT / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NODE_CLASS_MAPPINGS"
                                                    for t in node.targets) and isinstance(node.value, ast.Dict):
                ids.update(key.value for key in node.value.keys if isinstance(key, ast.Constant))
    return ids


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_example_workflows():
    names = {path.stem for path in WORKFLOWS}
    assert {"flashface_from_photos", "flashface_stock_ksampler", "flashface_face_inpaint"} <= names


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
        assert input_["type"] in (link_type, "*"), (link_id, input_["type"], link_type)

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
    return browser.evaluate(script.replace("WORKFLOW", json.dumps(workflow)).replace("NAME", json.dumps(name)))


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
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_in_the_frontend(frontend, comfy_server, path, tmp_path_factory):
    workflow = load(path)
    report = drop(frontend, workflow, path.name)
    assert report["count"] == len(workflow["nodes"])
    assert report["types"] == sorted(node["type"] for node in workflow["nodes"])
    assert not report["unregistered"] and not report["errors"], report
    assert not report["dialogs"], report["dialogs"]
    screenshot = tmp_path_factory.getbasetemp() / f"workflow_{path.stem}.png"
    time.sleep(0.3)
    frontend.screenshot(screenshot)

    # The prompt the frontend makes: what the pack's converter makes, and the server refuses it only for
    # the files a user brings.
    prompt = graph_to_prompt(frontend)
    definitions = workflow_api.definitions_from_object_info(comfy_server.get("/object_info"))
    assert prompt == workflow_api.to_api(workflow, definitions)
    active = [node for node in workflow["nodes"] if node["mode"] == ACTIVE and node["type"] not in FRONTEND_NODES]
    assert len(prompt) == len(active)
    status, answer = comfy_server.post("/prompt", {"prompt": prompt, "client_id": "flashface-tests"})
    assert status == 400, answer
    for node_id, node_errors in answer["node_errors"].items():
        for error in node_errors["errors"]:
            assert error["extra_info"].get("input_name") in USER_FILE_INPUTS, (node_id, error)
