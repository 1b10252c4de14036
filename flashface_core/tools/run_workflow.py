"""The UI graph saved in the runner's PNGs: the graph file with what the runner changed in its prompt
(values, new Load Image and encoder nodes with their links, inputs it disconnected), so the PNG dropped
on the page builds the prompt that ran."""

import json

from . import workflow_api

NODE_GAP = 40


def _box(node: dict) -> tuple[float, float, float, float] | None:
    pos, size = node.get("pos"), node.get("size")
    try:
        return float(pos[0]), float(pos[1]), float(size[0]), float(size[1])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def _place_below_column(node: dict, nodes, x: float, width: float):
    """Put ``node`` under the lowest node overlapping the column [x, x + width]."""
    bottoms = [box[1] + box[3] for other in nodes if other is not node and (box := _box(other))
               and box[0] < x + width and x < box[0] + box[2]]
    node["pos"] = [x, max(bottoms, default=-NODE_GAP) + NODE_GAP]


class _Editor:
    """Edits on a UI graph's nodes and links, kept consistent on both ends of each link."""

    def __init__(self, workflow: dict, definitions):
        self.workflow = workflow
        self.graph = workflow_api.UiGraph(workflow, definitions)
        self.by_key = {str(node_id): node for node_id, node in self.graph.nodes.items()}
        self.next_link = max((i for i in self.graph.links if isinstance(i, int)), default=0) + 1
        self.next_link = max(self.next_link, _int(workflow.get("last_link_id")) + 1)

    def unlink(self, link_id):
        link = self.graph.links.pop(link_id, None)
        if link is None:
            return
        target = self.graph.nodes.get(link[3])
        if target is not None and link[4] < len(target.get("inputs") or []) and target["inputs"][link[4]].get("link") == link_id:
            target["inputs"][link[4]]["link"] = None
        origin = self.graph.nodes.get(link[1])
        if origin is not None and link[2] < len(origin.get("outputs") or []):
            output = origin["outputs"][link[2]]
            output["links"] = [i for i in output.get("links") or [] if i != link_id] or None

    def link(self, origin_key: str, origin_slot: int, target: dict, slot: int):
        socket = target["inputs"][slot]
        if socket.get("link") is not None:
            self.unlink(socket["link"])
        origin = self.by_key[origin_key]
        output = origin["outputs"][origin_slot]
        link_id, self.next_link = self.next_link, self.next_link + 1
        self.graph.links[link_id] = [link_id, origin["id"], origin_slot, target["id"], slot, output.get("type")]
        socket["link"] = link_id
        output["links"] = [*(output.get("links") or []), link_id]

    def remove_node(self, key: str):
        node = self.by_key.pop(key)
        for link_id in [i for i, link in self.graph.links.items() if node["id"] in (link[1], link[3])]:
            self.unlink(link_id)
        del self.graph.nodes[node["id"]]

    def add_node(self, key: str, entry: dict):
        """A node of the prompt that the UI graph lacks, copied from one of its type."""
        template = next(n for n in self.graph.nodes.values() if n["type"] == entry["class_type"])
        node = json.loads(json.dumps(template))
        node.update(id=int(key), title=entry["_meta"]["title"], mode=0)
        for socket in node.get("inputs") or []:
            socket["link"] = None
        for socket in node.get("outputs") or []:
            socket["links"] = None
        self.graph.nodes[node["id"]] = self.by_key[key] = node

    def save(self) -> dict:
        dict_links = any(isinstance(link, dict) for link in self.workflow["links"])
        links = list(self.graph.links.values())
        self.workflow["nodes"] = list(self.graph.nodes.values())
        self.workflow["links"] = [dict(zip(workflow_api.LINK_FIELDS, link)) for link in links] if dict_links else links
        node_ids = [i for i in self.graph.nodes if isinstance(i, int)]
        if "last_node_id" in self.workflow:
            self.workflow["last_node_id"] = max([_int(self.workflow["last_node_id"]), *node_ids])
        if "last_link_id" in self.workflow:
            self.workflow["last_link_id"] = self.next_link - 1
        return self.workflow


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _plain(value):
    """A prompt value as the widget holds it (the converter wraps list values)."""
    return value["__value__"] if isinstance(value, dict) and set(value) == {"__value__"} else value


def _place(editor: _Editor, key: str, prompt: dict):
    """A new node goes under the node of its own type that it extends (a chained encoder), else left of
    the first node it feeds (a Load Image)."""
    node, entry = editor.by_key[key], prompt[key]
    own = _box(node)
    upstream = [editor.by_key[str(v[0])] for v in entry["inputs"].values() if _is_link(v)]
    same = next((n for n in upstream if n["type"] == node["type"]), None)
    consumer = next((editor.by_key[k] for k, e in prompt.items()
                     if any(_is_link(v) and str(v[0]) == key for v in e["inputs"].values())), None)
    anchor = _box(same or consumer) if (same or consumer) else None
    if own and anchor:
        x = anchor[0] if same else anchor[0] - own[2] - NODE_GAP
        _place_below_column(node, editor.graph.nodes.values(), x, own[2])


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2


def workflow_that_ran(workflow: dict, prompt: dict, definitions) -> dict:
    """``workflow`` (a UI graph) changed so that ``workflow_api.to_api`` of it gives ``prompt``: the runner's
    prompt of that graph, with values set, nodes added (Load Image, chained encoders) or removed and
    inputs relinked or disconnected."""
    before = workflow_api.to_api(workflow, definitions)
    editor = _Editor(json.loads(json.dumps(workflow)), definitions)
    for key in before.keys() - prompt.keys():
        editor.remove_node(key)
    for key in sorted(prompt.keys() - editor.by_key.keys(), key=workflow_api.id_order):
        editor.add_node(key, prompt[key])
    for key, entry in prompt.items():
        node = editor.by_key[key]
        names = {socket.get("name") for socket in node.get("inputs") or []}
        for name, value in entry["inputs"].items():  # a socket the saved node lacks (an older frontend's)
            if _is_link(value) and name not in names:
                output = editor.by_key[str(value[0])]["outputs"][value[1]]
                node["inputs"] = [*(node.get("inputs") or []), {"name": name, "type": output.get("type"), "link": None}]
        for slot, socket in enumerate(node.get("inputs") or []):
            wanted = entry["inputs"].get(socket["name"])
            link = editor.graph.input_link(node, slot)
            current = editor.graph.resolve_link(link, socket.get("type")) if link else None
            if _is_link(wanted):
                if current != (str(wanted[0]), wanted[1]):
                    editor.link(str(wanted[0]), wanted[1], node, slot)
            elif current is not None and (current[0] != "value" or _plain(wanted) != current[1]):
                editor.unlink(socket["link"])  # disconnected, or a value the runner set in place of a primitive's
        values = node.get("widgets_values")
        for name, value in entry["inputs"].items():
            if _is_link(value):
                continue
            if isinstance(values, dict):
                values[name] = _plain(value)
                continue
            index = workflow_api.widget_index(node, definitions[node["type"]], name)
            if isinstance(values, list) and index is not None and index < len(values):
                values[index] = _plain(value)
    for key in sorted(prompt.keys() - before.keys(), key=workflow_api.id_order):
        _place(editor, key, prompt)
    return editor.save()
