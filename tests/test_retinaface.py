"""The official RetinaFace detector: parity with the official code, weight files, model management,
the encoder with it, and bad photos.

The weights are the detector golden set's random ones (random weights know no faces and see
them almost anywhere at the official 0.6, never on flat grey above 0.99): the path is what is
checked, against what the official code computed on the same weights.
"""

import inspect
import json
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from conftest import GOLDEN_FACES_DIR, HOST, ROOT
from PIL import Image
from safetensors.torch import load_file

from comfyui_flashface.flashface_core.tools import golden_faces as faces_golden
from comfyui_flashface.flashface_core.faces import encoding as face_references
from comfyui_flashface.flashface_core.faces import retinaface
from comfyui_flashface.flashface_core.faces.choices import Detector

RETINAFACE = Detector.RETINAFACE


@pytest.fixture(scope="module")
def golden_set(golden_face_sets):
    path = golden_face_sets[0]
    return path, json.loads((path / faces_golden.SETTINGS).read_text()), load_file(str(path / faces_golden.TENSORS))


@pytest.fixture(scope="module")
def network(golden_set):
    return retinaface.build_network(retinaface.load_weights(str(golden_set[0] / faces_golden.WEIGHTS)))


def photo_rgb(golden_set, index: int) -> np.ndarray:
    path, settings, _ = golden_set
    with Image.open(path / settings["photos"][index]["file"]) as image:
        return np.asarray(image.convert("RGB"))


class StandInVAE:
    latent_channels = 4

    def encode(self, pixels):
        return pixels[:, ::8, ::8, :].mean(dim=3, keepdim=True).movedim(3, 1).expand(-1, 4, -1, -1).clone()


# Parity with the official code


@pytest.mark.host
def test_verify_golden_command_passes_on_the_detector_set(golden_face_sets):
    result = subprocess.run(
        [sys.executable, "-m", "flashface_core.verify_golden", str(GOLDEN_FACES_DIR)],
        capture_output=True, text=True, cwd=str(ROOT), env={**os.environ, "COMFYUI_PATH": str(HOST)},
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert {line["set"] for line in lines} == {str(p) for p in golden_face_sets}
    for line in lines:
        assert line["ok"]
        for errors in line["detector_errors"].values():
            assert errors["faces"][0] == errors["faces"][1] > 0
            assert max(errors["scores"], errors["bbox_deltas"], errors["landmark_deltas"]) <= 1e-4
            assert max(errors["boxes_px"], errors["landmarks_px"]) <= 0.05
            assert errors["crops_mean_abs"] < 0.5


def test_each_step_matches_the_official_tensors(golden_set, network):
    _, settings, tensors = golden_set
    for index, photo in enumerate(settings["photos"]):
        name, rgb = photo["name"], photo_rgb(golden_set, index)
        pixels, _, _, _ = retinaface.to_input(rgb)
        torch.testing.assert_close(pixels, tensors[f"{name}.input"], rtol=0, atol=0)
        scores, box_deltas, landmark_deltas = retinaface.raw_outputs(network, pixels)
        for value, key in ((scores, "scores"), (box_deltas, "bbox_deltas"), (landmark_deltas, "landmark_deltas")):
            reference = tensors[f"{name}.{key}"]
            assert float((value - reference).norm() / reference.norm()) <= 1e-4, key
        boxes, landmarks = retinaface.detect(network, rgb, photo["min_thr"])
        assert boxes.shape[0] == photo["faces"]
        torch.testing.assert_close(boxes, tensors[f"{name}.boxes"], rtol=0, atol=0.05)
        torch.testing.assert_close(landmarks, tensors[f"{name}.landmarks"], rtol=0, atol=0.05)


def test_priors_are_the_official_anchors():
    anchors = retinaface.priors(640, 640)
    assert anchors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4)
    # First cell of the stride-8 level: two anchors (16 and 32 pixels) at its centre, row by row.
    torch.testing.assert_close(anchors[:2], torch.tensor([[4 / 640, 4 / 640, 16 / 640, 16 / 640],
                                                          [4 / 640, 4 / 640, 32 / 640, 32 / 640]]))
    torch.testing.assert_close(anchors[2, :2], torch.tensor([12 / 640, 4 / 640]))
    torch.testing.assert_close(anchors[-1], torch.tensor([624 / 640, 624 / 640, 512 / 640, 512 / 640]))


