"""The FlashFace model inside ComfyUI: parity with the official code, strengths, dtypes,
isolation between prompts. Needs the ComfyUI host."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HOST, ROOT
from model_helpers import plain_eval, plain_sd15_model

pytestmark = pytest.mark.host



def _with_references(model, golden, strength):
    from comfyui_flashface.flashface_core.tools.golden_model import with_golden_references

    return with_golden_references(model, golden, strength)


def _outputs(model, golden, strengths, timestep=900):
    from comfyui_flashface.flashface_core.tools.golden_model import evaluate_conditions

    t = golden.tensors
    return torch.cat(evaluate_conditions(model, t["x"], timestep, [t["cond"], t["uncond"]], strengths, t["mask"]))


def test_verify_golden_command_passes_on_every_set(golden_sets):
    roots = sorted({str(path.parent) for path in golden_sets})
    result = subprocess.run(
        [sys.executable, "-m", "flashface_core.verify_golden", *roots],
        capture_output=True, text=True, cwd=str(ROOT), env={**os.environ, "COMFYUI_PATH": str(HOST)},
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert {line["set"] for line in lines} == {str(p.resolve()) for p in golden_sets}
    for line in lines:
        assert line["ok"]
        assert set(line["relative_errors"]) >= {"out_3cond_t500", "out_2cond_t900", "out_2cond_t900_strength0"}
        assert max(line["relative_errors"].values()) < 1e-5  # float32 parity is about 1e-6


def test_group_norms_use_official_eps(flashface):
    norms = [m for m in flashface.model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


def test_reference_modules_are_part_of_the_managed_model(flashface):
    keys = flashface.model.state_dict().keys()
    assert any(k.startswith("reference_unet.input_blocks.") for k in keys)
    assert sum(k.startswith("reference_attention.") and k.endswith("to_q.weight") for k in keys) == 10
    # ComfyUI's LoRA key map finds the main U-Net under its usual names, and only it.
    import comfy.lora

    lora_keys = comfy.lora.model_lora_keys_unet(flashface.model, {})
    assert lora_keys and all(v.startswith("diffusion_model.") for v in lora_keys.values() if isinstance(v, str))


def test_not_an_inpainting_model(flashface):
    import comfy.model_base

    assert isinstance(flashface.model, comfy.model_base.BaseModel)
    assert flashface.model.concat_keys == ()
    noise = torch.zeros(2, 4, 8, 8)
    channel = flashface.model.concat_cond(noise=noise, device="cpu")
    assert channel.shape == (2, 1, 8, 8) and not channel.any()


def test_strength_zero_equals_the_no_reference_path(flashface, golden):
    without = _outputs(flashface, golden, [0.0, 0.0])
    with_zero = _outputs(_with_references(flashface, golden, 0.0), golden, [0.0, 0.0])
    assert torch.allclose(without, with_zero, rtol=0, atol=1e-6)
    expected = golden.tensors["out_2cond_t900_strength0"]
    assert float((without - expected).norm() / expected.norm()) < 1e-5
    with_refs = _outputs(_with_references(flashface, golden, 1.0), golden, [1.0, 1.0])
    assert float((with_refs - without).norm() / without.norm()) > 1e-3  # the references matter


def test_per_condition_strength_follows_cond_index(flashface, golden):
    """Swapping which condition gets the references swaps the outputs' reference effect."""
    model = _with_references(flashface, golden, 1.0)
    t = golden.tensors
    from comfyui_flashface.flashface_core.tools.golden_model import evaluate_conditions

    first = evaluate_conditions(model, t["x"], 500, [t["cond"], t["cond"]], [1.2, 0.0], t["mask"])
    second = evaluate_conditions(model, t["x"], 500, [t["cond"], t["cond"]], [0.0, 1.2], t["mask"])
    assert torch.allclose(first[0], second[1], atol=1e-6) and torch.allclose(first[1], second[0], atol=1e-6)
    assert not torch.allclose(first[0], first[1], atol=1e-4)


