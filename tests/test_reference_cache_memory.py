"""The reference-pass cache under ComfyUI's memory management: in system memory, emptied by
ComfyUI's own unload (what "Unload models" and POST /free run) and gone with the model,
bounded by the loader's input and the machine's memory, its settings built once."""

import gc
import logging

import pytest
import torch

from model_helpers import run_sampler

pytestmark = pytest.mark.host


def _cache(model):
    from comfyui_flashface.flashface_core.injection.wrappers import reference_cache

    return reference_cache(model)


def _filled(model, inputs):
    """``model`` after a sampling run, with its cache holding that run's reference passes."""
    run_sampler(model, inputs, seed=1, steps=2)
    assert _cache(model).nbytes > 0
    return model


def test_comfyuis_unload_all_models_empties_the_cache(flashface, inputs):
    import comfy.model_management

    from comfyui_flashface.flashface_core.speed.reference_cache import held_bytes

    _filled(flashface, inputs)
    assert held_bytes() >= _cache(flashface).nbytes > 0
    assert all(t.device.type == "cpu" for group in _cache(flashface)._groups
               for pairs in group.features.values() for pair in pairs.values() for t in pair)
    comfy.model_management.unload_all_models()  # POST /free and "Unload models" (main.py's prompt_worker)
    assert _cache(flashface).nbytes == 0 and _cache(flashface).timesteps == 0
    assert held_bytes() == 0
    first = run_sampler(flashface, inputs, seed=1, steps=2)  # loads again, fills again, same result
    assert _cache(flashface).nbytes > 0
    assert torch.equal(run_sampler(flashface, inputs, seed=1, steps=2), first)


def test_swapping_clones_and_dropping_a_clone_keep_the_cache(flashface, inputs):
    """ComfyUI detaches without unpatching when it loads another clone of a loaded model and when
    a clone is collected: the model stays loaded, so the cache stays."""
    import comfy.model_management

    _filled(flashface, inputs)
    kept = _cache(flashface).nbytes
    clone = flashface.clone()
    comfy.model_management.load_models_gpu([clone])
    comfy.model_management.load_models_gpu([flashface])
    del clone
    gc.collect()
    assert _cache(flashface).nbytes == kept


def test_the_cache_goes_with_the_model(golden, inputs):
    """A MODEL the node cache drops takes its cache along (ComfyUI's cleanup_models drops its record)."""
    import comfy.model_management

    from comfyui_flashface.flashface_core.loader import load_flashface
    from comfyui_flashface.flashface_core.speed.reference_cache import held_bytes

    comfy.model_management.unload_all_models()
    model = _filled(load_flashface(golden.checkpoint, "fp32"), inputs)
    assert held_bytes() == _cache(model).nbytes > 0
    del model
    gc.collect()
    comfy.model_management.cleanup_models()
    assert held_bytes() == 0


def test_the_loader_input_bounds_or_turns_off_the_cache(golden, inputs):
    from comfyui_flashface.flashface_core.loader import load_flashface

    assert _cache(load_flashface(golden.checkpoint, "fp32", 512)).limit_mb == 512
    off = load_flashface(golden.checkpoint, "fp32", 0)
    assert _cache(off) is None
    run_sampler(off, inputs, seed=1, steps=2)
    for bad in (-1, 2.5, "2048", True):
        with pytest.raises(ValueError, match="reference_cache_mb must be a whole number of megabytes"):
            load_flashface(golden.checkpoint, "fp32", bad)


def test_the_bound_is_capped_at_a_quarter_of_the_machines_memory(monkeypatch, caplog):
    import comfy.model_management

    from comfyui_flashface.flashface_core.speed.reference_cache import MB, ReferenceCache

    asked = []
    monkeypatch.setattr(comfy.model_management, "get_total_memory", lambda dev=None, torch_total_too=False: asked.append(dev) or 8192 * MB)
    with caplog.at_level(logging.INFO):
        assert ReferenceCache(2048).limit_mb == 2048
        assert ReferenceCache(4096).limit_mb == 2048
    assert asked == [torch.device("cpu")] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "FlashFace: the reference-pass cache is capped at 2048 MB (a quarter of this machine's memory) instead of "
        "the 4096 MB asked."]


def test_speed_settings_are_built_once_and_read_no_environment(flashface, inputs, monkeypatch, caplog):
    from comfyui_flashface.flashface_core.contract import get_speed

    assert get_speed({}) is get_speed({})
    monkeypatch.setenv("FLASHFACE_REFERENCE_CACHE_MB", "lots")
    with caplog.at_level(logging.WARNING):
        run_sampler(flashface, inputs, seed=2, steps=2)
    assert not [r for r in caplog.records if "FLASHFACE_REFERENCE_CACHE_MB" in r.getMessage()]
