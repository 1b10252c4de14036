"""How the runner's options land in a graph, and the UI graph it saves in its PNGs (in-process: the shipped
graphs converted with the node definitions of ``graph_definitions``; no graph runs here).

The saved UI graph must give the prompt that ran: ``workflow_api.to_api`` of it (what the page's
graphToPrompt makes of it, test_workflows.py) equals the runner's prompt.
"""

import itertools
import json

import pytest
from conftest import ROOT
from graph_definitions import shipped_definitions

from comfyui_flashface.flashface_core.tools import run_options as options
from comfyui_flashface.flashface_core.tools import workflow_api
from comfyui_flashface.flashface_core.tools.run_graph import RunError
from comfyui_flashface.flashface_core.tools.run_workflow import workflow_that_ran
from comfyui_flashface.flashface_core.tools.runner import _new_ids

pytestmark = pytest.mark.host
ENCODER = "FlashFaceEncodeReferenceFaces"


@pytest.fixture(scope="module")
def definitions():
    return shipped_definitions()


def shipped(name: str) -> dict:
    return json.loads((ROOT / "workflows" / f"flashface_{name}.json").read_text())


def chained_encoders() -> dict:
    """Two Load Image nodes into two chained encoders, as graphs made before one encoder took several photos."""
    def encoder(images, references=None):
        inputs = {"vae": ["9", 2], "images": [images, 0], **({"references": [references, 0]} if references else {})}
        return {"class_type": ENCODER, "inputs": inputs}

    return {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}, "4": encoder("3", references="2"),
            "2": encoder("1"), "3": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}}


def reference_images(prompt: dict, definitions) -> list[tuple[str, str]]:
    return [(f"{encoder}.{name}", prompt[source]["inputs"]["image"]) for encoder, name, source in
            options.reference_slots(prompt, definitions) if source]


def place(prompt, definitions, photos, workflow=None):
    return options.place_references(prompt, definitions, photos, _new_ids(prompt, workflow))


@pytest.mark.parametrize("photos, expected", [
    (["p1"], [("2.images", "p1"), ("4.images", "p1")]),  # a required input repeats the photos in order
    (["p1", "p2"], [("2.images", "p1"), ("4.images", "p2")]),
    (["p1", "p2", "p3"], [("2.images", "p1"), ("2.image_2", "p3"), ("4.images", "p2")]),  # a free optional input
])
def test_references_fill_the_graphs_photo_inputs_in_reading_order(definitions, photos, expected):
    prompt = chained_encoders()
    place(prompt, definitions, photos)
    assert reference_images(prompt, definitions) == expected


def test_unused_optional_photo_inputs_are_disconnected(definitions):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
              "3": {"class_type": ENCODER, "inputs": {"images": ["1", 0], "image_2": ["2", 0]}}}
    place(prompt, definitions, ["p1"])
    assert prompt["3"]["inputs"] == {"images": ["1", 0]} and "2" not in prompt and prompt["1"]["inputs"]["image"] == "p1"


def test_more_photos_than_inputs_chain_more_encoders(definitions):
    """17 photos on two chained encoders (16 inputs): a third encoder extends the chain, with the last one's
    settings and VAE, and what read the last one's references reads the new one's."""
    prompt = chained_encoders()
    prompt["4"]["inputs"].update(detector="retinaface", threshold=0.5)
    prompt["5"] = {"class_type": "FlashFaceSampler", "inputs": {"references": ["4", 0]}}
    photos = [f"p{i}" for i in range(1, 18)]
    place(prompt, definitions, photos)
    new = prompt["5"]["inputs"]["references"][0]
    assert prompt[new]["class_type"] == ENCODER and prompt[new]["inputs"]["references"] == ["4", 0]
    assert (prompt[new]["inputs"]["vae"], prompt[new]["inputs"]["threshold"]) == (["9", 2], 0.5)
    assert sorted(image for _, image in reference_images(prompt, definitions)) == sorted(photos)
    assert options.encoders_in_order(prompt) == ["2", "4", new]
    assert [image for slot, image in reference_images(prompt, definitions) if slot.startswith(f"{new}.")] == ["p17"]


def test_a_load_image_feeding_two_reference_inputs_gets_one_photo(definitions):
    """Each photo lands: the second input that shared the node gets a Load Image of its own."""
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "3": {"class_type": ENCODER, "inputs": {"images": ["1", 0], "image_2": ["1", 0]}}}
    lines = place(prompt, definitions, ["p1", "p2"])
    assert reference_images(prompt, definitions) == [("3.images", "p1"), ("3.image_2", "p2")]
    assert prompt["3"]["inputs"]["image_2"] != ["1", 0]
    assert lines == ["reference: p1 -> node 1 -> 3.images", "reference: p2 -> new node 4 -> 3.image_2"]


