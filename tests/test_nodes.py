"""The nodes on ComfyUI's V3 schema: registered as one extension, with exactly the ids, inputs,
widget order, defaults and menus that graphs saved from the pack before the move hold
(``saved_graphs/nodes.json``, written from the V1 nodes of release 0.2.0)."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

SAVED = json.loads((Path(__file__).parent / "saved_graphs" / "nodes.json").read_text(encoding="utf-8"))
# Nodes added since release 0.2.0: no saved graph of that release holds them; their own tests check their schemas.
NEW_NODES = {"FlashFaceSaveIdentity", "FlashFaceLoadIdentity", "FlashFacePerson",  # test_identities.py, test_people.py
             "FlashFaceCropFaces", "FlashFaceStitchFaces", "FlashFaceFaceDetail"}  # test_detail.py


@pytest.fixture(scope="module")
def node_classes():
    from comfyui_flashface.flashface_core.model_files.folders import register_model_folders
    from comfyui_flashface.nodes import comfy_entrypoint

    register_model_folders()  # as the pack's __init__ does when ComfyUI loads it
    extension = asyncio.run(comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def test_the_extension_registers_every_saved_node_id_and_no_other(node_classes):
    from comfy_api.v0_0_2 import io

    assert set(node_classes) == set(SAVED) | NEW_NODES
    for node_id, cls in node_classes.items():
        assert issubclass(cls, io.ComfyNode)
        assert cls.__name__ == node_id
        assert "NODE_CLASS_MAPPINGS" not in vars(sys.modules[cls.__module__])


def test_inputs_widgets_defaults_and_menus_are_those_saved_graphs_hold(node_classes):
    for node_id, saved in SAVED.items():
        spec = node_classes[node_id].INPUT_TYPES()
        assert set(spec) - {"hidden"} <= {"required", "optional"}
        for section in ("required", "optional"):
            now = spec.get(section, {})
            assert list(now) == [old["name"] for old in saved[section]], (node_id, section)
            for old in saved[section]:
                kind, options = now[old["name"]]
                # An input may come to accept more socket types (references or people); it still takes the saved one first.
                assert kind.split(",")[0] == old["type"], (node_id, old["name"])
                if "default" in old:
                    assert options.get("default") == old["default"], (node_id, old["name"])
                if "options" in old:
                    assert options["options"] == old["options"], (node_id, old["name"])


def test_outputs_display_names_and_tooltips(node_classes):
    for node_id, saved in SAVED.items():
        cls = node_classes[node_id]
        schema = cls.GET_SCHEMA()
        assert list(cls.RETURN_TYPES) == saved["output"] and list(cls.RETURN_NAMES) == saved["output_name"], node_id
        assert schema.display_name == saved["display_name"]
        assert schema.category == "FlashFace" and schema.description
        assert all(cls.OUTPUT_TOOLTIPS), node_id
        for section in cls.INPUT_TYPES().values():
            for name, (_, options) in section.items():
                assert options.get("tooltip"), (node_id, name)


def test_the_references_socket_is_the_packs_own_type(node_classes):
    assert node_classes["FlashFaceEncodeReferenceFaces"].RETURN_TYPES[0] == "FLASHFACE_REFERENCES"
    for node_id in ("ApplyFlashFace", "FlashFaceSampler"):
        assert node_classes[node_id].INPUT_TYPES()["required"]["references"][0] == "FLASHFACE_REFERENCES,FLASHFACE_PEOPLE"
    assert node_classes["FlashFacePerson"].RETURN_TYPES[0] == "FLASHFACE_PEOPLE"


def test_nodes_use_the_versioned_api():
    for path in sorted((Path(__file__).parents[1] / "nodes").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "comfy_api.latest" not in text, path.name
        if "io.ComfyNode" in text or "io.Custom" in text:
            assert "from comfy_api.v0_0_2 import" in text, path.name


def test_menus_store_the_labels_saved_graphs_hold(node_classes):
    """Every fixed menu value is the plain label, so a graph stores and reads exactly that string."""
    for node_id, saved in SAVED.items():
        spec = node_classes[node_id].INPUT_TYPES()
        for section in ("required", "optional"):
            for old in saved[section]:
                if "options" in old:
                    options = spec[section][old["name"]][1]["options"]
                    assert all(type(value) is str for value in options), (node_id, old["name"])
