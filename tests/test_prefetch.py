"""The prefetched reference pass: a run's schedule in a few batched calls that give what one
pass per step gives, inside ComfyUI's memory estimate, with samplers that evaluate between
sigmas, and the cache matched once per run and filled however the run ends."""

import pytest
import torch
from model_helpers import run_sampler

pytestmark = pytest.mark.host

# float32, relative: the batch a product sees changes its rounding (MKL's small-M products, e.g.
# the time embedding's, take other kernels), as for face chunks (test_many_references.py).
# Measured on this CPU: 2.6e-6 for a layer's features, 1.3e-6 for a 35-step sample.
BAR = 1e-5


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _with_speed(model, **levers):
    from comfyui_flashface.flashface_core.contract import SpeedSettings, set_speed

    patched = model.clone()
    set_speed(patched, SpeedSettings(**levers))
    return patched


@pytest.fixture
def passes(monkeypatch):
    """The timesteps of each reference-pass call, the batch of each reference U-Net batch, and each run's plan."""
    from comfyui_flashface.flashface_core.injection import reference_pass, wrappers

    seen = {"calls": [], "batches": [], "plans": []}
    original_plan = wrappers.planned_timesteps
    monkeypatch.setattr(wrappers, "planned_timesteps", lambda *a: seen["plans"].append(original_plan(*a)) or seen["plans"][-1])
    original_call, original_batch = reference_pass.reference_pass_at, reference_pass._reference_pass

    def call(*args, **kwargs):
        seen["calls"].append(list(args[3]))
        return original_call(*args, **kwargs)

    def batch(model, context, steps, device, dtype, latents):
        seen["batches"].append(latents.shape[0])
        return original_batch(model, context, steps, device, dtype, latents)

    monkeypatch.setattr(reference_pass, "reference_pass_at", call)
    monkeypatch.setattr(reference_pass, "_reference_pass", batch)
    return seen


def _fresh(model):
    from comfyui_flashface.flashface_core.injection.wrappers import reference_cache

    reference_cache(model).clear()
    return model


def _schedule(model, steps, scheduler="trailing"):
    from comfyui_flashface.flashface_core.guidance.schedules import calculate_sigmas
    from comfyui_flashface.flashface_core.injection.run_references import planned_timesteps

    model_sampling = model.get_model_object("model_sampling")
    return list(planned_timesteps(model_sampling, calculate_sigmas(model_sampling, scheduler, steps)))


def test_features_of_stacked_timesteps_equal_a_pass_per_timestep(flashface, golden):
    from comfyui_flashface.flashface_core.injection import reference_pass

    model, t = flashface.model, golden.tensors
    latents = model.process_latent_in(t["ref_latents"].float())
    steps, context = [999.0, 970.0, 500.0, 3.0], t["uncond"][:1]
    with torch.inference_mode():
        stacked = reference_pass.reference_pass_at(model, latents, context, steps, "cpu", torch.float32, batch=3)  # batches split timesteps
        for step, features in zip(steps, stacked):
            alone = reference_pass.reference_pass_at(model, latents, context, [step], "cpu", torch.float32)[0]
            assert features.keys() == alone.keys() == model.reference_attention.keys()
            for name in alone:
                for one, batched in zip(alone[name], features[name]):
                    assert one.shape == batched.shape and relative(batched, one) <= BAR, (step, name)


def test_prefetched_sampling_equals_a_pass_per_step_on_every_golden_set(golden_sets, passes):
    from comfyui_flashface.flashface_core.loader import load_flashface
    from comfyui_flashface.flashface_core.tools.golden_model import GoldenSet, sample_z0

    for path in golden_sets:
        golden = GoldenSet.load(path)
        model = load_flashface(golden.checkpoint, "fp32")
        per_step = sample_z0(golden, _fresh(_with_speed(model, prefetch_reference_pass=False, cache_reference_pass=False)))
        assert all(len(call) == 1 for call in passes["calls"])
        passes["calls"].clear()
        prefetched = sample_z0(golden, _fresh(_with_speed(model, cache_reference_pass=False)))
        steps = golden.settings["settings"]["steps"]
        assert len(passes["calls"]) < steps and max(map(len, passes["calls"])) > 1, path.name
        assert relative(prefetched, per_step) <= BAR, path.name
        assert relative(prefetched, golden.tensors["sample_z0"]) < 1e-5, path.name  # still the official run
        passes["calls"].clear()