def test_nms_keeps_the_official_order_and_overlap_rule():
    boxes = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 9], [1, 0, 10, 9], [20, 20, 29, 29]])
    scores = torch.tensor([0.7, 0.9, 0.8, 0.6])
    # Box 2 overlaps box 1 by 9x10 / (100 + 100 - 90) = 0.82: suppressed; box 3 stands apart.
    assert retinaface.nms(boxes, scores, 0.4).tolist() == [1, 3]
    assert retinaface.nms(boxes, scores, 0.9).tolist() == [1, 2, 3]  # box 0 repeats box 1: overlap 1
    assert retinaface.nms(boxes, scores, 1.0).tolist() == [1, 2, 0, 3]  # kept at overlap <= threshold, by score


def test_pad_to_square_splits_the_bars_as_the_official_get_padding():
    wide = Image.new("RGB", (300, 101), (255, 255, 255))
    square, scale, left, top = retinaface.pad_to_square(wide, 640)
    pixels = np.asarray(square)
    assert (scale, left, top) == (640 / 300, 0, (640 - 215) // 2)
    assert pixels[:top].max() == 0 and pixels[top + 215:].max() == 0 and pixels[top:top + 215].min() > 0


# Weight files


def test_facexlib_and_biubug6_key_names_load_as_the_same_network(golden_set, network, tmp_path):
    official = torch.load(golden_set[0] / faces_golden.WEIGHTS, weights_only=True)
    renamed = {}
    for key, value in official.items():
        for ours, theirs in (("class_head.", "ClassHead."), ("bbox_head.", "BboxHead."), ("landmark_head.", "LandmarkHead.")):
            key = key.replace(ours, theirs)
        if not key.endswith("num_batches_tracked"):  # a training counter some releases lack
            renamed["module." + key] = value  # as saved from DataParallel
    torch.save(renamed, tmp_path / "Resnet50_Final.pth")
    torch.save({"state_dict": official}, tmp_path / "wrapped.pth")
    pixels, _, _, _ = retinaface.to_input(photo_rgb(golden_set, 0))
    expected = retinaface.raw_outputs(network, pixels)
    for name in ("Resnet50_Final.pth", "wrapped.pth"):
        other = retinaface.build_network(retinaface.load_weights(str(tmp_path / name)))
        for got, want in zip(retinaface.raw_outputs(other, pixels), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_truncated_file_says_download_again(golden_set, tmp_path):
    data = (golden_set[0] / faces_golden.WEIGHTS).read_bytes()
    (tmp_path / "retinaface_resnet50.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(retinaface.WeightFileError, match="truncated.*download retinaface_resnet50.pth again.*shilongz"):
        retinaface.load_weights(str(tmp_path / "retinaface_resnet50.pth"))


@pytest.mark.parametrize(
    "state, message",
    [
        ({"body.stage1.0.0.weight": torch.zeros(8, 3, 3, 3)}, "MobileNet-0.25"),
        ({"conv.weight": torch.zeros(1)}, "not the RetinaFace-ResNet50 network"),
        ([torch.zeros(1)], "no state dict of tensors"),
        ({"body.conv1.weight": "text"}, "no state dict of tensors"),
    ],
)
def test_foreign_files_say_what_was_expected(tmp_path, state, message):
    torch.save(state, tmp_path / "retinaface_resnet50.pth")
    with pytest.raises(retinaface.WeightFileError, match=message) as error:
        retinaface.load_weights(str(tmp_path / "retinaface_resnet50.pth"))
    assert "retinaface_resnet50.pth" in str(error.value)


def test_wrong_shapes_are_named(golden_set, tmp_path):
    state = torch.load(golden_set[0] / faces_golden.WEIGHTS, weights_only=True)
    state["class_head.0.conv1x1.weight"] = torch.zeros(6, 256, 1, 1)  # three anchors per cell
    torch.save(state, tmp_path / "retinaface_resnet50.pth")
    with pytest.raises(retinaface.WeightFileError, match=r"1 of another shape \(e.g. \['class_head.0.conv1x1.weight'\]"):
        retinaface.load_weights(str(tmp_path / "retinaface_resnet50.pth"))


class _Code:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"body.conv1.weight": _Code()}, tmp_path / "retinaface_resnet50.pth")
    with pytest.raises(retinaface.WeightFileError, match="could not be read"):
        retinaface.load_weights(str(tmp_path / "retinaface_resnet50.pth"))
    assert "pickled code ran" not in capsys.readouterr().out


# In ComfyUI: model folders, model management, the encoder


@pytest.fixture
def model_folders(tmp_path, monkeypatch):
    """Empty flashface and facedetection model folders in place of the host's."""
    import folder_paths

    from comfyui_flashface.flashface_core.model_files import folders as model_paths

    model_paths.register_model_folders()
    folders = {}
    for name in (model_paths.FLASHFACE, model_paths.FACE_DETECTION):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        extensions = folder_paths.folder_names_and_paths[name][1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(folders[name])], extensions))
    return folders


