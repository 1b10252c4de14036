"""The pack in a real ComfyUI server: node registration, whole prompts over the HTTP API, errors.

The server runs the tiny golden FlashFace model on 64x64 images with a small random VAE and
random prompt embeddings (test-only nodes from ``comfy_server``), the default RetinaFace
detector with the golden set's random weights on real photos (random weights find "faces"
anywhere: the path is what runs), and ComfyUI's own LoadImage, EmptyLatentImage, KSampler,
VAEDecode, SaveImage.
"""

import numpy as np
import pytest
from comfy_server import CHECKPOINT, PACK_DIR_NAME, comfy_server_fixture  # noqa: F401 (fixture)
from comfyui_flashface.flashface_core.faces.choices import Detector, FaceChoice, NoFace, Straighten
from PIL import Image

pytestmark = pytest.mark.host

FLASHFACE_NODES = ("LoadFlashFace", "ApplyFlashFace", "FlashFaceSampler", "FlashFaceGuider", "FlashFaceScheduler",
                   "FlashFaceEncodeReferenceFaces")
GUIDANCE = {"text_guidance": 7.5, "reference_guidance": 3.2, "reference_start": 0.25, "early_strength": 0.85,
            "cfg_rescale": 0.5}
NO_BOX = {"face_x1": 0.0, "face_y1": 0.0, "face_x2": 0.0, "face_y2": 0.0}


def encode(images, references=None, fill_to_four=True, threshold=0.6, **more_images):
    inputs = {"vae": ["vae", 0], "images": images, "detector": Detector.RETINAFACE,
              "face_choice": FaceChoice.LARGEST, "face_index": 0, "no_face": NoFace.ERROR,
              "threshold": threshold, "fill_to_four": fill_to_four, "straighten": Straighten.AUTO,
              **more_images}
    if references is not None:
        inputs["references"] = references
    return {"class_type": "FlashFaceEncodeReferenceFaces", "inputs": inputs}


