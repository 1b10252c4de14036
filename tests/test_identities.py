"""Identities saved and loaded by name: what references record, the file and its checks, the two nodes.

The references come from random "photos" through Encode Reference Faces' core with the
pre-cropped detector (no detector model needed) and small random SD1.5-layout VAEs; the
sampling check runs the tiny golden FlashFace model.
"""

import json
import logging
import os

import pytest
import torch
from model_helpers import tiny_vae

from comfyui_flashface.flashface_core.faces.choices import Detector
from comfyui_flashface.flashface_core.identities import files, names
from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

pytestmark = pytest.mark.host
PRE_CROPPED = Detector.PRE_CROPPED
IDENTITIES = "flashface_identities"


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(0)


@pytest.fixture(scope="module")
def other_vae():
    return tiny_vae(1)


def photos(seed, count=2):
    generator = torch.Generator().manual_seed(seed)
    return [("images", torch.rand(count, 180, 150, 3, generator=generator))]


def encode(vae, seed=0, **options):
    from comfyui_flashface.flashface_core.faces.encoding import encode_reference_faces

    return encode_reference_faces(vae, photos(seed), PRE_CROPPED, **options)


@pytest.fixture(scope="module")
def references(vae):
    return encode(vae)[0]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty identities folder, registered with ComfyUI as the pack registers it."""
    import folder_paths

    from comfyui_flashface.flashface_core.model_files import folders

    folders.register_model_folders()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, IDENTITIES, ([str(tmp_path)], {".safetensors"}))
    return tmp_path


def save(references, name="alice", overwrite=False):
    from comfyui_flashface.flashface_core.identities.library import save_identity

    return save_identity(references, name, overwrite)


def load(path, vae):
    from comfyui_flashface.flashface_core.identities.library import load_identity

    return load_identity(str(path), vae)


# What references record


def test_old_constructors_work_and_record_nothing():
    latents = torch.randn(2, 4, 14, 14)
    for references in (FlashFaceReferences(latents), FlashFaceReferences(latents, 4)):
        assert references.face_crops is None and references.detector is None and references.vae_fingerprint is None
        assert references.detectors() == []
    assert FlashFaceReferences(latents, 4).model_latents().shape[0] == 4
    with pytest.raises(ValueError, match="one crop per latent"):
        FlashFaceReferences(latents, face_crops=torch.rand(3, 224, 224, 3))


def test_encoding_records_the_crops_detector_and_vae(vae):
    from comfyui_flashface.flashface_core.faces.vae_fingerprint import vae_fingerprint

    references, crops = encode(vae)
    assert torch.equal(references.face_crops, crops) and references.face_crops.device.type == "cpu"
    assert references.detector == PRE_CROPPED.value
    assert references.vae_fingerprint == vae_fingerprint(vae) is not None
    torch.testing.assert_close(references.latents, vae.encode(crops).float())


def test_a_chain_concatenates_crops_and_names_every_detector(vae, other_vae):
    from comfyui_flashface.flashface_core.faces.encoding import chained_provenance

    first, first_crops = encode(vae, 0)
    both, second_crops = encode(vae, 1, previous=first)
    assert torch.equal(both.face_crops, torch.cat([first_crops, second_crops]))
    assert both.detector == PRE_CROPPED.value and both.vae_fingerprint == first.vae_fingerprint

    retina = FlashFaceReferences(first.latents, face_crops=first_crops, detector=Detector.RETINAFACE.value,
                                 vae_fingerprint=first.vae_fingerprint)
    mixed = chained_provenance(retina, second_crops, PRE_CROPPED.value, first.vae_fingerprint)
    assert mixed["detector"] == f"{Detector.RETINAFACE.value} + {PRE_CROPPED.value}"
    assert FlashFaceReferences(both.latents, face_crops=mixed["face_crops"], detector=mixed["detector"]).detectors() == [
        Detector.RETINAFACE.value, PRE_CROPPED.value]
    # Another VAE in the chain: no one VAE made every row.
    assert encode(other_vae, 1, previous=first)[0].vae_fingerprint is None
    # Earlier references without provenance: nothing is known about their rows.
    plain = encode(vae, 1, previous=FlashFaceReferences(first.latents))[0]
    assert plain.face_crops is None and plain.detector is None


def test_the_vae_fingerprint_tells_vaes_apart_whatever_their_dtype(vae, other_vae):
    from comfyui_flashface.flashface_core.faces.vae_fingerprint import same_vae, vae_fingerprint

    mine = vae_fingerprint(vae)
    assert mine == vae_fingerprint(tiny_vae(0))  # deterministic
    assert same_vae(mine, vae_fingerprint(tiny_vae(0, torch.bfloat16)))
    assert same_vae(mine, vae_fingerprint(tiny_vae(0, torch.float16)))
    assert not same_vae(mine, vae_fingerprint(other_vae))
    assert not same_vae(mine, None) and not same_vae(None, None) and not same_vae(mine, "garbage")
    assert vae_fingerprint(object()) is None


# Saving and loading


def test_round_trip_gives_the_same_latents_and_crops(folder, vae, references, caplog):
    path = save(references)
    assert path == str(folder / "alice.safetensors")
    with caplog.at_level(logging.INFO):
        loaded, crops = load(path, vae)
    assert "another VAE" not in caplog.text
    assert torch.equal(loaded.latents, references.latents)
    assert torch.equal(loaded.face_crops, references.face_crops) and torch.equal(crops, references.face_crops)
    assert (loaded.fill_to, loaded.detector, loaded.vae_fingerprint) == (
        references.fill_to, references.detector, references.vae_fingerprint)
    assert sorted(os.listdir(folder)) == ["alice.safetensors"]  # no temporary file left


def test_the_file_is_plain_safetensors_with_the_packs_metadata(folder, references):
    from safetensors import safe_open

    path = save(references)
    with safe_open(path, "pt", device="cpu") as file:
        metadata, keys = file.metadata(), set(file.keys())
    assert keys == {"face_crops", "latents"}
    assert metadata == {"format": files.FORMAT, "format_version": files.VERSION, "count": "2", "fill_to": "4",
                        "detector": PRE_CROPPED.value, "vae_fingerprint": references.vae_fingerprint}


def test_another_vae_encodes_the_saved_crops_again(folder, vae, other_vae, references, caplog):
    path = save(references)
    with caplog.at_level(logging.INFO):
        loaded, _ = load(path, other_vae)
    assert caplog.text.count("encoding its 2 crop(s) with this one") == 1
    direct = other_vae.encode(references.face_crops).float()
    assert torch.equal(loaded.latents, direct)
    assert not torch.allclose(loaded.latents, references.latents)
    # Loaded with its own VAE in another dtype: the saved latents, not re-encoded.
    assert torch.equal(load(path, tiny_vae(0, torch.bfloat16))[0].latents, references.latents)


def test_a_saved_identity_samples_the_same_latent_as_its_photos(folder, flashface, golden, vae, references):
    """The sampler's core path (apply_flashface + sample) from the photos' references and from the loaded identity."""
    from model_helpers import GUIDANCE, LATENT

    from comfyui_flashface.flashface_core.contract import GuidanceSettings
    from comfyui_flashface.flashface_core.guidance.sampling import sample
    from comfyui_flashface.flashface_core.injection import wrappers
    from comfyui_flashface.flashface_core.injection.apply import apply_flashface

    positive, negative = [[golden.tensors["cond"], {}]], [[golden.tensors["uncond"], {}]]

    def run(refs):
        cache = wrappers.reference_cache(flashface)
        if cache is not None:
            cache.clear()  # each run makes its own reference pass from its own latents
        patched = apply_flashface(flashface, refs, negative, 1.2, (0.3, 0.2, 0.6, 0.5))
        return sample(patched, positive, negative, {"samples": torch.zeros(LATENT)}, 4, 3, "euler", "trailing", 1.0,
                      GuidanceSettings(**GUIDANCE))["samples"]

    from_photos = run(references)
    loaded, _ = load(save(references), vae)
    assert torch.equal(run(loaded), from_photos)
    other = encode(vae, 7)[0]
    assert not torch.allclose(run(other), from_photos)  # the check can fail: other faces give another latent


# Never losing a file


def test_an_existing_name_is_refused_and_the_old_file_kept(folder, vae, references):
    path = save(references)
    before = open(path, "rb").read()
    other = encode(vae, 3)[0]
    with pytest.raises(ValueError, match="already exists.*turn on overwrite"):
        save(other)
    with pytest.raises(ValueError, match="already exists"):
        save(other, "alice.safetensors")
    assert open(path, "rb").read() == before
    assert save(references) == path and open(path, "rb").read() == before  # the same identity again: nothing written
    save(other, overwrite=True)
    assert torch.equal(load(path, vae)[0].latents, other.latents)
    assert sorted(os.listdir(folder)) == ["alice.safetensors"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(folder, vae, references, monkeypatch):
    import safetensors.torch

    path = save(references)
    before = open(path, "rb").read()

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(ValueError, match="No space left on device"):
        save(encode(vae, 3)[0], overwrite=True)
    assert open(path, "rb").read() == before and sorted(os.listdir(folder)) == ["alice.safetensors"]


def test_references_without_crops_cannot_be_saved(folder, references):
    with pytest.raises(ValueError, match="no face crops.*Encode Reference Faces"):
        save(FlashFaceReferences(references.latents))
    assert not os.listdir(folder)


@pytest.mark.parametrize("name", ["alice", "Bob Smith", "anna-2 (2024)", "zoë_1", "carl.safetensors", "v1.2"])
def test_plain_names_are_accepted(name):
    assert names.identity_file_name(name) == name.removesuffix(".safetensors") + ".safetensors"


@pytest.mark.parametrize("name, message", [
    ("", "empty"), ("   ", "empty"), (None, "empty"), (".safetensors", "nothing before"),
    ("../alice", "holds a path"), ("people/alice", "holds a path"), ("a\\b", "holds a path"), ("..", "holds a path"),
    ("a..b", "holds a path"), ("al:ice", "':'"), ("al*ce", "'\\*'"), ("tab\there", "'\\\\t'"), (".hidden", "start with"),
    ("dot.", "start with"), ("con", "Windows reserves"), ("x" * 101, "at most 100"),
])
def test_bad_names_are_refused_with_what_is_wrong(folder, references, name, message):
    with pytest.raises(ValueError, match=message):
        names.identity_file_name(name)
    with pytest.raises(ValueError):
        save(references, name)
    assert not os.listdir(folder)


# Files that are not good identities


def _rewrite(path, tensors=None, metadata=None, drop=()):
    from safetensors.torch import load_file, save_file

    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        saved_metadata = file.metadata()
    saved = load_file(str(path))
    saved.update(tensors or {})
    for name in drop:
        saved.pop(name)
    save_file(saved, str(path), metadata={**saved_metadata, **(metadata or {})})


def _refused(path, vae, message):
    from comfyui_flashface.nodes.identity import FlashFaceLoadIdentity

    with pytest.raises(ValueError, match=message) as error:
        load(path, vae)
    assert str(path) in str(error.value)
    assert "FlashFace Save Identity" in str(error.value) or "update ComfyUI-FlashFace" in str(error.value)
    said = FlashFaceLoadIdentity.validate_inputs(os.path.basename(path))
    assert said is not True and str(path) in said


@pytest.mark.parametrize("keep", [0, 5, 40, "header", "half"])
def test_a_truncated_file_is_refused(folder, vae, references, keep):
    path = save(references)
    data = open(path, "rb").read()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = {"header": header_end - 10, "half": len(data) // 2}.get(keep, keep)
    open(path, "wb").write(data[:cut])
    _refused(path, vae, "cut short|empty")


def test_files_of_another_format_are_refused(folder, vae, references):
    from safetensors.torch import save_file

    random_bytes = folder / "noise.safetensors"
    random_bytes.write_bytes(os.urandom(5000))
    _refused(random_bytes, vae, "not a safetensors file|cut short")

    plain = folder / "model.safetensors"
    save_file({"weight": torch.randn(3, 3)}, str(plain))
    _refused(plain, vae, "not a FlashFace identity")

    checkpoint = folder / "renamed.safetensors"
    torch.save({"state_dict": {"weight": torch.randn(3, 3)}}, str(checkpoint))
    _refused(checkpoint, vae, r"not a safetensors file \(it is a zip archive")


@pytest.mark.parametrize("change, message", [
    (dict(metadata={"format_version": "2"}), "format version '2'"),
    (dict(metadata={"format": "something-else"}), "not a FlashFace identity"),
    (dict(drop=("latents",)), "lacks the tensor.*latents"),
    (dict(drop=("face_crops",)), "lacks the tensor.*face_crops"),
    (dict(tensors={"latents": torch.randn(3, 4, 28, 28)}), "shapes that do not agree"),
    (dict(tensors={"face_crops": torch.rand(2, 112, 112, 3)}), "shapes that do not agree"),
    (dict(metadata={"count": "5"}), "shapes that do not agree"),
    (dict(metadata={"count": "two"}), "no readable face count"),
    (dict(tensors={"latents": torch.zeros(2, 4, 28, 28, dtype=torch.int32)}), "not floats"),
    (dict(tensors={"face_crops": torch.full((2, 224, 224, 3), 7.0)}), "damaged"),
])
def test_identities_that_do_not_hold_up_are_refused(folder, vae, references, change, message):
    path = save(references)
    _rewrite(path, **change)
    with pytest.raises(ValueError, match=message) as error:
        load(path, vae)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("detector", ["dlib-hog", "", f"{Detector.RETINAFACE.value} + mystery"])
def test_an_unknown_detector_is_refused(folder, vae, references, detector):
    path = save(references)
    _rewrite(path, metadata={"detector": detector})
    _refused(path, vae, "face detector .* which this pack does not know")


# The nodes


@pytest.fixture(scope="module")
def node_classes():
    import asyncio

    from comfyui_flashface.flashface_core.model_files.folders import register_model_folders
    from comfyui_flashface.nodes import comfy_entrypoint

    register_model_folders()
    extension = asyncio.run(comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def test_the_nodes_register_with_tooltips_and_the_packs_socket(node_classes):
    save_node, load_node = node_classes["FlashFaceSaveIdentity"], node_classes["FlashFaceLoadIdentity"]
    assert save_node.GET_SCHEMA().display_name == "FlashFace Save Identity" and save_node.OUTPUT_NODE
    assert load_node.GET_SCHEMA().display_name == "FlashFace Load Identity"
    assert list(save_node.INPUT_TYPES()["required"]) == ["references", "name", "overwrite"]
    assert list(load_node.INPUT_TYPES()["required"]) == ["identity", "vae"]
    assert save_node.INPUT_TYPES()["required"]["overwrite"][1]["default"] is False
    assert save_node.INPUT_TYPES()["required"]["references"][0] == "FLASHFACE_REFERENCES"
    assert list(save_node.RETURN_TYPES) == ["FLASHFACE_REFERENCES"]
    assert list(load_node.RETURN_TYPES) == ["FLASHFACE_REFERENCES", "IMAGE"]
    assert list(load_node.RETURN_NAMES) == ["references", "face_crops"]
    for cls in (save_node, load_node):
        assert cls.GET_SCHEMA().category == "FlashFace" and cls.GET_SCHEMA().description and all(cls.OUTPUT_TOOLTIPS)
        for section in ("required", "optional"):
            for name, (_, options) in cls.INPUT_TYPES().get(section, {}).items():
                assert options.get("tooltip"), (cls.__name__, name)


def test_save_then_load_through_the_nodes(folder, vae, references):
    from comfyui_flashface.nodes.identity import FlashFaceLoadIdentity, FlashFaceSaveIdentity

    assert FlashFaceSaveIdentity.validate_inputs("bob") is True
    assert "holds a path" in FlashFaceSaveIdentity.validate_inputs("../bob")
    (passed,) = FlashFaceSaveIdentity.execute(references, "bob", False).result
    assert passed is references
    import folder_paths

    assert "bob.safetensors" in folder_paths.get_filename_list(IDENTITIES)
    assert FlashFaceLoadIdentity.validate_inputs("bob.safetensors") is True
    loaded, crops = FlashFaceLoadIdentity.execute("bob.safetensors", vae).result
    assert torch.equal(loaded.latents, references.latents) and torch.equal(crops, references.face_crops)
    missing = FlashFaceLoadIdentity.validate_inputs("carol.safetensors")
    assert "carol.safetensors is not in" in missing and str(folder) in missing and "Save Identity" in missing
    with pytest.raises(FileNotFoundError, match="carol"):
        FlashFaceLoadIdentity.execute("carol.safetensors", vae)


class _TestVAE:
    CATEGORY, RETURN_TYPES, FUNCTION = "testing", ("VAE",), "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return (tiny_vae(0),)


def _validate(prompt, monkeypatch):
    import asyncio

    import execution
    import nodes

    from comfyui_flashface.nodes.identity import FlashFaceLoadIdentity, FlashFaceSaveIdentity

    for cls in (FlashFaceLoadIdentity, FlashFaceSaveIdentity, _TestVAE):
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, cls.__name__, cls)
    return asyncio.run(execution.validate_prompt("test", prompt, None))


def test_comfyui_refuses_a_queued_graph_with_a_bad_file_or_name(folder, references, monkeypatch):
    """Through ComfyUI's own /prompt validation: a linked VAE and references, the nodes' messages, before running."""
    save(references, "alice")
    (folder / "broken.safetensors").write_bytes(b"\x00" * 3)

    def graph(identity, name):
        return {"1": {"class_type": "_TestVAE", "inputs": {}},
                "2": {"class_type": "FlashFaceLoadIdentity", "inputs": {"identity": identity, "vae": ["1", 0]}},
                "3": {"class_type": "FlashFaceSaveIdentity", "inputs": {"references": ["2", 0], "name": name,
                                                                         "overwrite": False}}}

    assert _validate(graph("alice.safetensors", "alice copy"), monkeypatch)[0] is True
    for identity, name, node, said in [("broken.safetensors", "bob", "2", "cut short"),
                                       ("carol.safetensors", "bob", "2", "is not in"),
                                       ("alice.safetensors", "../bob", "3", "holds a path")]:
        valid, _, _, node_errors = _validate(graph(identity, name), monkeypatch)
        assert valid is False and node in node_errors, (identity, name)
        assert said in json.dumps(node_errors[node]), node_errors

