"""Checkpoint reading and key conversion (torch only; no ComfyUI needed)."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from comfyui_flashface.flashface_core.model import checkpoint, key_layout
from comfyui_flashface.flashface_core.model.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def official(golden_sets):
    path = golden_sets[0] / "flashface_tiny.ckpt"
    return path, torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def test_every_official_tensor_is_converted_once_or_dropped_on_purpose(official):
    path, state_dict = official
    converted, report = key_layout.convert_official(state_dict)
    assert set(report.converted) | set(report.dropped) == set(state_dict)
    assert not set(report.converted) & set(report.dropped)
    assert len(set(report.converted.values())) == len(report.converted) == len(converted)
    dropped_roots = {k.split(".")[0] for k in report.dropped}
    assert dropped_roots == {"ref_middle", "encoder", "middle", "decoder"}
    # The aliases really are the main U-Net's tensors, so dropping them loses nothing.
    for key in report.dropped:
        if not key.startswith("ref_middle."):
            assert torch.equal(state_dict[key], state_dict["ori_" + key])


def test_layout_of_converted_keys(official):
    _, state_dict = official
    converted, _ = key_layout.convert_official(state_dict)
    names = {k.split(".")[1] for k in converted if k.startswith("reference_attention.")}
    assert names == {"middle_0_0"} | {f"output_{i}_0" for i in range(3, 12)}
    assert converted["diffusion_model.input_blocks.0.0.weight"].shape[1] == 5
    assert converted["reference_unet.input_blocks.0.0.weight"].shape[1] == 4
    assert converted["diffusion_model.time_embed.0.weight"] is state_dict["time_embedding.0.weight"]
    assert converted["diffusion_model.out.2.weight"] is state_dict["head.2.weight"]
    assert converted["diffusion_model.input_blocks.3.0.op.weight"] is state_dict["ori_encoder.3.weight"]
    assert converted["diffusion_model.output_blocks.5.2.conv.weight"] is state_dict["ori_decoder.5.2.1.weight"]
    assert converted["reference_attention.output_5_0.to_out.0.bias"] is state_dict[
        "ori_decoder.5.1.blocks.0.self_attn.self_attn_first.o.bias"
    ]
    assert not any(k.startswith("reference_unet.middle_block") for k in converted)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("ori_middle.0.layer1.0.weight", "diffusion_model.middle_block.0.in_layers.0.weight"),
        ("ori_middle.1.blocks.0.ffn.0.proj.bias", "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.bias"),
        ("ref_decoder.11.1.conv1.weight", "reference_unet.output_blocks.11.1.proj_in.weight"),
        ("ref_encoder.1.1.blocks.0.cross_attn.o.weight", "reference_unet.input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.weight"),
        ("ori_encoder.4.0.shortcut.weight", "diffusion_model.input_blocks.4.0.skip_connection.weight"),
        ("ori_middle.1.blocks.0.self_attn.self_attn_first.q.weight", "reference_attention.middle_0_0.to_q.weight"),
        ("ref_middle.0.layer1.0.weight", None),
        ("model.diffusion_model.input_blocks.0.0.weight", None),
    ],
)
def test_key_mapping(key, expected):
    assert key_layout.convert_official_key(key) == expected


def test_pack_safetensors_round_trip(official, tmp_path):
    path, state_dict = official
    converted, _ = key_layout.convert_official(state_dict)
    target = tmp_path / "flashface.safetensors"
    save_file({k: v.contiguous() for k, v in converted.items()}, str(target))
    loaded = checkpoint.load_flashface_state_dict(target)
    assert set(loaded) == set(converted)
    assert all(torch.equal(loaded[k], converted[k]) for k in converted)


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_flashface_state_dict(path)
    return str(info.value)


def test_plain_sd15_checkpoint_is_named(tmp_path):
    path = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(path))
    message = _error(path)
    assert "v1-5-pruned.safetensors" in message and "Stable Diffusion checkpoint" in message


def test_lora_is_named(tmp_path):
    path = tmp_path / "face.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(path))
    assert "LoRA" in _error(path)


def test_truncated_files(official, tmp_path):
    path, _ = official
    data = path.read_bytes()
    truncated = tmp_path / "flashface.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(truncated)
    broken = tmp_path / "flashface.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "flashface.safetensors" in _error(broken)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"ori_encoder.0.weight": torch.zeros(1), "x": _Payload()}, path)
    assert "refused" in _error(path)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps(_Payload()))
    assert "legacy.ckpt" in _error(legacy)


def test_main_unet_without_mask_channel_is_refused(official, tmp_path):
    _, state_dict = official
    converted, _ = key_layout.convert_official(state_dict)
    converted["diffusion_model.input_blocks.0.0.weight"] = converted["diffusion_model.input_blocks.0.0.weight"][:, :4]
    path = tmp_path / "four.safetensors"
    save_file({k: v.contiguous() for k, v in converted.items()}, str(path))
    assert "takes 5" in _error(path)


def test_missing_file():
    assert "not found" in _error("/nonexistent/flashface.ckpt")


def test_converter_writes_the_pack_layout(official, tmp_path):
    from safetensors import safe_open

    from comfyui_flashface.flashface_core.tools import converter as convert

    source, state_dict = official
    target = tmp_path / "flashface.safetensors"
    assert convert.main([str(source), str(target), "--dtype", "fp16"]) == 0
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata()["flashface_format"] == key_layout.PACK_FORMAT
        keys = set(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    converted, _ = key_layout.convert_official(state_dict)
    assert keys == set(converted)
    reloaded = checkpoint.load_flashface_state_dict(target)
    assert all(torch.equal(reloaded[k], converted[k].half()) for k in converted)
    # Never overwrites: an existing target, or the source itself.
    before = target.stat().st_mtime_ns
    assert convert.main([str(source), str(target)]) == 2
    assert target.stat().st_mtime_ns == before
    assert convert.main([str(target), str(target)]) == 2


def test_converter_names_a_foreign_file(tmp_path, capsys):
    from comfyui_flashface.flashface_core.tools import converter as convert

    source = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(source))
    assert convert.main([str(source), str(tmp_path / "out.safetensors")]) == 1
    assert "lora.safetensors is a LoRA" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_web_page_saved_as_checkpoint(tmp_path):
    path = tmp_path / "flashface.ckpt"
    path.write_text("<!DOCTYPE html><html><body>Repository not found</body></html>")
    message = _error(path)
    assert "not a torch checkpoint" in message and "download it again" in message
    assert "weights_only" not in message


def test_out_of_memory_while_reading_is_not_called_truncated(official, tmp_path, monkeypatch):
    path, _ = official

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 10485760000 bytes.")

    monkeypatch.setattr(torch, "load", no_memory)
    message = _error(path)
    assert "Out of memory" in message and "fp16" in message and path.name in message
    assert "download" not in message and "truncated" not in message


def _rewrite_second_half(path):
    size = path.stat().st_size
    with path.open("r+b") as f:  # in place, same size: a memory-mapped tensor would see it
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2 - 4096))


@pytest.mark.host
def test_disable_mmap_is_followed(official, tmp_path, monkeypatch):
    """Under ComfyUI's --disable-mmap the tensors are read into memory: rewriting the file
    afterwards (as a download in progress would) does not change them."""
    import comfy.utils

    source, state_dict = official
    expected, _ = key_layout.convert_official(state_dict)
    pickled, packed = tmp_path / "flashface.ckpt", tmp_path / "flashface.safetensors"
    for disabled in (True, False):
        pickled.write_bytes(source.read_bytes())
        save_file({k: v.contiguous() for k, v in expected.items()}, str(packed))
        monkeypatch.setattr(comfy.utils, "DISABLE_MMAP", disabled)
        for path in (pickled, packed):
            loaded = checkpoint.load_flashface_state_dict(path)
            _rewrite_second_half(path)
            unchanged = all(torch.equal(loaded[k], expected[k]) for k in expected)
            assert unchanged is disabled, (path.name, disabled)


def _consistent_file(tmp_path, official, width_scale: int):
    """A few-KB file whose every tensor views one element, shaped like a consistent U-Net
    ``width_scale`` times as wide as the tiny model."""
    _, state_dict = official
    converted, _ = key_layout.convert_official(state_dict)
    base = torch.zeros(1, dtype=torch.float16)
    claimed = {k: base.expand(tuple(d * width_scale if d % 32 == 0 and d not in (768, 0) else d for d in v.shape))
               for k, v in converted.items()}
    path = tmp_path / "huge.ckpt"
    torch.save(claimed, path)
    return path


def refuse_real_models(monkeypatch):
    """Where a file must be refused before any model is built: building one fails the test
    (checking shapes builds on the meta device, which costs no memory and is allowed)."""
    from comfyui_flashface.flashface_core.model import flashface_model

    real = flashface_model.FlashFaceModel.__init__

    def init(self, model_config, device=None):
        if device is None or torch.device(device).type != "meta":
            raise AssertionError(f"a {model_config.unet_config['model_channels']}-channel model was built")
        real(self, model_config, device=device)

    monkeypatch.setattr(flashface_model.FlashFaceModel, "__init__", init)


@pytest.mark.host
def test_a_small_file_cannot_ask_for_an_enormous_model(official, tmp_path, monkeypatch):
    from comfyui_flashface.flashface_core.loader import load_flashface

    refuse_real_models(monkeypatch)
    path = _consistent_file(tmp_path, official, 40)  # 1280 channels: 16 times the official model's weights
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="huge.ckpt: its U-Net would be 1280 channels wide; FlashFace-SD1.5 is 320"):
        load_flashface(path)


@pytest.mark.host
def test_every_tensor_shape_is_checked_before_building(official, tmp_path, monkeypatch):
    """A tensor the configuration keys do not show (a reference-U-Net layer) is checked against
    the model the configuration builds, on the meta device."""
    from comfyui_flashface.flashface_core.loader import load_flashface

    refuse_real_models(monkeypatch)
    _, state_dict = official
    converted, _ = key_layout.convert_official(state_dict)
    key = "reference_unet.output_blocks.4.1.transformer_blocks.0.ff.net.2.weight"
    converted[key] = torch.zeros(converted[key].shape[0], converted[key].shape[1] * 1000, dtype=torch.float16)
    path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in converted.items()}, str(path))
    with pytest.raises(CheckpointError, match=rf"odd.safetensors: the tensor shapes do not fit .*{key}"):
        load_flashface(path)


@pytest.mark.host
def test_out_of_memory_while_building_says_what_to_do(official, monkeypatch):
    from comfyui_flashface.flashface_core.loader import load_flashface
    from comfyui_flashface.flashface_core.model import flashface_model

    def no_memory(self, sd, unet_prefix=""):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes.")

    monkeypatch.setattr(flashface_model.FlashFaceModel, "load_model_weights", no_memory)
    with pytest.raises(CheckpointError, match="Out of memory while building the torch.float16 model from flashface_tiny.ckpt"):
        load_flashface(official[0], "fp16")
