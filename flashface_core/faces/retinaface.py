"""The official FlashFace face detector: RetinaFace-ResNet50 in torch, on the official detection path.

FlashFace was trained on crops made from these boxes and landmarks, and the official demo
makes its reference crops the same way, so every step here follows the official code: the
photo resized (PIL's default filter) and padded to 640x640, RGB to BGR minus the official
mean, the network, softmax, the official priors and box and landmark decoding, the 5000
best anchors above the threshold, NMS at 0.4 (boxes with the legacy +1 pixel), padding and
scale undone. The network is plain torch (torchvision's ResNet-50 as the backbone) with the
official module names, so the official ``retinaface_resnet50.pth`` loads as it is; the
facexlib and biubug6 files of the same network load with their key names mapped.
"""

import itertools
import logging
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..model_files.catalog import DETECTOR
from . import comfy_memory
from .detected_face import DetectedFace

logger = logging.getLogger(__name__)

WEIGHTS_FILE = DETECTOR.filename
INPUT_SIZE = 640
MEAN_BGR = (104.0, 117.0, 123.0)
VARIANCE = (0.1, 0.2)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STRIDES = (8, 16, 32)
NMS_THRESHOLD = 0.4
PRE_NMS_TOP_K = 5000
POST_NMS_TOP_K = 750
FPN_IN = (512, 1024, 2048)
WIDTH = 256
ANCHORS_PER_CELL = 2


def _conv_bn(in_dim: int, out_dim: int, kernel: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_dim, out_dim, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(out_dim)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=0.0, inplace=True))  # slope 0 at width 256, as official
    return nn.Sequential(*layers)


