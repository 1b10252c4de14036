"""The speed levers: each gives the same outputs as the path without it, the cache is
reused only when everything it read is the same, the shared encoder steps aside when the
rows differ, and the reference parts are built and counted like the main U-Net."""

import logging

import pytest
import torch

from model_helpers import all_off, apply_random_controlnet, lora_file, run_sampler

pytestmark = pytest.mark.host

BAR = 1e-5


def _with_speed(model, speed):
    from comfyui_flashface.flashface_core.contract import set_speed

    patched = model.clone()
    set_speed(patched, speed)
    return patched


@pytest.fixture
def calls(monkeypatch):
    """How often each lever's code and the reference pass ran."""
    from comfyui_flashface.flashface_core.injection import reference_attention, reference_pass
    from comfyui_flashface.flashface_core.speed import shared_encoder

    counts = {"reference_pass": 0, "shared_encoder": 0, "merged_attention": 0}

    def counting(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(reference_pass, "reference_pass_at", "reference_pass")
    counting(shared_encoder, "_forward_shared", "shared_encoder")
    counting(reference_attention, "merged_reference_attention_term", "merged_attention")
    return counts


def _fresh_cache(model):
    from comfyui_flashface.flashface_core.injection.wrappers import reference_cache

    reference_cache(model).clear()


LEVERS = {
    "cache_reference_pass": "reference_pass",
    "share_encoder": "shared_encoder",
    "merged_attention": "merged_attention",
}


def _merges(patcher) -> bool:
    """Whether the merged attention runs with ComfyUI's attention on this model's device."""
    from comfyui_flashface.flashface_core.speed.attention_lse import attention_lse_function

    return attention_lse_function(patcher.load_device) is not None


def test_each_lever_on_equals_off_on_the_golden_sets(golden_sets, calls):
    from comfyui_flashface.flashface_core.contract import SpeedSettings
    from comfyui_flashface.flashface_core.tools.golden_model import GoldenSet, relative_error, unet_outputs, with_golden_references
    from comfyui_flashface.flashface_core.loader import load_flashface

    for path in golden_sets:
        golden = GoldenSet.load(path)
        model = with_golden_references(load_flashface(golden.checkpoint, "fp32"), golden)
        calls.update(dict.fromkeys(calls, 0))
        off = unet_outputs(golden, _with_speed(model, all_off()))
        assert calls["reference_pass"] == 3 and calls["shared_encoder"] == calls["merged_attention"] == 0
        for lever, counter in LEVERS.items():
            calls.update(dict.fromkeys(calls, 0))
            on = unet_outputs(golden, _with_speed(model, all_off(**{lever: True})))
            for name, value in on.items():
                assert relative_error(value, off[name]) < BAR, (path.name, lever, name)
            if lever == "cache_reference_pass":
                assert calls[counter] == 2  # t = 900 is read twice, t = 500 once: two passes, then hits
            elif lever == "merged_attention":
                assert (calls[counter] > 0) == _merges(model), lever
            else:
                assert calls[counter] > 0, lever
        on = unet_outputs(golden, _with_speed(model, SpeedSettings()))
        for name, value in on.items():
            assert relative_error(value, off[name]) < BAR, (path.name, "all", name)


def test_merged_attention_with_pytorch_attention(flashface, golden, monkeypatch, calls):
    import comfy.ldm.modules.attention as comfy_attention

    from comfyui_flashface.flashface_core.tools.golden_model import relative_error, unet_outputs, with_golden_references

    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_pytorch)
    model = with_golden_references(flashface, golden)
    off = unet_outputs(golden, _with_speed(model, all_off()))
    on = unet_outputs(golden, _with_speed(model, all_off(merged_attention=True)))
    # Merged on the CPU; on a GPU the unmerged path's fused attentions were measured faster.
    assert (calls["merged_attention"] > 0) == (flashface.load_device.type == "cpu")
    for name, value in on.items():
        assert relative_error(value, off[name]) < BAR, name


