"""Fuzz: malformed graphs made from the shipped ones (workflows/*.json and workflows/api/*.json) by random
deletions and type changes of nodes, links, sockets, ids and widget values, through the runner's graph
reading, conversion, option mapping, image-name checks and saved UI workflow (not execution). Every case
ends in the runner's RunError with a message, or succeeds (and then the saved workflow gives the prompt);
nothing else escapes. Seeded (random.Random), so a failure names the case that reproduces it."""

import json
import random
import time
import traceback
from pathlib import Path

import pytest
from conftest import ROOT
from graph_definitions import shipped_definitions

from comfyui_flashface.flashface_core.tools import run_options, workflow_api
from comfyui_flashface.flashface_core.tools.run_graph import RunError, read_graph, to_prompt
from comfyui_flashface.flashface_core.tools.run_photos import Folders, RunInputs, check_graph_images
from comfyui_flashface.flashface_core.tools.run_workflow import workflow_that_ran
from comfyui_flashface.flashface_core.tools.runner import _new_ids, photos_given

pytestmark = pytest.mark.host
SEED = 16
CASES = 400
TIME_LIMIT = 60.0
GRAPHS = sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "workflows" / "api").glob("*.json"))
ODD_VALUES = [None, 0, -1, 1, 2**70, 1.5, float("nan"), "", "x", "../../etc/passwd", "/etc/passwd", [], [0], ["1", 0],
              [None, None], {}, {"id": 1}, True, False, "LoadImage", "FlashFaceEncodeReferenceFaces"]


def _paths(value, path=()):
    """Every (container, key) in a JSON value, nodes and links first-class by being many."""
    found = []
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            found.append((value, key))
            stack.append((item, (*path, key)))
    return found


def mutate(graph, rng: random.Random):
    for _ in range(rng.randint(1, 4)):
        places = _paths(graph)
        if not places:
            return graph
        container, key = rng.choice(places)
        operation = rng.random()
        if operation < 0.35:  # delete
            del container[key]
        elif operation < 0.75:  # another type or value
            container[key] = json.loads(json.dumps(rng.choice(ODD_VALUES + [container[key]] * 2)))
        elif operation < 0.85 and isinstance(container, list):  # duplicate (two nodes or links with one id)
            container.insert(rng.randrange(len(container) + 1), json.loads(json.dumps(container[key])))
        elif operation < 0.95 and isinstance(container[key], (int, str)) and not isinstance(container[key], bool):
            container[key] = rng.choice([str(container[key]), rng.randint(-2, 40)])  # another id, slot or link
        else:  # swap with another value of the graph
            other, other_key = rng.choice(places)
            try:
                container[key], other[other_key] = other[other_key], container[key]
            except (KeyError, IndexError):
                pass
    return graph


def run_case(source: dict, rng: random.Random, folder: Path, definitions) -> str:
    graph = mutate(json.loads(json.dumps(source)), rng)
    path = folder / "graph.json"
    text = json.dumps(graph, allow_nan=True).encode()
    if rng.random() < 0.05 and text:  # a damaged file
        cut = rng.randrange(len(text))
        text = text[:cut] + bytes([rng.randrange(256)]) + text[cut + 1:]
    path.write_bytes(text)
    try:
        graph = read_graph(path)
        prompt = to_prompt(graph, definitions, path)
        workflow = graph if workflow_api.is_ui_graph(graph) else None
        inputs = RunInputs(folder / "input")
        photos = [inputs.name("ref", i, Path(f"p{i}.png")) for i in range(1, rng.randint(0, 12) + 1)]
        if photos:
            run_options.place_references(prompt, definitions, photos, _new_ids(prompt, workflow))
        run_options.set_every(prompt, run_options.SEED_INPUTS, 5, "--seed")
        run_options.set_text(prompt, "positive", "a man")
        references = run_options.reference_load_images(prompt, definitions)
        others = run_options.other_load_images(prompt, definitions)
        given = photos_given(prompt, inputs)
        folders = Folders(input=folder / "input", output=folder / "output", temp=folder / "temp")
        try:
            check_graph_images(prompt, folders, given, references, others)
        except RunError as error:
            assert str(error).strip()
        if workflow is not None:
            saved = workflow_that_ran(workflow, prompt, definitions)
            assert workflow_api.to_api(saved, definitions) == prompt, "the saved workflow is not the prompt"
        return "ran"
    except RunError as error:
        assert str(error).strip(), "an empty message"
        return "refused"


def test_malformed_graphs_end_in_the_runners_error_or_run(tmp_path):
    definitions = shipped_definitions()
    sources = [json.loads(path.read_text()) for path in GRAPHS]
    rng = random.Random(SEED)
    outcomes, failures = {"ran": 0, "refused": 0}, []
    deadline = time.monotonic() + TIME_LIMIT
    for case in range(CASES):
        if time.monotonic() > deadline:
            break
        index = rng.randrange(len(sources))
        state = rng.getstate()
        try:
            outcomes[run_case(sources[index], rng, tmp_path, definitions)] += 1
        except Exception:  # what the runner must never let out: report the case to replay
            rng.setstate(state)
            failures.append(f"case {case} ({GRAPHS[index].name}):\n{traceback.format_exc(limit=-4)}")
    assert not failures, f"{len(failures)} cases escaped:\n" + "\n".join(failures[:5])
    assert sum(outcomes.values()) >= CASES // 2, outcomes  # the time limit left most cases run
    assert outcomes["ran"] and outcomes["refused"], outcomes