@pytest.fixture
def installed_weights(model_folders, golden_set):
    """The golden random weights as models/facedetection/retinaface_resnet50.pth; ComfyUI unloads them after."""
    import comfy.model_management

    (model_folders["facedetection"] / retinaface.WEIGHTS_FILE).symlink_to(golden_set[0] / faces_golden.WEIGHTS)
    yield model_folders["facedetection"] / retinaface.WEIGHTS_FILE
    comfy.model_management.unload_all_models()
    retinaface._held.clear()  # one loaded but never run is not ComfyUI's to unload


@pytest.mark.host
def test_missing_weights_name_file_folders_source_and_command(model_folders):
    with pytest.raises(FileNotFoundError) as error:
        retinaface.find_weights()
    message = str(error.value)
    for part in ("retinaface_resnet50.pth", str(model_folders["flashface"]), str(model_folders["facedetection"]),
                 "shilongz/FlashFace-SD1.5", "python -m flashface_core.download --detector"):
        assert part in message


@pytest.mark.host
def test_weights_are_found_in_the_flashface_folder_first(model_folders, golden_set):
    for folder in model_folders.values():
        (folder / retinaface.WEIGHTS_FILE).symlink_to(golden_set[0] / faces_golden.WEIGHTS)
    assert retinaface.find_weights() == str(model_folders["flashface"] / retinaface.WEIGHTS_FILE)


@pytest.mark.host
def test_detector_loads_once_on_comfyuis_device_and_is_freed_with_it(installed_weights):
    import comfy.model_management
    import comfy.model_patcher

    detector = retinaface.load_detector()
    assert retinaface.load_detector() is detector
    assert detector.patcher.load_device == comfy.model_management.get_torch_device()
    assert detector.provider == f"torch on {comfy.model_management.get_torch_device()}"
    detector.detect(np.zeros((96, 96, 3), dtype=np.uint8), 0.99)
    assert any(model is detector.patcher for model in comfy.model_management.loaded_models())

    other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(4, 4), detector.patcher.load_device,
                                             detector.patcher.offload_device)
    comfy.model_management.load_models_gpu([other])  # ComfyUI unloads both in one loop below
    network = weakref.ref(detector.patcher.model)
    del detector
    comfy.model_management.unload_all_models()
    assert not retinaface._held and network() is None  # nothing kept once ComfyUI unloaded it
    assert retinaface.load_detector().patcher.model is not None


SHUTDOWN_SCRIPT = """
import sys
from flashface_core.tools.host import import_comfyui
import_comfyui()
import numpy as np
from flashface_core.faces import retinaface
retinaface.find_weights = lambda: sys.argv[1]
detector = retinaface.load_detector()
detector.detect(np.zeros((64, 64, 3), dtype=np.uint8), 0.99)
if sys.argv[2] == "failure":
    try:
        raise ValueError("a clean failure")
    except ValueError:
        sys.exit(1)
"""