@pytest.mark.parametrize("weight_dtype, dtype, bar", [("fp16", torch.float16, 1e-2), ("bf16", torch.bfloat16, 6e-2)])
def test_half_precision_weights_stay_close(golden, weight_dtype, dtype, bar, monkeypatch):
    import comfy.model_management

    # Compute in the weights' dtype, as on a GPU (on the CPU ComfyUI would cast to fp32).
    monkeypatch.setattr(comfy.model_management, "unet_manual_cast", lambda *args, **kwargs: None)
    from comfyui_flashface.flashface_core.tools.golden_model import relative_error, unet_outputs, with_golden_references
    from comfyui_flashface.flashface_core.loader import load_flashface

    model = with_golden_references(load_flashface(golden.checkpoint, weight_dtype), golden)
    assert model.model.get_dtype() == dtype and model.model.manual_cast_dtype is None
    assert model.model.reference_attention["middle_0_0"].to_q.weight.dtype == dtype
    assert next(model.model.reference_unet.parameters()).dtype == dtype
    outputs = unet_outputs(golden, model)
    for name, value in outputs.items():
        assert relative_error(value, golden.tensors[name]) < bar, name
    comfy.model_management.unload_all_models()


def test_load_flashface_node_reads_the_model_folder(golden, tmp_path):
    import folder_paths
    from safetensors.torch import save_file

    from comfyui_flashface.flashface_core.model.checkpoint import CheckpointError
    from comfyui_flashface.flashface_core.model.loading import is_flashface_model
    from comfyui_flashface.flashface_core.model_files.folders import FLASHFACE, register_model_folders
    from comfyui_flashface.nodes.loader import LoadFlashFace

    register_model_folders()
    (tmp_path / "flashface_tiny.ckpt").symlink_to(golden.checkpoint)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(tmp_path / "sd15.safetensors"))
    folder_paths.add_model_folder_path(FLASHFACE, str(tmp_path))
    try:
        names = LoadFlashFace.INPUT_TYPES()["required"]["ckpt_name"][1]["options"]
        assert {"flashface_tiny.ckpt", "sd15.safetensors"} <= set(names)
        (model,) = LoadFlashFace.execute(ckpt_name="flashface_tiny.ckpt", weight_dtype="fp32").result
        assert is_flashface_model(model)
        with pytest.raises(CheckpointError, match="sd15.safetensors is a Stable Diffusion checkpoint"):
            LoadFlashFace.execute(ckpt_name="sd15.safetensors", weight_dtype="default")
        with pytest.raises(FileNotFoundError):
            LoadFlashFace.execute(ckpt_name="missing.ckpt", weight_dtype="default")
    finally:
        folder_paths.folder_names_and_paths[FLASHFACE][0].remove(str(tmp_path))




def test_flashface_run_leaves_caller_model_and_other_models_unchanged(flashface, golden):
    plain = plain_sd15_model()
    plain_before = plain_eval(plain)
    options_before = copy.deepcopy(flashface.model_options)
    state_before = {k: v.cpu().clone() for k, v in flashface.model.state_dict().items()}  # wherever ComfyUI keeps them
    flashface_before = _outputs(flashface, golden, [0.0, 0.0])

    patched = _with_references(flashface, golden, 1.2)
    _outputs(patched, golden, [1.2, 0.0])

    assert torch.equal(_outputs(flashface, golden, [0.0, 0.0]), flashface_before)
    assert repr(flashface.model_options) == repr(options_before)
    assert "flashface" not in flashface.model_options["transformer_options"]
    assert all(torch.equal(v.cpu(), state_before[k]) for k, v in flashface.model.state_dict().items())
    assert torch.equal(plain_eval(plain), plain_before)


def test_clones_share_reference_data_instead_of_copying(flashface, golden):
    patched = _with_references(flashface, golden, 1.2)
    clone = patched.clone()
    from comfyui_flashface.flashface_core.contract import SETTINGS_KEY

    ours = patched.model_options["transformer_options"][SETTINGS_KEY]
    theirs = clone.model_options["transformer_options"][SETTINGS_KEY]
    assert theirs is ours and theirs.people[0].references.latents is ours.people[0].references.latents