def test_prompts_reach_the_text_encoders_through_conditioning_nodes():
    prompt = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["9", 1]}},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "old negative", "clip": ["9", 1]}},
              "3": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["1", 0], "negative": ["2", 0]}},
              "4": {"class_type": "KSampler", "inputs": {"positive": ["3", 0], "negative": ["3", 1], "seed": 1, "steps": 9}}}
    options.set_text(prompt, "positive", "new")
    options.set_text(prompt, "negative", "new negative")
    options.set_every(prompt, options.SEED_INPUTS, 5, "--seed")
    assert (prompt["1"]["inputs"]["text"], prompt["2"]["inputs"]["text"], prompt["4"]["inputs"]["seed"]) == (
        "new", "new negative", 5)
    with pytest.raises(RunError, match="no noise_seed input"):
        options.set_every(prompt, ("noise_seed",), 5, "--seed")


def test_the_photo_to_change_is_the_one_load_image_besides_the_references(definitions):
    prompt = json.loads((ROOT / "workflows" / "api" / "flashface_face_inpaint.json").read_text())
    (photo,) = options.other_load_images(prompt, definitions)
    assert prompt[photo]["_meta"]["title"].startswith("Photo to change")
    assert options.mask_is_used(prompt, photo)
    assert len(options.reference_slots(prompt, definitions)) == 2 + 6  # two photos, six free optional inputs


# The UI graph saved in the PNG


@pytest.mark.parametrize("name, count", [("from_photos", 1), ("from_photos", 4), ("from_photos", 12),
                                         ("many_references", 20), ("face_inpaint", 3), ("stock_ksampler", 2)])
def test_the_saved_workflow_gives_the_prompt_that_ran(definitions, name, count):
    workflow = shipped(name)
    prompt = workflow_api.to_api(workflow, definitions)
    place(prompt, definitions, [f"flashface-run/x/ref{i:02d}.png" for i in range(1, count + 1)], workflow)
    options.set_every(prompt, options.SEED_INPUTS, 5, "--seed")
    options.set_text(prompt, "positive", "a man on a boat")
    saved = workflow_that_ran(workflow, prompt, definitions)
    assert workflow_api.to_api(saved, definitions) == prompt
    assert workflow == shipped(name)  # the graph file's own copy is left as it was

    loaders = [n for n in saved["nodes"] if n["type"] == "LoadImage" and n["widgets_values"][0].startswith("flashface-run/")]
    assert len(loaders) == count
    nodes = {node["id"]: node for node in saved["nodes"]}
    links = {link[0]: link for link in saved["links"]}
    assert saved["last_node_id"] >= max(nodes) and saved["last_link_id"] >= max(links)
    for link_id, origin, origin_slot, target, target_slot, kind in saved["links"]:  # both ends agree
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"] and nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
    for node in saved["nodes"]:
        for slot in node.get("inputs") or []:
            assert slot["link"] is None or links[slot["link"]][3] == node["id"]
    added = set(nodes) - {node["id"] for node in workflow["nodes"]}
    for first, second in itertools.combinations(saved["nodes"], 2):  # added nodes cover no other node
        (x1, y1), (w1, h1), (x2, y2), (w2, h2) = first["pos"], first["size"], second["pos"], second["size"]
        overlap = x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1
        assert not (overlap and {first["id"], second["id"]} & added), (first["id"], second["id"])


def test_the_saved_workflow_keeps_links_written_as_objects(definitions):
    workflow = shipped("from_photos")
    workflow["links"] = [dict(zip(workflow_api.LINK_FIELDS, link)) for link in workflow["links"]]
    prompt = workflow_api.to_api(workflow, definitions)
    place(prompt, definitions, ["a.png", "b.png", "c.png", "d.png"], workflow)
    saved = workflow_that_ran(workflow, prompt, definitions)
    assert all(isinstance(link, dict) for link in saved["links"])
    assert workflow_api.to_api(saved, definitions) == prompt


def test_the_saved_workflow_takes_a_seed_set_in_place_of_a_primitive(definitions):
    workflow = shipped("from_photos")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "FlashFaceSampler")
    seed = next(slot for slot, socket in enumerate(sampler["inputs"]) if socket["name"] == "seed")
    primitive_id, link_id = 100, 100
    workflow["nodes"].append({"id": primitive_id, "type": "PrimitiveNode", "mode": 0, "pos": [0, -400], "size": [200, 80],
                              "outputs": [{"name": "INT", "type": "INT", "links": [link_id]}], "widgets_values": [3, "fixed"]})
    workflow["links"].append([link_id, primitive_id, 0, sampler["id"], seed, "INT"])
    sampler["inputs"][seed]["link"] = link_id
    prompt = workflow_api.to_api(workflow, definitions)
    assert prompt[str(sampler["id"])]["inputs"]["seed"] == 3
    options.set_every(prompt, options.SEED_INPUTS, 5, "--seed")
    assert workflow_api.to_api(workflow_that_ran(workflow, prompt, definitions), definitions) == prompt


# Several people, and saving an identity


