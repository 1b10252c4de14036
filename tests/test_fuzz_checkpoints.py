"""Corrupted and crafted checkpoints through the loader's reading and checks (seeded, bounded).

Every case must end in a CheckpointError whose message names the file, or load; nothing
else may escape. The cases are built from the tiny golden checkpoint (truncated, bytes
flipped), from small files with the FlashFace key set whose tensors all view one element
(a few hundred KB that claim any shapes), from random pickles, raw bytes behind torch's
magic numbers, and safetensors with lying headers.
"""

import json
import pickle
import random
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from comfyui_flashface.flashface_core.model import key_layout
from comfyui_flashface.flashface_core.model.checkpoint import CheckpointError

pytestmark = pytest.mark.host

SEED = 16
TIME_LIMIT_S = 120  # about 30 s alone; room for a busy machine


@pytest.fixture(scope="module")
def golden_bytes(golden_sets):
    return (golden_sets[0] / "flashface_tiny.ckpt").read_bytes()


@pytest.fixture(scope="module")
def pack_shapes(golden_sets):
    """The pack layout's key -> shape of the tiny golden model."""
    state_dict = torch.load(golden_sets[0] / "flashface_tiny.ckpt", map_location="cpu", weights_only=True, mmap=True)
    converted, _ = key_layout.convert_official(state_dict)
    return {key: tuple(tensor.shape) for key, tensor in converted.items()}


def views_of_one_element(shapes: dict, dtype=torch.float16) -> dict:
    """Tensors of any shapes on one shared one-element storage: torch.save writes a tiny file."""
    base = torch.zeros(1, dtype=dtype)
    return {key: base.expand(shape) if shape else base[0] for key, shape in shapes.items()}


def _random_tensor(rng: random.Random):
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.complex64])
    shape = tuple(rng.randint(0, 4) for _ in range(rng.randint(0, 4)))
    tensor = torch.zeros(shape, dtype=dtype)
    if rng.random() < 0.1 and tensor.ndim == 2 and dtype == torch.float32:
        tensor = tensor.to_sparse()
    return tensor


def _random_key(rng: random.Random, pack_keys: list):
    choices = [
        lambda: rng.choice(pack_keys),
        lambda: "ori_encoder." + rng.choice(["0.weight", "1.1.blocks", "1.1.blocks.x", "1", "².weight", ""]),
        lambda: rng.choice(["ori_decoder.5.2.1", "ori_middle.1.blocks.0.self_attn.self_attn_first.z.weight",
                            "ref_decoder.3.1.blocks.0.self_attn.self_attn_first.q.weight", "head.2.weight",
                            "time_embedding.0.weight", "model.diffusion_model.input_blocks.0.0.weight"]),
        lambda: rng.randint(-3, 3),
        lambda: (1, "a"),
        lambda: "".join(rng.choice("ab._0") for _ in range(rng.randint(0, 12))),
    ]
    return rng.choice(choices)()