def test_a_35_step_first_run_takes_a_handful_of_batched_calls_inside_the_memory_estimate(flashface, inputs, passes):
    latent = torch.zeros(1, 4, 8, 8)
    per_step = run_sampler(_fresh(_with_speed(flashface, prefetch_reference_pass=False)), inputs, steps=35, latent={"samples": latent})
    assert len(passes["calls"]) == 35
    passes["calls"].clear()
    passes["batches"].clear()
    prefetched = run_sampler(_fresh(_with_speed(flashface)), inputs, steps=35, latent={"samples": latent})
    schedule = _schedule(flashface, 35)
    assert len(schedule) == 35 and passes["plans"] == [tuple(schedule)]  # no plan with the prefetch off
    assert [t for call in passes["calls"] for t in call] == schedule  # each timestep once, in the schedule's order
    assert len(passes["calls"]) <= 35 // 2 and len(passes["batches"]) == len(passes["calls"])
    # The budget of a call is ComfyUI's estimate of that call: latent tokens plus twice the
    # reference tokens per condition (2 before reference guidance starts, then 3).
    faces, _, height, width = inputs["references"].model_latents().shape
    for conds in (2, 3):
        allowed = (conds * latent.shape[-2] * latent.shape[-1] + conds * 2 * faces * height * width) // (2 * height * width)
        assert any(batch == faces * (allowed // faces) for batch in passes["batches"]), conds
    assert max(passes["batches"]) <= (3 * 64 + 3 * 2 * faces * height * width) // (2 * height * width)
    assert relative(prefetched, per_step) <= BAR


@pytest.mark.parametrize("sampler_name", ["dpm_2", "heun", "dpmpp_sde"])
def test_samplers_that_evaluate_between_sigmas_compute_those_timesteps_when_asked(flashface, inputs, passes, sampler_name):
    per_step = run_sampler(_fresh(_with_speed(flashface, prefetch_reference_pass=False)), inputs, steps=5, sampler_name=sampler_name,
                           scheduler="karras")
    asked = sorted({t for call in passes["calls"] for t in call})
    passes["calls"].clear()
    prefetched = run_sampler(_fresh(_with_speed(flashface)), inputs, steps=5, sampler_name=sampler_name, scheduler="karras")
    computed = [t for call in passes["calls"] for t in call]
    schedule = passes["plans"][-1]
    assert sorted(set(computed)) == asked and len(computed) == len(asked)  # nothing twice, nothing missing
    assert set(schedule) <= set(computed) and any(len(call) > 1 for call in passes["calls"])
    if sampler_name != "heun":  # heun evaluates only at the schedule's sigmas
        assert set(asked) - set(schedule), "the sampler evaluated no timestep between sigmas"
    assert relative(prefetched, per_step) <= BAR


def test_a_repeat_run_matches_the_cache_key_once_and_runs_no_pass(flashface, inputs, passes, monkeypatch):
    from comfyui_flashface.flashface_core.speed import reference_cache

    first = run_sampler(_fresh(flashface), inputs, steps=12)
    assert passes["calls"]
    passes["calls"].clear()
    matches = []
    original = reference_cache.CacheKey.matches
    monkeypatch.setattr(reference_cache.CacheKey, "matches", lambda self, other: matches.append(1) or original(self, other))
    again = run_sampler(flashface, inputs, steps=12, seed=1)
    assert passes["calls"] == [] and len(matches) == 1
    assert not torch.equal(first, again)


def test_an_interrupted_run_hands_what_it_computed_to_the_cache(flashface, inputs, passes, monkeypatch):
    import comfy.model_management
    import latent_preview

    def interrupting(model, steps, x0_output_dict=None):
        def callback(step, x0, x, total_steps):
            if step == 1:
                raise comfy.model_management.InterruptProcessingException()
        return callback

    original = latent_preview.prepare_callback
    monkeypatch.setattr(latent_preview, "prepare_callback", interrupting)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run_sampler(_fresh(flashface), inputs, steps=12)
    monkeypatch.setattr(latent_preview, "prepare_callback", original)
    before = [t for call in passes["calls"] for t in call]
    assert 1 < len(before) < 12
    passes["calls"].clear()
    run_sampler(flashface, inputs, steps=12)
    after = [t for call in passes["calls"] for t in call]
    assert sorted(before + after) == sorted(_schedule(flashface, 12))  # nothing computed twice


def test_per_call_features_outside_a_sampler_still_fill_the_cache(flashface, golden, passes):
    from comfyui_flashface.flashface_core.tools.golden_model import unet_outputs, with_golden_references

    model = _fresh(with_golden_references(flashface, golden))
    first = unet_outputs(golden, model)
    assert sum(map(len, passes["calls"])) == 2  # t = 900 twice and t = 500: no plan, each timestep when asked
    passes["calls"].clear()
    again = unet_outputs(golden, model)
    assert passes["calls"] == [] and all(torch.equal(first[name], again[name]) for name in first)