def test_merged_attention_falls_back_when_the_fused_kernel_refuses(flashface, golden, monkeypatch, caplog, calls):
    """A kernel that refuses its inputs: the chunked path takes over with the same values,
    says so once per kind of input and does not ask the kernel again."""
    import comfy.ldm.modules.attention as comfy_attention

    from comfyui_flashface.flashface_core.speed import attention_lse
    from comfyui_flashface.flashface_core.tools.golden_model import relative_error, unet_outputs, with_golden_references

    if flashface.load_device.type != "cpu":
        pytest.skip("PyTorch attention is merged on the CPU only")
    asked = []

    def refusing_kernel(q, k, v):
        asked.append((q.dtype, q.shape[-1]))
        raise NotImplementedError("Could not run 'aten::_scaled_dot_product_flash_attention_for_cpu' with these arguments")

    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_pytorch)
    monkeypatch.setattr(attention_lse, "_fused_attention_lse", refusing_kernel)
    monkeypatch.setattr(attention_lse, "_refused", set())
    model = with_golden_references(flashface, golden)
    off = unet_outputs(golden, _with_speed(model, all_off()))
    with caplog.at_level(logging.WARNING):
        on = unet_outputs(golden, _with_speed(model, all_off(merged_attention=True)))
    assert calls["merged_attention"] > 0
    for name, value in on.items():
        assert relative_error(value, off[name]) < BAR, name
    refusals = [r for r in caplog.records if "fused attention refused" in r.getMessage()]
    assert len(refusals) == len(attention_lse._refused) == len(asked) >= 1


def test_merged_attention_lets_out_of_memory_through(monkeypatch):
    from comfyui_flashface.flashface_core.speed import attention_lse

    def out_of_memory(q, k, v):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(attention_lse, "_fused_attention_lse", out_of_memory)
    monkeypatch.setattr(attention_lse, "_refused", set())
    q = torch.randn(1, 6, 16)
    with pytest.raises(torch.OutOfMemoryError):
        attention_lse.pytorch_attention_lse(q, q, q, heads=2)
    assert not attention_lse._refused


def test_cached_run_equals_uncached_run(flashface, inputs, calls):
    _fresh_cache(flashface)
    uncached = run_sampler(_with_speed(flashface, all_off()), inputs, seed=3, steps=4)
    cached_model = _with_speed(flashface, all_off(cache_reference_pass=True))
    first = run_sampler(cached_model, inputs, seed=3, steps=4)
    calls["reference_pass"] = 0
    repeat = run_sampler(cached_model, inputs, seed=3, steps=4)
    assert calls["reference_pass"] == 0
    assert torch.equal(first, uncached) and torch.equal(repeat, uncached)
    # What the reference pass never reads: the seed and the positive prompt.
    other_prompt = {**inputs, "positive": [[inputs["positive"][0][0].flip(1), {}]]}
    run_sampler(cached_model, other_prompt, seed=4, steps=4)
    assert calls["reference_pass"] == 0


def test_changing_what_the_reference_pass_reads_recomputes(flashface, inputs, calls, tmp_path):
    import folder_paths
    import nodes

    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    model = _with_speed(flashface, all_off(cache_reference_pass=True))
    _fresh_cache(flashface)
    before = run_sampler(model, inputs, seed=3, steps=4)
    other_faces = {**inputs, "references": FlashFaceReferences(inputs["references"].latents.flip(0))}
    other_negative = {**inputs, "negative": [[inputs["negative"][0][0] * 0.5, {}]]}
    path = lora_file(tmp_path)
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    try:
        (with_lora,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, path.name, 1.0)
    finally:
        folder_paths.folder_names_and_paths["loras"][0].remove(str(tmp_path))
    changes = {
        "references": (model, other_faces, 4),
        "negative text": (model, other_negative, 4),
        "schedule": (model, inputs, 5),
        "weights (a LoRA)": (with_lora, inputs, 4),
    }
    for change, (changed_model, changed_inputs, steps) in changes.items():
        calls["reference_pass"] = 0
        after = run_sampler(changed_model, changed_inputs, seed=3, steps=steps)
        shared_timesteps = 1 if change == "schedule" else 0  # both trailing schedules start at t = 999
        assert calls["reference_pass"] == steps - shared_timesteps, change
        assert not torch.allclose(after, before, atol=1e-4), change
        calls["reference_pass"] = 0
        assert torch.equal(run_sampler(changed_model, changed_inputs, seed=3, steps=steps), after), change
        assert calls["reference_pass"] == 0, change
    calls["reference_pass"] = 0
    assert torch.equal(run_sampler(model, inputs, seed=3, steps=4), before)
    assert calls["reference_pass"] == 0  # the first run's entries outlived the others