def _random_value(rng: random.Random, pack_keys: list, depth: int = 0):
    kind = rng.random()
    if depth > 2 or kind < 0.55:
        return _random_tensor(rng)
    if kind < 0.7:
        return [_random_value(rng, pack_keys, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind < 0.8:
        return rng.choice([None, 1, 2.5, "text", b"bytes", (1, 2)])
    return {_random_key(rng, pack_keys): _random_value(rng, pack_keys, depth + 1) for _ in range(rng.randint(0, 4))}


def random_pickle(rng: random.Random, pack_keys: list):
    data = {_random_key(rng, pack_keys): _random_value(rng, pack_keys) for _ in range(rng.randint(0, 6))}
    shape = rng.random()
    if shape < 0.15:
        return {"state_dict": data}
    if shape < 0.25:
        return list(data.values())
    return data


def crafted_pack(rng: random.Random, pack_shapes: dict) -> dict:
    """The FlashFace key set on one element, with one thing wrong (or nothing)."""
    shapes = dict(pack_shapes)
    keys = sorted(shapes)
    change = rng.choice(["width", "shape", "missing", "extra", "dtype", "ndim", "none", "stem"])
    if change == "width":  # a consistent model of another width: within the bound or enormous
        scale = rng.choice([2, 10, 40, 1000])
        shapes = {k: tuple(d * scale if d % 32 == 0 and d > 5 else d for d in s) for k, s in shapes.items()}
    elif change == "shape":
        key = rng.choice(keys)
        shapes[key] = tuple(d + rng.randint(1, 3) for d in shapes[key]) or (2,)
    elif change == "missing":
        del shapes[rng.choice(keys)]
    elif change == "extra":
        shapes[rng.choice(keys) + ".extra"] = (2,)
    elif change == "ndim":
        shapes[rng.choice(["diffusion_model.input_blocks.0.0.weight", "reference_unet.input_blocks.0.0.weight",
                           rng.choice(keys)])] = rng.choice([(), (5,), (2, 5)])
    elif change == "stem":
        shapes["diffusion_model.input_blocks.0.0.weight"] = (100000, 5, 3, 3)
    state_dict = views_of_one_element(shapes)
    if change == "dtype":
        state_dict[rng.choice(keys)] = torch.zeros(1, dtype=torch.int32).expand(shapes[keys[0]])
    return state_dict


def lying_safetensors(rng: random.Random) -> bytes:
    """A small safetensors file whose header lies in one way."""
    data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    entry = {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}
    lie = rng.choice(["offsets_beyond", "offsets_reversed", "dtype", "shape", "huge_header", "header_beyond",
                      "not_json", "not_object", "negative", "metadata", "overlap", "empty", "honest"])
    header = {"diffusion_model.input_blocks.0.0.weight": entry}
    if lie == "offsets_beyond":
        entry["data_offsets"] = [0, len(data) + rng.randint(1, 1 << 40)]
        entry["shape"] = [entry["data_offsets"][1] // 2]
    elif lie == "offsets_reversed":
        entry["data_offsets"] = [8, 0]
    elif lie == "dtype":
        entry["dtype"] = rng.choice(["Q8", "", "F128", 3])
    elif lie == "shape":
        entry["shape"] = rng.choice([[3, 3], [-1], [1 << 62, 1 << 62], "x"])
    elif lie == "negative":
        entry["data_offsets"] = [-8, 0]
    elif lie == "metadata":
        header["__metadata__"] = rng.choice([{"a": 1}, [1], "x"])
    elif lie == "overlap":
        header["reference_attention.middle_0_0.to_q.weight"] = dict(entry)
    elif lie == "empty":
        header = {}
    if lie == "honest" or lie not in ("offsets_beyond",):
        data = data.ljust(8, b"\0")
    raw = json.dumps(header).encode()
    if lie == "not_json":
        raw = b"{not json" + bytes(rng.randrange(256) for _ in range(8))
    elif lie == "not_object":
        raw = json.dumps(rng.choice([[1, 2], "text", 3])).encode()
    length = len(raw)
    if lie == "huge_header":
        length = rng.choice([1 << 63, 1 << 40, 100_000_001])
    elif lie == "header_beyond":
        length = len(raw) + len(data) + rng.randint(1, 1000)
    return struct.pack("<Q", length) + raw + data


def _flip(data: bytes, rng: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        # Mostly where the structure lives: the pickle at the start and the zip directory at the end.
        region = rng.random()
        if region < 0.4:
            position = rng.randrange(min(len(out), 200_000))
        elif region < 0.8:
            position = len(out) - 1 - rng.randrange(min(len(out), 200_000))
        else:
            position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_corrupted_and_crafted_checkpoints_end_in_a_message_or_load(tmp_path, golden_bytes, pack_shapes, monkeypatch):
    from comfyui_flashface.flashface_core import loader
    from comfyui_flashface.flashface_core.model import flashface_model

    built = []
    real_init = flashface_model.FlashFaceModel.__init__

    def only_on_meta(self, model_config, device=None):
        # Checking shapes builds on the meta device; a real model is only built for a file that passed.
        if device is None or torch.device(device).type != "meta":
            built.append(model_config.unet_config["model_channels"])
        real_init(self, model_config, device=device)

    monkeypatch.setattr(flashface_model.FlashFaceModel, "__init__", only_on_meta)

    rng = random.Random(SEED)
    pack_keys = sorted(pack_shapes)
    outcomes = {"loaded": 0, "refused": 0}
    escaped = []
    timings = {}
    started = time.monotonic()

    def check(name: str, write):
        path = tmp_path / name
        write(path)
        try:
            loader.read_checkpoint(path)
        except CheckpointError as error:
            if path.name not in str(error):
                escaped.append(f"{name}: the message does not name the file: {error}")
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - what the test looks for
            escaped.append(f"{name}: {type(error).__name__}: {str(error)[:160]}")
        else:
            outcomes["loaded"] += 1
        finally:
            path.unlink()

    cases = []
    for i in range(25):
        cut = rng.randrange(len(golden_bytes))
        cases.append((f"truncated_{i}.ckpt", golden_bytes[:cut]))
    for i in range(25):
        cases.append((f"flipped_{i}.ckpt", _flip(golden_bytes, rng, rng.choice([1, 4, 32]))))
    for name, data in cases:
        check(name, lambda path, data=data: path.write_bytes(data))
    timings["golden"] = time.monotonic() - started
    for i in range(30):
        state_dict = crafted_pack(rng, pack_shapes)
        check(f"crafted_{i}.ckpt", lambda path, sd=state_dict: torch.save(sd, path))
    timings["crafted"] = time.monotonic() - started
    for i in range(150):
        data = random_pickle(rng, pack_keys)
        check(f"random_{i}.ckpt", lambda path, data=data: torch.save(data, path))
    for i in range(60):
        payload = rng.choice([b"PK\x03\x04", b"\x80\x02", b"\x80"]) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        if rng.random() < 0.5:  # a real small pickle with bytes flipped: the unpickler meets odd opcodes
            payload = _flip(pickle.dumps(random_pickle(rng, pack_keys), protocol=2), rng, rng.randint(1, 6))
        check(f"bytes_{i}.ckpt", lambda path, data=payload: path.write_bytes(data))
    for i in range(80):
        data = lying_safetensors(rng)
        check(f"lying_{i}.safetensors", lambda path, data=data: path.write_bytes(data))
    for i in range(20):
        tensors = {_random_key(rng, pack_keys): _random_tensor(rng) for _ in range(rng.randint(1, 4))}
        tensors = {k: v for k, v in tensors.items() if isinstance(k, str) and v.layout == torch.strided} or {"x": torch.zeros(2)}
        check(f"small_{i}.safetensors", lambda path, sd=tensors: save_file(sd, str(path)))
    timings["safetensors"] = time.monotonic() - started

    elapsed = time.monotonic() - started
    assert not escaped, f"{len(escaped)} cases escaped:\n" + "\n".join(escaped[:40])
    assert outcomes["refused"] > 300 and outcomes["loaded"] > 0, outcomes
    assert not built, f"real models were built while reading: {built}"
    assert elapsed < TIME_LIMIT_S, f"the fuzz took {elapsed:.0f} s ({timings})"