def test_loading_twice_builds_fresh_models(golden):
    from comfyui_flashface.flashface_core.loader import load_flashface

    first = load_flashface(golden.checkpoint, "fp32")
    with torch.no_grad():
        first.model.reference_attention["middle_0_0"].to_q.weight.add_(1.0)  # a stale model would carry this
    second = load_flashface(golden.checkpoint, "fp32")
    assert second.model is not first.model
    assert not torch.equal(second.model.reference_attention["middle_0_0"].to_q.weight, first.model.reference_attention["middle_0_0"].to_q.weight)
    assert torch.equal(_outputs(second, golden, [0.0, 0.0]), _outputs(load_flashface(golden.checkpoint, "fp32"), golden, [0.0, 0.0]))


def test_reference_latents_must_fit():
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    with pytest.raises(ValueError, match="4 channels"):
        FlashFaceReferences(torch.zeros(2, 16, 28, 28))
    with pytest.raises(ValueError, match="floating point"):
        FlashFaceReferences(torch.zeros(2, 4, 28, 28, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        FlashFaceReferences(torch.zeros(0, 4, 28, 28))


def test_apply_refuses_a_model_that_is_not_flashface(golden):
    from comfyui_flashface.flashface_core.injection.apply import apply_flashface
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    with pytest.raises(ValueError, match="needs the MODEL from LoadFlashFace"):
        apply_flashface(plain_sd15_model(), FlashFaceReferences(torch.zeros(1, 4, 28, 28)), [[golden.tensors["uncond"], {}]], 1.0)


def test_every_reference_attention_block_is_patched_in_each_call(flashface, golden, monkeypatch):
    """The middle block is ("middle", 0): packs that patched ("middle", 1) silently never ran there."""
    from comfyui_flashface.flashface_core.injection import reference_attention

    seen = []

    def recording(original):
        def record(layer, *args):
            seen.append(next(name for name, module in flashface.model.reference_attention.items() if module is layer))
            return original(layer, *args)
        return record

    for term in ("reference_attention_term", "merged_reference_attention_term"):
        monkeypatch.setattr(reference_attention, term, recording(getattr(reference_attention, term)))
    _outputs(_with_references(flashface, golden, 1.0), golden, [1.0, 0.0])  # the merged term
    _outputs(flashface, golden, [0.0, 0.0])  # without references
    assert sorted(seen) == sorted(list(flashface.model.reference_attention.keys()) * 2)


def test_pack_file_with_wrong_shapes_is_named(golden, tmp_path):
    from safetensors.torch import save_file

    from comfyui_flashface.flashface_core.model import checkpoint
    from comfyui_flashface.flashface_core.loader import load_flashface

    state_dict = checkpoint.load_flashface_state_dict(golden.checkpoint)
    key = "reference_attention.output_5_0.to_q.weight"
    state_dict[key] = state_dict[key][:, :64]
    path = tmp_path / "damaged.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    with pytest.raises(checkpoint.CheckpointError, match="shapes do not fit"):
        load_flashface(path)


def test_other_packs_attention_patches_stack_with_flashface(flashface, golden):
    """Patches added after FlashFace's (as another pack would) run too, and FlashFace's still do."""
    calls = []

    def other_pack_patch(out, extra_options):
        calls.append(extra_options["block"])
        return out * 1.01

    patched = _with_references(flashface, golden, 1.0)
    stacked = patched.clone()
    stacked.set_model_attn1_output_patch(other_pack_patch)
    alone = _outputs(patched, golden, [1.0, 0.0])
    together = _outputs(stacked, golden, [1.0, 0.0])
    assert ("middle", 0) in calls and not torch.allclose(alone, together)
    assert patched.model_options["transformer_options"]["patches"]["attn1_output_patch"] == \
        flashface.model_options["transformer_options"]["patches"]["attn1_output_patch"]