class _Body(nn.Module):
    """ResNet-50 up to layer4, returning layer2, layer3 and layer4 (the official ``body``)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        resnet = resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class _FPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.output1, self.output2, self.output3 = (_conv_bn(d, WIDTH, 1, True) for d in FPN_IN)
        self.merge1 = _conv_bn(WIDTH, WIDTH, 3, True)
        self.merge2 = _conv_bn(WIDTH, WIDTH, 3, True)

    def forward(self, features):
        p1, p2, p3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[2:], mode="nearest"))
        return p1, p2, p3


class _SSH(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv3X3 = _conv_bn(WIDTH, WIDTH // 2, 3, False)
        self.conv5X5_1 = _conv_bn(WIDTH, WIDTH // 4, 3, True)
        self.conv5X5_2 = _conv_bn(WIDTH // 4, WIDTH // 4, 3, False)
        self.conv7X7_2 = _conv_bn(WIDTH // 4, WIDTH // 4, 3, True)
        self.conv7x7_3 = _conv_bn(WIDTH // 4, WIDTH // 4, 3, False)

    def forward(self, x):
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7X7_2(branch5)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(branch7)], dim=1))


class _Head(nn.Module):
    def __init__(self, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(WIDTH, ANCHORS_PER_CELL * values, kernel_size=1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """RetinaFace-ResNet50 with the official module names; ``forward`` gives the raw heads."""

    def __init__(self):
        super().__init__()
        self.body = _Body()
        self.fpn = _FPN()
        self.ssh1, self.ssh2, self.ssh3 = _SSH(), _SSH(), _SSH()
        self.class_head = nn.ModuleList(_Head(2) for _ in STRIDES)
        self.bbox_head = nn.ModuleList(_Head(4) for _ in STRIDES)
        self.landmark_head = nn.ModuleList(_Head(10) for _ in STRIDES)

    def forward(self, bgr):
        levels = self.fpn(self.body(bgr))
        levels = (self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2]))
        return tuple(
            torch.cat([head[i](level) for i, level in enumerate(levels)], dim=1)
            for head in (self.class_head, self.bbox_head, self.landmark_head)
        )


# The detection path


def pad_to_square(image: Image.Image, size: int):
    """The official ``PadToSquare``: longer side to ``size`` (PIL's default filter), black bars
    split as ``get_padding`` splits them. Returns the image, the scale and the left and top padding."""
    scale = size / max(image.size)
    resized = image.resize((round(image.width * scale), round(image.height * scale)))
    left = (size - resized.width) // 2 if resized.height > resized.width else 0
    top = (size - resized.height) // 2 if resized.width > resized.height else 0
    square = Image.new(image.mode, (size, size))
    square.paste(resized, (left, top))
    return square, scale, left, top


def to_input(rgb: np.ndarray, size: int = INPUT_SIZE):
    """A uint8 RGB photo as the official network input: [3, size, size] RGB in 0..1 (ToTensor)."""
    square, scale, left, top = pad_to_square(Image.fromarray(rgb), size)
    pixels = torch.from_numpy(np.array(square)).permute(2, 0, 1).float().div(255)
    return pixels, scale, left, top


@cache
def priors(height: int, width: int) -> torch.Tensor:
    """The official anchors [A, 4] (centre x, centre y, width, height as fractions), row by row."""
    anchors = []
    for stride, sizes in zip(STRIDES, MIN_SIZES, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)
        for i, j in itertools.product(range(rows), range(cols)):
            for min_size in sizes:
                anchors.append([(j + 0.5) * stride / width, (i + 0.5) * stride / height, min_size / width,
                                min_size / height])
    return torch.tensor(anchors, dtype=torch.float32)


@torch.no_grad()
def raw_outputs(network: nn.Module, pixels: torch.Tensor):
    """Face probability [A], box deltas [A, 4] and landmark deltas [A, 10] for one input [3, H, W]."""
    parameter = next(network.parameters())
    pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
    bgr = 255.0 * pixels.flip(0)[None] - pixels.new_tensor(MEAN_BGR).view(1, 3, 1, 1)
    logits, boxes, landmarks = network(bgr)
    return F.softmax(logits.float(), dim=-1)[0, :, 1], boxes[0].float(), landmarks[0].float()


def decode(scores, box_deltas, landmark_deltas, height: int, width: int):
    """Boxes [A, 4] and landmarks [A, 10] in input pixels, decoded as the official code does."""
    anchor = priors(height, width).to(box_deltas.device)
    centre, size = anchor[:, :2], anchor[:, 2:]
    boxes = torch.cat([centre + box_deltas[:, :2] * VARIANCE[0] * size, size * torch.exp(box_deltas[:, 2:] * VARIANCE[1])],
                      dim=1)
    boxes[:, :2] -= boxes[:, 2:] / 2.0
    boxes[:, 2:] += boxes[:, :2]
    boxes *= torch.tensor([width, height, width, height]).to(boxes)
    landmarks = torch.cat([centre + landmark_deltas[:, k:k + 2] * VARIANCE[0] * size for k in range(0, 10, 2)], dim=1)
    landmarks *= torch.tensor([width, height] * 5).to(landmarks)
    return boxes, landmarks


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS in the official order (``argsort`` flipped) with the legacy +1 pixel areas."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort().flip(0)
    keep = []
    while order.numel() > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = (torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest]) + 1).clamp_(0)
        height = (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest]) + 1).clamp_(0)
        overlap = width * height / (areas[best] + areas[rest] - width * height)
        order = rest[overlap <= threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


def select(scores, boxes, landmarks, threshold: float):
    """The official selection: the best anchors above ``threshold``, NMS, at most 750 kept.

    Returns boxes with scores [N, 5] and landmarks [N, 5, 2], best first.
    """
    top_scores, top_indices = scores.topk(min(PRE_NMS_TOP_K, scores.shape[0]))
    indices = top_indices[top_scores > threshold]
    found = torch.cat([boxes[indices], scores[indices, None]], dim=1)
    keep = nms(found[:, :4], found[:, 4], NMS_THRESHOLD)[:POST_NMS_TOP_K]
    return found[keep], landmarks[indices][keep].view(-1, 5, 2)


def detect(network: nn.Module, rgb: np.ndarray, threshold: float, size: int = INPUT_SIZE):
    """Boxes with scores [N, 5] and landmarks [N, 5, 2] in photo pixels (float32, CPU), as the demo's
    ``detect_face`` has them before its crop."""
    pixels, scale, left, top = to_input(rgb, size)
    scores, box_deltas, landmark_deltas = raw_outputs(network, pixels)
    boxes, landmarks = decode(scores, box_deltas, landmark_deltas, size, size)
    boxes, landmarks = select(scores, boxes, landmarks, threshold)
    boxes, landmarks = boxes.cpu(), landmarks.cpu()
    boxes[:, [0, 2]] -= left
    boxes[:, [1, 3]] -= top
    landmarks[:, :, 0] -= left
    landmarks[:, :, 1] -= top
    boxes[:, :4] /= scale
    landmarks /= scale
    return boxes, landmarks


# Weights


class WeightFileError(ValueError):
    """A weight file that is not the RetinaFace-ResNet50 this detector needs."""


# Other releases of the same network (biubug6's Pytorch_Retinaface, facexlib): their head names.
_FOREIGN_PREFIXES = {"ClassHead.": "class_head.", "BboxHead.": "bbox_head.", "LandmarkHead.": "landmark_head."}


def _unwrapped(state: dict) -> dict:
    """The state dict itself, also when a training script saved it under "state_dict"."""
    return state["state_dict"] if isinstance(state.get("state_dict"), dict) else state


def _official_keys(state: dict) -> dict:
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for foreign, official in _FOREIGN_PREFIXES.items():
            if key.startswith(foreign):
                key = official + key[len(foreign):]
        mapped[key] = value
    return mapped


def load_weights(path: str) -> dict:
    """The state dict of a RetinaFace-ResNet50 file in official names, float32; clear errors otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:  # torch.load raises many types for truncated or foreign files
        raise WeightFileError(
            f"{path} could not be read as a RetinaFace weight file ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no details'}). It may be "
            f"truncated or not a torch file: download {WEIGHTS_FILE} again from {DETECTOR.url} (or run {DETECTOR.download_command})."
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in _unwrapped(state).items()
    ):
        raise WeightFileError(f"{path} holds no state dict of tensors; expected the official {WEIGHTS_FILE} from {DETECTOR.url}.")
    state = _official_keys(_unwrapped(state))
    shapes = _expected_shapes()
    for key in shapes.keys() - state.keys():
        if key.endswith(".num_batches_tracked"):  # a counter for training, absent from some releases
            state[key] = torch.tensor(0)
    missing = sorted(shapes.keys() - state.keys())
    unexpected = sorted(state.keys() - shapes.keys())
    wrong = sorted(k for k in shapes.keys() & state.keys() if tuple(state[k].shape) != shapes[k])
    if missing or unexpected or wrong:
        variant = " It looks like the MobileNet-0.25 RetinaFace; FlashFace uses the ResNet-50 one." if any(
            k.startswith("body.stage") for k in state) else ""
        raise WeightFileError(
            f"{path} is not the RetinaFace-ResNet50 network FlashFace uses.{variant} "
            f"{len(missing)} expected weights missing (e.g. {missing[:3]}), {len(unexpected)} unknown "
            f"(e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]}). Expected the official "
            f"{WEIGHTS_FILE} from {DETECTOR.url} (facexlib's and biubug6's ResNet-50 files load too)."
        )
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


@cache
def _expected_shapes() -> dict:
    with torch.device("meta"):
        return {key: tuple(value.shape) for key, value in RetinaFace().state_dict().items()}


def build_network(state: dict) -> RetinaFace:
    """The network in eval mode holding ``state`` (from ``load_weights``), on the CPU."""
    with torch.device("meta"):
        network = RetinaFace()
    network.load_state_dict(state, strict=True, assign=True)
    return network.eval().requires_grad_(False)


def find_weights() -> str:
    """``retinaface_resnet50.pth`` in the FlashFace or face detection model folders; else a clear error."""
    from ..model_files import folders, messages  # ComfyUI's folder_paths: only once the host is set up

    path = folders.find_detector_weights(WEIGHTS_FILE)
    if path is None:
        raise FileNotFoundError(messages.missing_detector_message())
    return path


class RetinaFaceDetector:
    """The official detector on ComfyUI's torch device, loaded and freed by ComfyUI's model management."""

    name = "retinaface"
    sizes = (INPUT_SIZE,)

    def __init__(self, path: str):
        import comfy.model_management
        import comfy.model_patcher

        self.path = path
        network = build_network(load_weights(path))
        self.patcher = comfy.model_patcher.ModelPatcher(
            network, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        self.provider = f"torch on {self.patcher.load_device}"

    def detect(self, rgb: np.ndarray, threshold: float, size: int = INPUT_SIZE) -> list[DetectedFace]:
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        boxes, landmarks = detect(self.patcher.model, rgb, threshold, size)
        return [DetectedFace(box=tuple(float(v) for v in box[:4]), landmarks=points.numpy(), score=float(box[4]))
                for box, points in zip(boxes, landmarks, strict=True)]


_held = comfy_memory.HeldDetectors()


def load_detector() -> RetinaFaceDetector:
    """The detector for the weight file found now, reused while ComfyUI keeps it loaded.

    The one reference kept here is dropped when ComfyUI's model management unloads the
    detector (to make room, or on "unload models"), so nothing outlives what ComfyUI frees.
    """
    path = find_weights()
    key = comfy_memory.file_identity(path)
    detector = _held.current(RetinaFaceDetector.name, key)
    if detector is None:
        detector = RetinaFaceDetector(path)
        logger.info("FlashFace face detector retinaface loaded from %s; runs on %s", path, detector.provider)
        _held.keep(RetinaFaceDetector.name, key, detector, detector.patcher)
    return detector
