"""The UI -> API converter on the frontend's special cases (host-free: node definitions written here).

Each expected prompt is what ComfyUI frontend 1.27's graphToPrompt makes of the same graph:
the seed's extra control widget skipped, a widget turned into an input taking its link, a
Reroute passed through, a PrimitiveNode's value handed to the input it feeds, a bypassed node
passing its matching input on, a muted node and the links from it left out, Notes dropped.
The shipped graphs are compared with the real frontend in test_workflows.py.
"""

import pytest

from comfyui_flashface.flashface_core.tools import workflow_api
from comfyui_flashface.flashface_core.tools.workflow_api import GraphError, node_def, to_api

DEFINITIONS = {
    "Loader": node_def("Loader", {"required": {"ckpt_name": (["a.ckpt", "b.ckpt"], {})}}, "Load Model"),
    "Patch": node_def("Patch", {"required": {"model": ("MODEL", {}), "strength": ("FLOAT", {"default": 1.0})}}),
    "Sampler": node_def("Sampler", {
        "required": {"model": ("MODEL", {}), "seed": ("INT", {"control_after_generate": True}), "steps": ("INT", {}),
                     "mode": (["x", "y"], {})},
        "optional": {"extra": ("MODEL", {}), "scale": ("FLOAT", {"forceInput": True})},
    }),
    "Photo": node_def("Photo", {"required": {"image": (["p.png"], {"image_upload": True})}}),
}


def node(node_id, kind, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    entry = {"id": node_id, "type": kind, "mode": mode,
             "inputs": [{"name": name, "type": kind_, "link": link, **({"widget": {"name": name}} if widget else {})}
                        for name, kind_, link, widget in inputs],
             "outputs": [{"name": name, "type": kind_, "links": links} for name, kind_, links in outputs]}
    if widgets is not None:
        entry["widgets_values"] = widgets
    if title:
        entry["title"] = title
    return entry


def graph(nodes, links):
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_widgets_links_reroutes_primitives_bypass_mute_and_notes():
    nodes = [
        node(1, "Loader", outputs=[("MODEL", "MODEL", [1])], widgets=["a.ckpt"]),
        node(2, "Reroute", inputs=[("", "*", 1, False)], outputs=[("", "MODEL", [2])]),
        node(3, "Patch", inputs=[("model", "MODEL", 2, False), ("strength", "FLOAT", None, True)],
             outputs=[("MODEL", "MODEL", [3])], widgets=[0.5], mode=workflow_api.BYPASSED),
        node(4, "PrimitiveNode", outputs=[("INT", "INT", [4])], widgets=[25, "fixed"]),
        node(5, "Sampler", inputs=[("model", "MODEL", 3, False), ("extra", "MODEL", 5, False),
                                   ("scale", "FLOAT", None, False), ("seed", "INT", None, True),
                                   ("steps", "INT", 4, True), ("mode", "COMBO", None, True)],
             outputs=[], widgets=[7, "randomize", 10, "y"], title="My sampler"),
        node(6, "Loader", outputs=[("MODEL", "MODEL", [5])], widgets=["b.ckpt"], mode=workflow_api.MUTED),
        node(7, "Note", widgets=["read me"]),
    ]
    links = [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 5, 0, "MODEL"], [4, 4, 0, 5, 4, "INT"],
             [5, 6, 0, 5, 1, "MODEL"]]
    assert to_api(graph(nodes, links), DEFINITIONS) == {
        "1": {"inputs": {"ckpt_name": "a.ckpt"}, "class_type": "Loader", "_meta": {"title": "Load Model"}},
        "5": {"inputs": {"seed": 7, "steps": 25, "mode": "y", "model": ["1", 0]}, "class_type": "Sampler",
              "_meta": {"title": "My sampler"}},
    }


def test_upload_button_and_list_values():
    nodes = [node(1, "Photo", outputs=[("IMAGE", "IMAGE", None)], widgets=["p.png", "image"])]
    assert to_api(graph(nodes, []), DEFINITIONS)["1"]["inputs"] == {"image": "p.png"}
    nodes[0]["widgets_values"] = [["p.png", "q.png"], "image"]
    assert to_api(graph(nodes, []), DEFINITIONS)["1"]["inputs"] == {"image": {"__value__": ["p.png", "q.png"]}}


@pytest.mark.parametrize("workflow, message", [
    (graph([node(1, "Loader", widgets=["a.ckpt", "extra"])], []), "2 widget values where this ComfyUI's Loader has 1"),
    (graph([node(1, "Unknown")], []), "no node type Unknown"),
    ({"nodes": [], "links": [], "definitions": {"subgraphs": [{}]}}, "subgraphs"),
    ({"1": {"class_type": "Loader", "inputs": {}}}, "Not a ComfyUI graph in the UI format"),
])
def test_graphs_that_cannot_be_converted_say_why(workflow, message):
    with pytest.raises(GraphError, match=message):
        to_api(workflow, DEFINITIONS)


def test_a_graph_saved_before_a_node_gained_optional_widgets_takes_their_defaults():
    """As the page does: missing trailing optional widget values take the node's defaults (left
    out of the prompt where there is none); a missing required one is still an error."""
    definitions = {"Loader": node_def("Loader", {
        "required": {"ckpt_name": (["a.ckpt"], {}), "dtype": (["default", "fp16"], {})},
        "optional": {"cache_mb": ("INT", {"default": 2048}), "model": ("MODEL", {}), "seed": ("INT", {})},
    })}
    for values, inputs in (
        (["a.ckpt", "fp16"], {"ckpt_name": "a.ckpt", "dtype": "fp16", "cache_mb": 2048}),
        (["a.ckpt", "fp16", 0], {"ckpt_name": "a.ckpt", "dtype": "fp16", "cache_mb": 0}),
        (["a.ckpt", "fp16", 0, 7, "fixed"], {"ckpt_name": "a.ckpt", "dtype": "fp16", "cache_mb": 0, "seed": 7}),
    ):
        assert to_api(graph([node(1, "Loader", widgets=values)], []), definitions)["1"]["inputs"] == inputs, values
    for values in (["a.ckpt"], ["a.ckpt", "fp16", 0, 7, "fixed", "extra"]):
        with pytest.raises(GraphError, match=f"{len(values)} widget values where this ComfyUI's Loader has 5"):
            to_api(graph([node(1, "Loader", widgets=values)], []), definitions)