def faces_prompt(seed: int, prefix: str, sampler: str = "flashface", steps: int = 3) -> dict:
    """Two photos -> chained reference encoders -> FlashFace (one-box sampler or stock KSampler) -> PNG.

    Two references (no fill to four) keep the CPU run short; the fill has its own tests.
    """
    prompt = {
        "vae": {"class_type": "TestTinyVAE", "inputs": {}},
        "positive": {"class_type": "TestTinyConditioning", "inputs": {"seed": 1}},
        "negative": {"class_type": "TestTinyConditioning", "inputs": {"seed": 2}},
        "man": {"class_type": "LoadImage", "inputs": {"image": "man.png"}},
        "woman": {"class_type": "LoadImage", "inputs": {"image": "woman.png"}},
        "refs_man": encode(["man", 0], fill_to_four=False),
        "refs": encode(["woman", 0], references=["refs_man", 0], fill_to_four=False),
        "model": {"class_type": "LoadFlashFace", "inputs": {"ckpt_name": CHECKPOINT, "weight_dtype": "fp32"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    common = {"positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0], "seed": seed,
              "steps": steps, "denoise": 1.0}
    if sampler == "flashface":
        prompt["sample"] = {"class_type": "FlashFaceSampler", "inputs": {
            **common, "model": ["model", 0], "references": ["refs", 0], "sampler_name": "euler",
            "scheduler": "trailing", "strength": 1.2, **GUIDANCE, **NO_BOX}}
    else:
        prompt["apply"] = {"class_type": "ApplyFlashFace", "inputs": {
            "model": ["model", 0], "references": ["refs", 0], "negative": ["negative", 0], "strength": 1.2,
            "face_x1": 0.3, "face_y1": 0.2, "face_x2": 0.6, "face_y2": 0.5}}
        prompt["sample"] = {"class_type": "KSampler", "inputs": {
            **common, "model": ["apply", 0], "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal"}}
    return prompt


def assert_success(server, entry, prefix):
    status = entry["status"]
    assert status["status_str"] == "success", _errors(entry) or server.log()[-5000:]
    images = entry["outputs"]["save"]["images"]
    assert len(images) == 1 and images[0]["filename"].startswith(prefix)
    png = server.output_dir / images[0]["subfolder"] / images[0]["filename"]
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _errors(entry) -> list[dict]:
    return [data for event, data in entry["status"]["messages"] if event == "execution_error"]


def test_every_node_is_registered_with_tooltips(comfy_server):
    info = comfy_server.get("/object_info")
    for name in FLASHFACE_NODES:
        assert name in info, f"{name} missing from /object_info"
        node = info[name]
        assert node["category"] == "FlashFace" and node["description"]
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    # V3 menus: ("COMBO", {"options": [...], ...}).
    ckpt_name = info["LoadFlashFace"]["input"]["required"]["ckpt_name"]
    assert ckpt_name[0] == "COMBO" and CHECKPOINT in ckpt_name[1]["options"]
    detector = info["FlashFaceEncodeReferenceFaces"]["input"]["required"]["detector"]
    assert detector[1]["options"][0] == Detector.RETINAFACE and detector[1]["default"] == Detector.RETINAFACE
    optional = info["FlashFaceEncodeReferenceFaces"]["input"]["optional"]
    assert [name for name in optional if name.startswith("image_")] == [f"image_{i}" for i in range(2, 9)]
    # ComfyUI lists every custom node it imported, failures marked "(IMPORT FAILED)".
    log = comfy_server.log()
    imports = [line for line in log.splitlines() if line.rstrip().endswith(PACK_DIR_NAME)]
    assert imports and all("IMPORT FAILED" not in line for line in imports), log
    assert f"Cannot import {comfy_server.base / 'custom_nodes' / PACK_DIR_NAME}" not in log, log


def test_photos_to_image_with_the_flashface_sampler(comfy_server):
    entry = comfy_server.run(faces_prompt(seed=1, prefix="flashface_sampler"))
    assert_success(comfy_server, entry, "flashface_sampler")


def test_photos_to_image_with_apply_flashface_and_stock_ksampler(comfy_server):
    entry = comfy_server.run(faces_prompt(seed=2, prefix="stock_ksampler", sampler="ksampler"))
    assert_success(comfy_server, entry, "stock_ksampler")


def test_photo_without_face_gives_the_packs_message_and_the_server_goes_on(comfy_server):
    prompt = faces_prompt(seed=3, prefix="no_face")
    prompt["blank"] = {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1,
                                                              "color": 0x808080}}
    # Random weights see faces almost anywhere at 0.6, but nowhere on flat grey above 0.99.
    prompt["refs_man"] = encode(["blank", 0], fill_to_four=False, threshold=0.99)
    entry = comfy_server.run(prompt)

    assert entry["status"]["status_str"] == "error"
    (error,) = _errors(entry)
    assert error["node_id"] == "refs_man" and error["node_type"] == "FlashFaceEncodeReferenceFaces"
    assert error["exception_type"].endswith("ValueError")
    message = error["exception_message"]
    assert message.startswith("No face found in reference image 0"), message
    assert NoFace.SKIP in message and "Traceback" not in message
    assert not (comfy_server.output_dir / "no_face_00001_.png").exists()

    assert comfy_server.alive()
    entry = comfy_server.run(faces_prompt(seed=4, prefix="after_error", steps=1))
    assert_success(comfy_server, entry, "after_error")


def test_one_encoder_takes_photos_of_different_sizes(comfy_server):
    """man.png and woman.png differ in size: one node, two inputs, the crops in input order."""
    prompt = {
        "vae": {"class_type": "TestTinyVAE", "inputs": {}},
        "man": {"class_type": "LoadImage", "inputs": {"image": "man.png"}},
        "woman": {"class_type": "LoadImage", "inputs": {"image": "woman.png"}},
        "refs": encode(["man", 0], image_2=["woman", 0], image_5=["man", 0]),
        "save": {"class_type": "SaveImage", "inputs": {"images": ["refs", 1], "filename_prefix": "crops"}},
    }
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", _errors(entry) or comfy_server.log()[-5000:]
    images = entry["outputs"]["save"]["images"]
    assert len(images) == 3  # man, woman, man: one crop per photo
    crops = [np.asarray(Image.open(comfy_server.output_dir / i["subfolder"] / i["filename"])) for i in images]
    assert all(crop.shape == (224, 224, 3) for crop in crops)
    np.testing.assert_array_equal(crops[0], crops[2])
    assert not np.array_equal(crops[0], crops[1])