CPU = torch.device("cpu")


def _same_tensors(a: dict | None, b: dict) -> bool:
    """Entries read back on the device they were kept on are the kept tensors, not copies."""
    return a is not None and a.keys() == b.keys() and all(x is y for k in a for x, y in zip(a[k], b[k]))


def test_cache_key_covers_dtype_and_device():
    from comfyui_flashface.flashface_core.speed.reference_cache import CacheKey, ReferenceCache

    latents, context = torch.ones(2, 4, 8, 8), torch.ones(1, 77, 8)
    key = CacheKey(latents, context, "weights", torch.float32, torch.device("cpu"))
    cache = ReferenceCache(limit_mb=1)
    features = {"middle_0_0": (torch.ones(1, 4, 8), torch.ones(1, 4, 8))}
    cache.put(key, 500.0, features)
    assert _same_tensors(cache.get(CacheKey(latents.clone(), context.clone(), "weights", torch.float32, CPU), 500.0), features)
    for other in (
        CacheKey(latents, context, "weights", torch.float16, torch.device("cpu")),
        CacheKey(latents, context, "weights", torch.float32, torch.device("meta")),
        CacheKey(latents, context, "other weights", torch.float32, torch.device("cpu")),
        CacheKey(latents * 2, context, "weights", torch.float32, torch.device("cpu")),
        CacheKey(latents, context * 2, "weights", torch.float32, torch.device("cpu")),
    ):
        assert cache.get(other, 500.0) is None
    assert cache.get(key, 499.0) is None