def shipped_prompt(name: str, definitions) -> dict:
    return workflow_api.to_api(shipped(name), definitions)


def person_images(prompt: dict, definitions, number: int) -> list[str]:
    encoders = options.person_encoders(prompt, number, "--ref")
    return [prompt[source]["inputs"]["image"] for _, _, source in options.reference_slots(prompt, definitions, encoders) if source]


def test_each_persons_photos_go_to_the_encoder_of_their_person_node(definitions):
    """--ref fills person 1 (the first Person node of the chain) only; --person-ref 2 fills person 2's encoder."""
    prompt = shipped_prompt("two_people", definitions)
    people = options.people_in_order(prompt)
    assert [prompt[i]["_meta"]["title"] for i in people] == ["Person 1 (left)", "Person 2 (right)"]
    assert person_images(prompt, definitions, 1) == ["face_1.png", "face_2.png"]
    assert person_images(prompt, definitions, 2) == ["face_3.png", "face_4.png"]
    new_ids = _new_ids(prompt, None)
    options.place_references(prompt, definitions, ["a1", "a2", "a3"], new_ids, options.person_encoders(prompt, 1, "--ref"))
    assert person_images(prompt, definitions, 1) == ["a1", "a2", "a3"]
    assert person_images(prompt, definitions, 2) == ["face_3.png", "face_4.png"]
    options.place_references(prompt, definitions, ["b1"], new_ids, options.person_encoders(prompt, 2, "--person-ref 2"),
                             "--person-ref 2")
    assert person_images(prompt, definitions, 1) == ["a1", "a2", "a3"]
    assert person_images(prompt, definitions, 2) == ["b1"]  # the unused optional input is disconnected, as with --ref


def test_many_photos_of_the_second_person_chain_an_encoder_for_that_person(definitions):
    prompt = shipped_prompt("two_people", definitions)
    first, second = (options.person_encoders(prompt, n, "--ref") for n in (1, 2))
    photos = [f"b{i}" for i in range(1, 11)]
    options.place_references(prompt, definitions, photos, _new_ids(prompt, None), second, "--person-ref 2")
    assert options.person_encoders(prompt, 1, "--ref") == first
    chain = options.person_encoders(prompt, 2, "--ref")
    assert chain[0] == second[0] and len(chain) == 2  # the new encoder extends person 2's, and person 2 reads it
    assert person_images(prompt, definitions, 2) == photos


def test_people_are_counted_along_the_chain_not_by_node_id(definitions):
    prompt = shipped_prompt("two_people", definitions)
    one, two = options.people_in_order(prompt)
    renamed = {two: "1", one: "2"}  # swap the ids: person 2 now has the smaller id
    text = json.dumps(prompt)
    for old, new in renamed.items():
        text = text.replace(f'"{old}"', f'"@{new}"')
    prompt = {key.lstrip("@"): value for key, value in json.loads(text.replace('"@', '"')).items()}
    assert options.people_in_order(prompt) == ["2", "1"]


def test_a_person_the_graph_does_not_have_is_refused(definitions):
    prompt = shipped_prompt("two_people", definitions)
    with pytest.raises(RunError, match="--person-ref 3: this graph has 2 FlashFace Person node"):
        options.person_encoders(prompt, 3, "--person-ref 3")
    prompt = shipped_prompt("saved_identity", definitions)
    assert options.people_in_order(prompt) == []


def test_saving_an_identity_runs_only_what_the_save_node_needs(definitions):
    from comfyui_flashface.flashface_core.tools.runner import save_identity_prompt

    prompt = shipped_prompt("save_identity", definitions)
    kept, saver = save_identity_prompt(prompt, "alice", True)
    assert sorted(node["class_type"] for node in kept.values()) == sorted(
        ["CheckpointLoaderSimple", ENCODER, "FlashFaceSaveIdentity", "LoadImage", "LoadImage", "LoadImage"])
    assert (kept[saver]["inputs"]["name"], kept[saver]["inputs"]["overwrite"]) == ("alice", True)
    with pytest.raises(RunError, match="one FlashFace Save Identity node; this one has 0"):
        save_identity_prompt(shipped_prompt("from_photos", definitions), "alice", False)


@pytest.mark.parametrize("argv, message", [
    (["two_people", "--person-ref", "1", "a.png"], "--person-ref N PHOTO: N is the person's number, 2 or more"),
    (["two_people", "--person-ref", "x", "a.png"], "not 'x'"),
    (["--save-identity", "alice"], "--save-identity needs the person's photos"),
    (["from_photos", "--overwrite"], "--overwrite goes with --save-identity"),
    (["--ref", "a.png"], "the WORKFLOW to run is missing"),
])
def test_bad_people_and_identity_options_are_refused_before_anything_runs(argv, message, capsys):
    from comfyui_flashface.flashface_core.tools import runner

    with pytest.raises(SystemExit) as exit_:
        runner.main(argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith("error: ") and message in error, error
