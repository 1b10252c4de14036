"""ComfyUI graphs from the UI format (what the frontend saves) to the API format (what /prompt takes).

The frontend builds the API prompt itself (``app.graphToPrompt``); this does the same from the
saved file, so ``workflows/api/`` can be generated from ``workflows/`` and a graph can run
without a browser. The rules are those of ComfyUI frontend 1.27:

* a node's ``widgets_values`` hold one value per widget, in the order of the node's inputs
  (required, then optional) that are widgets: INT, FLOAT, STRING, BOOLEAN and COMBO inputs,
  unless ``forceInput``. Some inputs add a widget of their own that is never sent: the
  ``control_after_generate`` menu after an INT with that option (or named ``seed`` /
  ``noise_seed`` when the option is absent) or a COMBO with it, and the upload button after
  a COMBO with ``image_upload`` (and the video, audio and animated-image variants);
* a linked input (a socket, or a widget turned into an input) takes the link instead;
* Note, MarkdownNote, Reroute and PrimitiveNode live only in the frontend: a Reroute passes
  its link through, a PrimitiveNode hands its value to the inputs it feeds;
* muted nodes (mode 2) are left out, with the links that came from them; bypassed nodes
  (mode 4) pass on the input that matches the output's slot or type.

Usage: ``python -m flashface_core.tools.workflow_api`` writes ``workflows/api/<name>.json`` for every
``workflows/*.json``; ``--check`` only reports files that differ from what it would write.
"""

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .host import PACK_ROOT

WORKFLOWS_DIR = PACK_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
SEED_NAMES = ("seed", "noise_seed")
PRIMITIVE, REROUTE = "PrimitiveNode", "Reroute"
FRONTEND_ONLY = {"Note", "MarkdownNote", PRIMITIVE, REROUTE}
MUTED, BYPASSED = 2, 4

log = logging.getLogger(__name__)


class GraphError(ValueError):
    """A graph that cannot be read or converted; the message says which node and why."""


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str  # "COMBO" for a list of choices
    options: dict
    required: bool = True

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def widget_count(self) -> int:
        """How many entries of ``widgets_values`` this input takes (0, 1 or 2)."""
        if not self.is_widget:
            return 0
        extra = 0
        if self.type == "INT":
            extra = self.options.get("control_after_generate", self.name in SEED_NAMES)
        elif self.type == "COMBO":
            extra = self.options.get("control_after_generate", False) or any(self.options.get(o) for o in UPLOAD_OPTIONS)
        return 1 + bool(extra)


@dataclass(frozen=True)
class NodeDef:
    class_type: str
    display_name: str
    inputs: tuple[InputDef, ...] = field(default_factory=tuple)

    def input(self, name: str) -> InputDef | None:
        return next((i for i in self.inputs if i.name == name), None)


def _input_def(name: str, spec, required: bool) -> InputDef:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, (list, tuple)):
        kind = "COMBO"
    return InputDef(name, str(kind), dict(options), required)


def node_def(class_type: str, input_types: dict, display_name: str | None = None) -> NodeDef:
    """A NodeDef from a node's ``INPUT_TYPES()`` (or the ``input`` entry of ``/object_info``)."""
    inputs = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            inputs.append(_input_def(name, spec, section == "required"))
    return NodeDef(class_type, display_name or class_type, tuple(inputs))


def definitions_from_object_info(object_info: dict) -> dict[str, NodeDef]:
    """NodeDefs from a server's ``/object_info`` answer."""
    return {name: node_def(name, info.get("input", {}), info.get("display_name")) for name, info in object_info.items()}


def definitions_from_host() -> dict[str, NodeDef]:
    """NodeDefs of the nodes registered in the ComfyUI imported in this process (a node whose
    INPUT_TYPES fails is left out, as the server leaves it out of /object_info)."""
    import nodes

    definitions = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        try:
            definitions[name] = node_def(name, cls.INPUT_TYPES(), nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name))
        except Exception as error:  # another pack's node: whatever it raises, the other nodes still work
            log.warning("node %s left out: its INPUT_TYPES failed (%s)", name, error)
    return definitions


