"""Malformed graphs for the runner (in-process): each is refused with one line saying what is wrong
(which node, which field), or read correctly; never a KeyError, IndexError, TypeError or StopIteration."""

import json

import pytest
from conftest import ROOT
from graph_definitions import shipped_definitions

from comfyui_flashface.flashface_core.tools import run_options, workflow_api
from comfyui_flashface.flashface_core.tools.run_graph import RunError, find_workflow, read_graph, to_prompt
from comfyui_flashface.flashface_core.tools.run_workflow import workflow_that_ran
from comfyui_flashface.flashface_core.tools.runner import _new_ids

pytestmark = pytest.mark.host
GRAPH = ROOT / "workflows" / "flashface_from_photos.json"


@pytest.fixture(scope="module")
def definitions():
    return shipped_definitions()


def from_photos() -> dict:
    return json.loads(GRAPH.read_text())


def node_of(workflow: dict, node_type: str) -> dict:
    return next(node for node in workflow["nodes"] if node["type"] == node_type)


def test_unreadable_graph_files_say_why(tmp_path, monkeypatch):
    with pytest.raises(RunError, match="is a folder, not a graph file"):
        find_workflow(str(tmp_path))
    graph = tmp_path / "graph.json"
    graph.write_bytes(b"\xff\xfe{}")
    with pytest.raises(RunError, match="is not a ComfyUI graph: it is not UTF-8 text"):
        read_graph(graph)
    graph.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(RunError, match="nests deeper than Python reads"):
        read_graph(graph)
    graph.write_text(json.dumps({"nodes": [], "links": [], "extra": json.loads("[" * 200 + "]" * 200)}))
    with pytest.raises(RunError, match="nests more than 64 levels deep"):
        read_graph(graph)
    graph.write_text("{}")
    monkeypatch.setattr(type(graph), "read_text", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(RunError, match=r"graph.json cannot be read \(Permission denied\)"):
        read_graph(graph)


def broken(change) -> dict:
    workflow = from_photos()
    change(workflow)
    return workflow


def _set(target: dict, key, value):
    target[key] = value


BROKEN = {
    "a node that is a number": (lambda w: w["nodes"].append(5), r"nodes\[\d+\] is not a node \(it is a int\)"),
    "a node without id": (lambda w: w["nodes"][0].pop("id"), r"nodes\[0\] has no valid id \(None\)"),
    "two nodes with one id": (lambda w: w["nodes"].append(dict(w["nodes"][0])), "Two nodes have the id 1"),
    "a node type that is a list": (lambda w: _set(w["nodes"][0], "type", ["x"]), r"Node 1 has no node type \(its 'type' is \['x'\]\)"),
    "inputs that are an object": (lambda w: _set(node_of(w, "FlashFaceSampler"), "inputs", {}), r"Node \d+ \(FlashFaceSampler\): its 'inputs' is not a list"),
    "a socket without name": (lambda w: _set(node_of(w, "FlashFaceSampler")["inputs"], 0, 3), r"inputs slot 0 is not a socket with a name"),
    "a link id that is a list": (lambda w: _set(node_of(w, "FlashFaceSampler")["inputs"][0], "link", [1]), "has a link that is not a link id"),
    "output links that are a number": (lambda w: _set(w["nodes"][0]["outputs"][0], "links", 3), "output '.*' has links that are not a list"),
    "widgets_values that are text": (lambda w: _set(w["nodes"][0], "widgets_values", "x"), r"Node 1 \(.*\): its widgets_values are not a list"),
    "a mode that is text": (lambda w: _set(w["nodes"][0], "mode", "on"), "its mode 'on' is not a number"),
    "a short link": (lambda w: _set(w["links"], 0, [1, 2]), r"links\[0\] is not a link"),
    "a link slot that is text": (lambda w: _set(w["links"][0], 2, "0"), r"links\[0\] .* needs a link id, node ids and slot numbers"),
    "a link object without origin": (lambda w: _set(w["links"], 0, {"id": 1, "target_id": 6, "target_slot": 0}), r"links\[0\]"),
    "definitions that are a list": (lambda w: _set(w, "definitions", []), "'definitions' entry is not an object"),
    "too few widget values": (lambda w: node_of(w, "FlashFaceSampler")["widgets_values"].pop(), "widget values where this ComfyUI's"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_malformed_ui_graphs_say_what_is_wrong(definitions, case):
    change, message = BROKEN[case]
    with pytest.raises(RunError, match=f"^{GRAPH}: .*{message}"):
        to_prompt(broken(change), definitions, GRAPH)


@pytest.mark.parametrize("change, message", [
    (lambda p: _set(p["1"], "class_type", ["LoadImage"]), r"Node 1 needs a class_type \(text\) and inputs"),
    (lambda p: _set(p["1"], "inputs", []), r"Node 1 needs a class_type"),
    (lambda p: _set(p["1"], "_meta", "title"), r"Node 1 \(CheckpointLoaderSimple\): its _meta is not an object"),
    (lambda p: _set(p["6"]["inputs"], "vae", ["1", "2"]), "input 'vae' links to node 1 without an output slot number"),
])
def test_malformed_api_graphs_say_what_is_wrong(definitions, change, message):
    prompt = json.loads((ROOT / "workflows" / "api" / "flashface_from_photos.json").read_text())
    change(prompt)
    with pytest.raises(RunError, match=message):
        to_prompt(prompt, definitions, GRAPH)


def ran(workflow: dict, definitions, photos) -> tuple[dict, dict]:
    prompt = to_prompt(workflow, definitions, GRAPH)
    run_options.place_references(prompt, definitions, photos, _new_ids(prompt, workflow))
    return prompt, workflow_that_ran(workflow, prompt, definitions)


def test_links_written_as_objects_and_a_link_to_a_deleted_node(definitions):
    """The frontend's object links are read; a link whose node was deleted is dropped, as the page drops it."""
    workflow = from_photos()
    workflow["links"] = [dict(zip(workflow_api.LINK_FIELDS, link)) for link in workflow["links"]]
    preview = node_of(workflow, "PreviewImage")
    workflow["nodes"].remove(preview)  # its link stays, pointing at nothing
    prompt, saved = ran(workflow, definitions, ["a.png", "b.png"])
    assert str(preview["id"]) not in prompt
    assert workflow_api.to_api(saved, definitions) == prompt


def test_a_reroute_chain_longer_than_pythons_recursion(definitions):
    workflow = from_photos()
    sampler = node_of(workflow, "FlashFaceSampler")
    slot = next(i for i, socket in enumerate(sampler["inputs"]) if socket["name"] == "references")
    first_link = sampler["inputs"][slot]["link"]
    origin = next(link for link in workflow["links"] if link[0] == first_link)
    previous, count = origin[:3], 3000
    for index in range(count):
        node_id, link_id = 1000 + index, 1000 + index
        workflow["nodes"].append({"id": node_id, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": link_id}],
                                  "outputs": [{"name": "", "type": "FLASHFACE_REFERENCES", "links": [link_id + 1]}]})
        workflow["links"].append([link_id, previous[1], previous[2], node_id, 0, "FLASHFACE_REFERENCES"])
        previous = [link_id, node_id, 0]
    workflow["links"] = [link for link in workflow["links"] if link[0] != first_link]
    workflow["links"].append([5000, previous[1], 0, sampler["id"], slot, "FLASHFACE_REFERENCES"])
    sampler["inputs"][slot]["link"] = 5000
    prompt = to_prompt(workflow, definitions, GRAPH)
    assert prompt[str(sampler["id"])]["inputs"]["references"] == [str(origin[1]), origin[2]]