@pytest.mark.host
@pytest.mark.parametrize("ending, status", [("success", 0), ("failure", 1)])
def test_a_process_that_loaded_the_detector_exits_without_a_traceback(ending, status, tmp_path):
    """ComfyUI's ModelPatcher.__del__ runs the detector's unload callback while Python shuts down."""
    weights = GOLDEN_FACES_DIR / "retinaface_random" / faces_golden.WEIGHTS
    if not weights.is_file():  # random weights of the same network serve as well
        weights = tmp_path / retinaface.WEIGHTS_FILE
        torch.save(retinaface.RetinaFace().state_dict(), weights)
    env = {**os.environ, "COMFYUI_PATH": str(HOST), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", SHUTDOWN_SCRIPT, str(weights), ending], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == status and done.stderr == ""


@pytest.mark.host
def test_the_default_detector_needs_no_onnx_package(installed_weights, monkeypatch):
    from comfyui_flashface.flashface_core.faces import detection

    for name in ("onnx", "onnxruntime", "insightface"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them fails
    assert inspect.signature(face_references.encode_reference_faces).parameters["detector"].default == RETINAFACE
    detection.load_detector(RETINAFACE).detect(np.zeros((96, 96, 3), dtype=np.uint8), 0.99)


@pytest.mark.host
def test_encoder_crop_is_the_official_crop(installed_weights, golden_set):
    """The node's path (IMAGE in, largest face, one pass) gives the official crop of that face."""
    _, settings, tensors = golden_set
    for index, photo in enumerate(settings["photos"]):
        rgb = photo_rgb(golden_set, index)
        images = torch.from_numpy(rgb.astype(np.float32) / 255)[None]
        _, crops = face_references.encode_reference_faces(StandInVAE(), images, RETINAFACE, threshold=photo["min_thr"])
        boxes = tensors[f"{photo['name']}.boxes"]
        largest = int(((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).argmax())
        official = tensors[f"{photo['name']}.crops"][largest].float()
        assert float((crops[0] * 255 - official).abs().mean()) < 0.5


@pytest.mark.host
def test_several_inputs_of_different_sizes_in_order(installed_weights, golden_set):
    photos = [torch.from_numpy(photo_rgb(golden_set, i).astype(np.float32) / 255)[None] for i in range(3)]
    references, crops = face_references.encode_reference_faces(
        StandInVAE(), [("images", photos[0]), ("image_2", photos[1]), ("image_3", torch.cat([photos[2], photos[2]]))],
        RETINAFACE, fill_to_four=True)
    assert crops.shape == (4, 224, 224, 3) and len(references) == 4
    single = [face_references.encode_reference_faces(StandInVAE(), p, RETINAFACE)[1] for p in photos]
    torch.testing.assert_close(crops, torch.cat([single[0], single[1], single[2], single[2]]))


@pytest.mark.host
def test_no_face_above_the_threshold_is_a_clear_error(installed_weights):
    grey = torch.full((1, 256, 256, 3), 0.5)
    with pytest.raises(ValueError, match="No face found in reference image 0 .*retinaface detector on torch.*0.99"):
        face_references.encode_reference_faces(StandInVAE(), grey, RETINAFACE, threshold=0.99)


@pytest.mark.host
def test_grayscale_rgba_16_bit_and_half_precision_photos(installed_weights, golden_set):
    rgb = torch.from_numpy(photo_rgb(golden_set, 0).astype(np.float32) / 255)[None]
    _, expected = face_references.encode_reference_faces(StandInVAE(), rgb, RETINAFACE)
    rgba = torch.cat([rgb, torch.rand_like(rgb[..., :1])], dim=-1)
    torch.testing.assert_close(face_references.encode_reference_faces(StandInVAE(), rgba, RETINAFACE)[1], expected)
    _, grey = face_references.encode_reference_faces(StandInVAE(), rgb.mean(dim=-1, keepdim=True), RETINAFACE)
    assert grey.shape == (1, 224, 224, 3) and torch.equal(grey[..., 0], grey[..., 2])
    _, half = face_references.encode_reference_faces(StandInVAE(), rgb.half(), RETINAFACE)
    assert half.shape == (1, 224, 224, 3)
    sixteen_bit = (rgb * 255).round() * 257 / 65535  # a 16-bit photo of the same pixels, as 0..1 floats
    torch.testing.assert_close(face_references.encode_reference_faces(StandInVAE(), sixteen_bit, RETINAFACE)[1], expected)


def test_huge_photos_are_shrunk_by_a_box_average_in_pieces(monkeypatch):
    monkeypatch.setattr(face_references, "MAX_IMAGE_SIDE", 100)
    monkeypatch.setattr(face_references, "_CHUNK_VALUES", 3 * 250 * 3 * 7)  # a few rows at a time
    image = torch.rand(1, 200, 250, 3)  # 3x smaller: the longer side under 100, the shorter still 64 or more
    (rgb,) = face_references.images_to_rgb(image)
    expected = torch.nn.functional.avg_pool2d(image[0, :198, :249].movedim(-1, 0), 3).movedim(0, -1)
    assert rgb.shape == (66, 83, 3)
    np.testing.assert_array_equal(rgb, (expected * 255).round().to(torch.uint8).numpy())


@pytest.mark.host
def test_a_20000_pixel_photo_is_detected_without_a_full_size_copy(installed_weights):
    image = torch.full((1, 1000, 20000, 3), 0.5)  # the detector sees it 640 long, 32 pixels across: enough
    image[0, 400:600, 9000:9200] = torch.linspace(0, 1, 200)[:, None, None]
    (rgb,) = face_references.images_to_rgb(image)
    assert rgb.shape == (200, 4000, 3)  # 5x smaller before anything else
    _, crops = face_references.encode_reference_faces(StandInVAE(), image, RETINAFACE)
    assert crops.shape == (1, 224, 224, 3)