def is_ui_graph(graph) -> bool:
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and isinstance(graph.get("links"), list)


def is_api_graph(graph) -> bool:
    return (isinstance(graph, dict) and bool(graph)
            and all(isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict) for n in graph.values()))


def check_api_prompt(prompt: dict) -> dict:
    """An API prompt with the structure the runner reads (GraphError saying which node is wrong otherwise)."""
    for node_id, node in prompt.items():
        if not (isinstance(node, dict) and isinstance(node.get("class_type"), str) and isinstance(node.get("inputs"), dict)):
            raise GraphError(f"Node {node_id} needs a class_type (text) and inputs (an object).")
        where = f"Node {node_id} ({node['class_type']})"
        meta = node.get("_meta", {})
        if not isinstance(meta, dict) or not isinstance(meta.get("title", ""), str):
            raise GraphError(f"{where}: its _meta is not an object with a title.")
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and not _is_slot(value[1]):
                raise GraphError(f"{where}: input '{name}' links to node {value[0]} without an output slot number.")
    return prompt


def widget_values(node: dict, definition: NodeDef) -> dict:
    """The values the node's widgets send, by input name."""
    values = node.get("widgets_values")
    widget_inputs = [i for i in definition.inputs if i.is_widget]
    if values is None:
        values = []
    if isinstance(values, dict):  # some packs save widgets by name
        return {i.name: values[i.name] for i in widget_inputs if i.name in values}
    starts = [0]
    for spec in widget_inputs:
        starts.append(starts[-1] + spec.widget_count)
    # A graph saved before a node gained optional inputs at its end lacks their values: as the page
    # does when it loads such a graph, they take their defaults (left out where there is none).
    first_of_trailing_optional = next(i for i in range(len(widget_inputs), -1, -1) if i == 0 or widget_inputs[i - 1].required)
    if len(values) not in starts[first_of_trailing_optional:]:
        raise GraphError(
            f"Node {node['id']} ({node['type']}) has {len(values)} widget values where this ComfyUI's "
            f"{node['type']} has {starts[-1]}: the graph was saved with another version of the node. Load it in the "
            f"ComfyUI page and save it again."
        )
    return {spec.name: values[start] if start < len(values) else spec.options["default"]
            for spec, start in zip(widget_inputs, starts) if start < len(values) or "default" in spec.options}