def test_cache_bound_drops_other_faces_first_then_stops_with_a_log_line(caplog):
    from comfyui_flashface.flashface_core.speed.reference_cache import MB, CacheKey, ReferenceCache

    def key(value):
        return CacheKey(torch.full((1, 4, 2, 2), float(value)), torch.zeros(1, 2, 2), "w", torch.float32, torch.device("cpu"))

    half = {"layer": (torch.zeros(MB // 8), torch.zeros(MB // 8))}  # 1 MB
    cache = ReferenceCache(limit_mb=2)
    cache.put(key(1), 1.0, half)
    cache.put(key(2), 1.0, half)
    cache.put(key(2), 2.0, half)
    assert cache.get(key(1), 1.0) is None and _same_tensors(cache.get(key(2), 2.0), half)
    with caplog.at_level(logging.INFO):
        cache.put(key(2), 3.0, half)
        cache.put(key(2), 4.0, half)
    assert cache.get(key(2), 3.0) is None and cache.nbytes == 2 * MB
    assert [r.getMessage() for r in caplog.records].count(
        "FlashFace: the reference-pass cache is full (2 MB, 2 timesteps kept); other timesteps recompute the reference "
        "pass. Raise reference_cache_mb on Load FlashFace Model to keep more."
    ) == 1


def test_duplicate_chunks_need_every_encoder_input_equal():
    from comfyui_flashface.flashface_core.speed.shared_encoder import duplicate_chunks

    x = torch.randn(1, 5, 4, 4).repeat(3, 1, 1, 1)
    t = torch.full((3,), 500.0)
    context = torch.randn(2, 77, 8)[[0, 1, 0]]
    assert duplicate_chunks(x, t, context, None, 3) == [0, 1, 0]
    residual = torch.zeros(3, 8, 4, 4)
    assert duplicate_chunks(x, t, context, {"input": [residual, None], "output": [torch.randn(3, 8, 4, 4)]}, 3) == [0, 1, 0]
    residual[2] = 1.0  # an input residual (T2I-Adapter) on one condition only
    assert duplicate_chunks(x, t, context, {"input": [residual]}, 3) is None
    assert duplicate_chunks(x, t, torch.randn(3, 77, 8), None, 3) is None
    shifted = x.clone()
    shifted[2, 4] = 1.0  # another face mask
    assert duplicate_chunks(shifted, t, context, None, 3) is None


def _controlnet(flashface, inputs, positive_only):
    positive, negative = apply_random_controlnet(flashface, inputs["positive"], inputs["negative"])
    return positive if positive_only else (positive, negative)


def test_shared_encoder_with_a_controlnet_on_both_positive_rows(flashface, inputs, calls):
    positive = _controlnet(flashface, inputs, positive_only=True)
    controlled = {**inputs, "positive": positive}
    off = run_sampler(_with_speed(flashface, all_off()), controlled, seed=8, reference_start=0.0)
    on = run_sampler(_with_speed(flashface, all_off(share_encoder=True)), controlled, seed=8, reference_start=0.0)
    assert calls["shared_encoder"] == 3
    assert float((on - off).norm() / off.norm()) < BAR


def test_shared_encoder_falls_back_with_a_controlnet_on_one_condition_only(flashface, golden, inputs, calls):
    from comfyui_flashface.flashface_core.tools.golden_model import evaluate_conditions, with_golden_references

    positive_with_control = _controlnet(flashface, inputs, positive_only=True)
    model = with_golden_references(flashface, golden)
    t = golden.tensors
    contexts = [positive_with_control, t["uncond"], t["cond"]]
    off = evaluate_conditions(_with_speed(model, all_off()), t["x"], 500, contexts, [0.0, 0.0, 1.2], t["mask"])
    on = evaluate_conditions(_with_speed(model, all_off(share_encoder=True)), t["x"], 500, contexts, [0.0, 0.0, 1.2], t["mask"])
    assert calls["shared_encoder"] == 0
    plain = evaluate_conditions(_with_speed(model, all_off()), t["x"], 500, [t["cond"]], [0.0], t["mask"])
    assert not torch.allclose(off[0], plain[0], atol=1e-4)  # the ControlNet did act on the first row
    for a, b in zip(on, off):
        assert torch.equal(a, b)


def test_reference_parts_use_the_operations_the_main_unet_uses(golden):
    import comfy.ops

    from comfyui_flashface.flashface_core.model.checkpoint import load_flashface_state_dict
    from comfyui_flashface.flashface_core.model.flashface_model import FlashFaceConfig
    from comfyui_flashface.flashface_core.model.loading import unet_config_from_state_dict

    config = FlashFaceConfig(unet_config_from_state_dict(load_flashface_state_dict(golden.checkpoint)))
    config.set_inference_dtype(torch.float16, torch.float32)
    config.custom_operations = comfy.ops.manual_cast
    model = config.get_model({})
    for module in (model.diffusion_model.input_blocks[0][0], model.reference_unet.input_blocks[0][0]):
        assert isinstance(module, comfy.ops.manual_cast.Conv2d)
    assert isinstance(model.reference_attention["middle_0_0"].to_q, comfy.ops.manual_cast.Linear)
    assert isinstance(model.diffusion_model.middle_block[1].transformer_blocks[0].attn1.to_q, comfy.ops.manual_cast.Linear)


def test_memory_estimate_counts_the_reference_tokens(flashface, inputs):
    from comfyui_flashface.flashface_core.contract import REFERENCES_KEY

    model = flashface.model
    shape = [2, 4, 64, 64]
    without = model.memory_required(shape, cond_shapes={})
    shapes = model.extra_conds_shapes(**{REFERENCES_KEY: (inputs["references"],)})
    with_references = model.memory_required(shape, cond_shapes={k: [v] for k, v in shapes.items()})
    count, _, height, width = inputs["references"].model_latents().shape
    assert with_references == pytest.approx(without * (1 + 2 * count * height * width / (2 * 64 * 64)))
