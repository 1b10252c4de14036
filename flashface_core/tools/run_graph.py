"""The runner's graph: found by file or shipped name, read, checked and made an API prompt."""

import json
from pathlib import Path

from . import workflow_api
from .host import PACK_ROOT

# ComfyUI graphs nest a few levels (node, inputs, a list value); far deeper is not a graph, and would
# exhaust Python's recursion in json and in copies.
MAX_DEPTH = 64


class RunError(Exception):
    """Something the user can fix; the message says what, and the command exits with ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def find_workflow(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        raise RunError(f"{name} is a folder, not a graph file.")
    if path.is_file():
        return path
    for candidate in (name, f"{name}.json", f"flashface_{name}", f"flashface_{name}.json"):
        shipped = PACK_ROOT / "workflows" / candidate
        if shipped.is_file():
            return shipped
    shipped = ", ".join(p.stem.removeprefix("flashface_") for p in sorted((PACK_ROOT / "workflows").glob("*.json")))
    raise RunError(f"{name}: no such file, and no shipped graph of that name (shipped: {shipped}).")


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH and isinstance(value, (dict, list)):
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_graph(path: Path) -> dict:
    not_a_graph = f"{path} is not a ComfyUI graph"
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RunError(f"{not_a_graph}: it is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise RunError(f"{not_a_graph}: it is not JSON ({error}).") from None
    except RecursionError:
        raise RunError(f"{not_a_graph}: its JSON nests deeper than Python reads.") from None
    except OSError as error:
        raise RunError(f"{path} cannot be read ({error.strerror or error}).") from None
    if _depth(graph) > MAX_DEPTH:
        raise RunError(f"{not_a_graph}: its JSON nests more than {MAX_DEPTH} levels deep.")
    if workflow_api.is_ui_graph(graph) or workflow_api.is_api_graph(graph):
        return graph
    raise RunError(f"{not_a_graph}: save it from the ComfyUI page (Workflow > Save or Export (API)).")


def to_prompt(graph: dict, definitions, path: Path) -> dict:
    """The API prompt of a UI- or API-format graph, checked for what the runner reads."""
    try:
        if workflow_api.is_ui_graph(graph):
            prompt = workflow_api.to_api(graph, definitions)
        else:
            prompt = workflow_api.check_api_prompt(json.loads(json.dumps(graph)))
    except workflow_api.GraphError as error:
        raise RunError(f"{path}: {error}") from None
    unknown = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in definitions})
    if unknown:
        raise RunError(f"{path}: this ComfyUI has no node type {', '.join(unknown)}: install the custom nodes "
                       "that provide it (--verbose shows the ones that failed to load).")
    return prompt