def widget_index(node: dict, definition: NodeDef, name: str) -> int | None:
    """Where input ``name``'s value sits in ``widgets_values`` (None: not a widget)."""
    position = 0
    for spec in definition.inputs:
        if spec.name == name:
            return position if spec.is_widget else None
        position += spec.widget_count
    return None


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_slot(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def id_order(node_id):
    """Node ids in the frontend's order: numbers by value, then other ids by name."""
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _check_sockets(where: str, node: dict, key: str, link_key: str):
    sockets = node.get(key)
    if sockets is None:
        return
    if not isinstance(sockets, list):
        raise GraphError(f"{where}: its '{key}' is not a list.")
    for slot, socket in enumerate(sockets):
        if not isinstance(socket, dict) or not isinstance(socket.get("name"), str):
            raise GraphError(f"{where}: {key} slot {slot} is not a socket with a name.")
        if not isinstance(socket.get("type", ""), (str, type(None))):
            raise GraphError(f"{where}: {key} slot {slot} has a type that is not text.")
        value = socket.get(link_key)
        if link_key == "link" and value is not None and not _is_id(value):
            raise GraphError(f"{where}: input '{socket.get('name')}' has a link that is not a link id ({value!r}).")
        if link_key == "links" and not (value is None or (isinstance(value, list) and all(map(_is_id, value)))):
            raise GraphError(f"{where}: output '{socket.get('name')}' has links that are not a list of link ids.")


def _check_node(index: int, node) -> dict:
    if not isinstance(node, dict):
        raise GraphError(f"nodes[{index}] is not a node (it is a {type(node).__name__}).")
    if not _is_id(node.get("id")):
        raise GraphError(f"nodes[{index}] has no valid id ({node.get('id')!r}).")
    where = f"Node {node['id']}"
    if not isinstance(node.get("type"), str) or not node["type"]:
        raise GraphError(f"{where} has no node type (its 'type' is {node.get('type')!r}).")
    where = f"Node {node['id']} ({node['type']})"
    if "mode" in node and not _is_slot(node["mode"]):
        raise GraphError(f"{where}: its mode {node['mode']!r} is not a number.")
    if not isinstance(node.get("title", ""), (str, type(None))):
        raise GraphError(f"{where}: its title is not text.")
    if not isinstance(node.get("widgets_values"), (list, dict, type(None))):
        raise GraphError(f"{where}: its widgets_values are not a list.")
    _check_sockets(where, node, "inputs", "link")
    _check_sockets(where, node, "outputs", "links")
    return node


LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def _check_link(index: int, link) -> list:
    """A link as the list [id, origin id, origin slot, target id, target slot, type] (the frontend also
    saves links as objects with those names)."""
    if isinstance(link, dict):
        link = [link.get(name) for name in LINK_FIELDS]
    if not isinstance(link, list) or len(link) < 5:
        raise GraphError(f"links[{index}] is not a link ([id, origin, slot, target, slot, type]).")
    link = (link + [None])[:6]
    if not (_is_id(link[0]) and _is_id(link[1]) and _is_id(link[3]) and _is_slot(link[2]) and _is_slot(link[4])):
        raise GraphError(f"links[{index}] ({link[:5]!r}) needs a link id, node ids and slot numbers.")
    return link


class UiGraph:
    """A UI-format graph, checked for the structure the conversion reads."""

    def __init__(self, workflow: dict, definitions: dict[str, NodeDef]):
        extra = workflow.get("definitions")
        if extra is not None and not isinstance(extra, dict):
            raise GraphError("The graph's 'definitions' entry is not an object.")
        if (extra or {}).get("subgraphs"):
            raise GraphError("Graphs with subgraphs are not supported here: unpack the subgraphs in the ComfyUI page.")
        self.nodes = {}
        for index, node in enumerate(workflow["nodes"]):
            node = _check_node(index, node)
            if node["id"] in self.nodes:
                raise GraphError(f"Two nodes have the id {node['id']}: the graph file is damaged.")
            self.nodes[node["id"]] = node
        self.links = {}
        for index, link in enumerate(workflow["links"]):
            link = _check_link(index, link)
            origin = self.nodes.get(link[1])
            if origin is not None and link[2] >= len(origin.get("outputs") or []):
                raise GraphError(f"Link {link[0]} comes from output {link[2]} of node {link[1]} ({origin['type']}), "
                                 f"which has {len(origin.get('outputs') or [])} outputs: the graph file is damaged.")
            self.links[link[0]] = link
        self.definitions = definitions
        unknown = sorted({n["type"] for n in self.nodes.values() if n["type"] not in FRONTEND_ONLY and n["type"] not in definitions})
        if unknown:
            raise GraphError(f"This ComfyUI has no node type {', '.join(unknown)}: install the custom nodes that provide it.")

    def input_link(self, node: dict, slot: int):
        inputs = node.get("inputs") or []
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        return self.links.get(inputs[slot]["link"])

    def resolve_link(self, link, target_type):
        """The (node id, output slot) a link really comes from, a ("value", v) pair, or None."""
        seen = set()
        while link is not None:
            origin_id, origin_slot = link[1], link[2]
            if (origin_id, origin_slot) in seen:
                raise GraphError(f"Node {origin_id}: the links loop through bypassed or reroute nodes.")
            seen.add((origin_id, origin_slot))
            origin = self.nodes.get(origin_id)
            if origin is None:
                return None
            if origin["type"] == PRIMITIVE:
                values = origin.get("widgets_values")
                return ("value", values[0]) if isinstance(values, list) and values else None
            if origin["type"] == REROUTE:
                link = self.input_link(origin, 0)
            elif origin.get("mode", 0) == BYPASSED:
                slot = self._bypass_slot(origin, origin_slot, target_type)
                link = None if slot is None else self.input_link(origin, slot)
            elif origin.get("mode", 0) == MUTED or origin["type"] in FRONTEND_ONLY:
                return None
            else:
                return (str(origin_id), origin_slot)
        return None

    @staticmethod
    def _bypass_slot(node: dict, slot: int, target_type):
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        output_type = outputs[slot].get("type") if slot < len(outputs) else None

        def fits(input_type, wanted):
            return input_type == wanted or "*" in (input_type, wanted) or (
                isinstance(input_type, str) and isinstance(wanted, str) and wanted in input_type.split(","))

        if target_type in ("*", "", None):
            return slot if len(inputs) > slot else (0 if inputs else None)
        if slot < len(inputs) and fits(inputs[slot].get("type"), output_type) and fits(inputs[slot].get("type"), target_type):
            return slot
        for index, candidate in enumerate(inputs):
            if candidate.get("type") == target_type:
                return index
        for index, candidate in enumerate(inputs):
            if fits(candidate.get("type"), output_type) and fits(candidate.get("type"), target_type):
                return index
        return None

    def title(self, node: dict) -> str:
        return node.get("title") or self.definitions[node["type"]].display_name

    def convert(self) -> dict:
        prompt = {}
        for node_id in sorted(self.nodes, key=id_order):
            node = self.nodes[node_id]
            if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
                continue
            definition = self.definitions[node["type"]]
            inputs = {name: ({"__value__": value} if isinstance(value, list) else value)
                      for name, value in widget_values(node, definition).items()}
            for slot, socket in enumerate(node.get("inputs") or []):
                link = self.input_link(node, slot)
                if link is None:
                    continue
                resolved = self.resolve_link(link, socket.get("type"))
                if resolved is None:
                    continue
                if resolved[0] == "value":
                    value = resolved[1]
                    inputs[socket["name"]] = {"__value__": value} if isinstance(value, list) else value
                else:
                    inputs[socket["name"]] = [resolved[0], resolved[1]]
            prompt[str(node_id)] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": self.title(node)}}
        # As the frontend does: drop links to nodes that are not in the prompt.
        for entry in prompt.values():
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                    del entry["inputs"][name]
        return prompt


def to_api(workflow: dict, definitions: dict[str, NodeDef]) -> dict:
    """The API prompt the frontend would queue for this UI-format graph."""
    if not is_ui_graph(workflow):
        raise GraphError("Not a ComfyUI graph in the UI format (no 'nodes' and 'links').")
    return UiGraph(workflow, definitions).convert()


def api_path(workflow_path: Path) -> Path:
    return API_DIR / workflow_path.name


def dumps(prompt: dict) -> str:
    return json.dumps(prompt, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashface_core.tools.workflow_api", description=(
        "Write the API format of UI-format ComfyUI graphs (default: every workflows/*.json of the pack, to "
        "workflows/api/), using the node definitions of the ComfyUI found (core nodes and this pack)."))
    parser.add_argument("graphs", nargs="*", type=Path, help="UI-format graph files (default: workflows/*.json)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: workflows/api/)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # ComfyUI's start-up log stays quiet
    log.setLevel(logging.INFO)

    from . import host

    host.load_nodes(other_custom_nodes=False)
    definitions = definitions_from_host()
    graphs = args.graphs or sorted(WORKFLOWS_DIR.glob("*.json"))
    stale = []
    for path in graphs:
        target = (args.out / path.name) if args.out else api_path(path)
        text = dumps(to_api(json.loads(path.read_text()), definitions))
        if target.is_file() and target.read_text() == text:
            continue
        if args.check:
            stale.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        log.info("wrote %s", target)
    for target in stale:
        log.error("%s differs from its UI graph: run python -m flashface_core.tools.workflow_api", target)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
