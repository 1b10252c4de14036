"""Sampling with FlashFace through ComfyUI: the one-box sampler, the guider, stock sampler
nodes, LoRAs, masks, interrupts and bad input. Runs the tiny golden model on small latents."""

import json
import math

import pytest
import torch
from model_helpers import GUIDANCE, LATENT, apply_random_controlnet, lora_file, plain_sd15_model, run_sampler

pytestmark = pytest.mark.host




HALF_ULPS = 16  # float32 ulps: the round trip lands this close to an exact half time (docs/timesteps.md)


def _check_against_official(model_sampling, steps: int, official: list) -> dict:
    """The pack's timesteps for ``steps`` trailing steps against the official ones: equal at
    every time that is not an exact half. At a half the official side is MKL rounding noise
    (docs/timesteps.md), so there the pack must give one of the two neighbours and its float32
    round trip must land within HALF_ULPS ulps of the half. Returns {time: (pack, official)}
    for the halves where the sides differ."""
    from comfyui_flashface.flashface_core.guidance.schedules import calculate_sigmas
    from comfyui_flashface.flashface_core.model.timesteps import official_time, trailing_timesteps

    sigmas = calculate_sigmas(model_sampling, "trailing", steps)
    assert sigmas[-1] == 0
    seen = [int(t) for t in model_sampling.timestep(sigmas[:-1]).tolist()]
    fractional = official_time(model_sampling.log_sigmas, sigmas[:-1])
    assert len(seen) == len(official)
    differ = {}
    for time, pack, theirs, found in zip(trailing_timesteps(steps).tolist(), seen, official, fractional):
        if time % 1 != 0.5:
            assert pack == theirs, (steps, time)
            continue
        assert {pack, theirs} <= {math.floor(time), math.ceil(time)}, (steps, time)
        assert abs(float(found) - time) <= HALF_ULPS * 2.0 ** (math.frexp(time)[1] - 24), (steps, time, float(found))
        if pack != theirs:
            differ[time] = (pack, theirs)
    return differ


def test_trailing_schedule_matches_the_official_timesteps(golden_sets, flashface):
    for path in golden_sets:
        settings = json.loads((path / "golden.json").read_text())
        official = settings["unet_timesteps_seen_in_sampling"]
        differ = _check_against_official(flashface.model.model_sampling, settings["settings"]["steps"], official)
        assert set(differ) <= {686.5}, differ  # the 16-step set's official 687 is the MKL side (docs/timesteps.md)


def test_unet_timesteps_match_the_official_sampler_at_every_step_count(flashface):
    """Steps 1..200 of the trailing schedule, against the official code's own run; the
    timesteps come from the model's sampling object, as the U-Net and the guider get them."""
    from conftest import GOLDEN_STEPS_DIR

    table = GOLDEN_STEPS_DIR / "official_timesteps.json"
    if not table.is_file():
        pytest.skip(f"no {table}")
    official = json.loads(table.read_text())["timesteps"]
    assert len(official) == 200
    differ = {}
    for steps in range(1, 201):
        differ.update(_check_against_official(flashface.model.model_sampling, steps, official[str(steps)]))
    # the official run itself gives other sides at these halves on other MKL code paths
    assert set(differ) <= {36.5, 236.5, 536.5, 661.5, 686.5, 761.5, 836.5, 861.5}, differ


def test_official_timestep_rule_agrees_with_comfyui_on_integer_timesteps(flashface):
    import comfy.model_sampling

    model_sampling = flashface.model.model_sampling
    nearest = comfy.model_sampling.ModelSamplingDiscrete.timestep(model_sampling, model_sampling.sigmas)
    assert model_sampling.timestep(model_sampling.sigmas).tolist() == nearest.float().tolist() == list(range(1000))


def test_batch_of_two_gives_two_different_images(flashface, inputs):
    out = run_sampler(flashface, inputs, latent={"samples": torch.zeros(2, 4, 8, 8)})
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_same_seed_same_result_and_references_matter(flashface, inputs):
    first = run_sampler(flashface, inputs, seed=5)
    assert torch.equal(first, run_sampler(flashface, inputs, seed=5))
    assert not torch.allclose(first, run_sampler(flashface, inputs, seed=5, reference_guidance=0.0, reference_start=1.0))


def test_denoise_below_one_starts_from_the_input(flashface, inputs):
    torch.manual_seed(0)
    source = torch.randn(LATENT)
    light = run_sampler(flashface, inputs, latent={"samples": source}, denoise=0.2, steps=4)
    full = run_sampler(flashface, inputs, latent={"samples": source}, denoise=1.0, steps=4)
    assert (light - source).norm() < (full - source).norm()


def test_noise_mask_keeps_the_unmasked_latent(flashface, inputs):
    torch.manual_seed(1)
    source = torch.randn(LATENT)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    out = run_sampler(flashface, inputs, latent={"samples": source, "noise_mask": mask})
    outside = mask.expand_as(source) == 0
    assert torch.allclose(out[outside], source[outside], atol=1e-5)
    assert not torch.allclose(out[~outside], source[~outside], atol=1e-2)


def test_face_box_and_mask_reach_the_model(flashface, inputs):
    free = run_sampler(flashface, inputs, seed=3)
    boxed = run_sampler(flashface, inputs, seed=3, box=(0.25, 0.25, 0.75, 0.75))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    masked = run_sampler(flashface, inputs, seed=3, face_mask=mask)
    assert not torch.allclose(free, boxed)
    assert torch.allclose(boxed, masked, atol=1e-6)  # the same square, given two ways


def test_interrupt_then_clean_run_equals_fresh_run(flashface, inputs, monkeypatch):
    import comfy.model_management
    import latent_preview

    from comfyui_flashface.flashface_core.contract import RUN_STATE_KEY as RUN_CACHE_KEY

    fresh = run_sampler(flashface, inputs, seed=7, steps=4)
    original = latent_preview.prepare_callback

    def interrupting(model, steps, x0_output_dict=None):
        def callback(step, x0, x, total_steps):
            if step == 1:
                raise comfy.model_management.InterruptProcessingException()
        return callback

    options_before = repr(flashface.model_options)
    monkeypatch.setattr(latent_preview, "prepare_callback", interrupting)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run_sampler(flashface, inputs, seed=7, steps=4)
    monkeypatch.setattr(latent_preview, "prepare_callback", original)
    assert repr(flashface.model_options) == options_before
    assert RUN_CACHE_KEY not in repr(flashface.model_options)
    assert torch.equal(run_sampler(flashface, inputs, seed=7, steps=4), fresh)


def test_previews_and_progress_are_reported_every_step(flashface, inputs, monkeypatch):
    import latent_preview

    steps_seen = []

    def recording(model, steps, x0_output_dict=None):
        def callback(step, x0, x, total_steps):
            steps_seen.append((step, total_steps, tuple(x0.shape)))
        return callback

    monkeypatch.setattr(latent_preview, "prepare_callback", recording)
    run_sampler(flashface, inputs, steps=3)
    assert [s[0] for s in steps_seen] == [0, 1, 2] and all(s[1] == 3 and s[2] == LATENT for s in steps_seen)


def test_reference_pass_runs_once_per_timestep(flashface, inputs, monkeypatch):
    from comfyui_flashface.flashface_core.injection import reference_pass, wrappers

    calls = []
    original = reference_pass.reference_pass_at

    def counting(*args, **kwargs):
        calls.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(reference_pass, "reference_pass_at", counting)
    wrappers.reference_cache(flashface).clear()  # earlier tests' runs would serve these steps
    run_sampler(flashface, inputs, steps=4, latent={"samples": torch.zeros(2, 4, 8, 8)})
    assert sorted(t for timesteps in calls for t in timesteps) == [249.0, 499.0, 749.0, 999.0]


def test_every_comfyui_sampler_runs_a_step(flashface, inputs):
    import comfy.samplers

    for name in comfy.samplers.KSampler.SAMPLERS:
        out = run_sampler(flashface, inputs, steps=1, sampler_name=name, scheduler="simple", reference_start=0.0)
        assert torch.isfinite(out).all(), name


def test_every_scheduler_gives_a_schedule(flashface):
    from comfyui_flashface.flashface_core.guidance.schedules import SCHEDULERS, calculate_sigmas

    for name in SCHEDULERS:
        sigmas = calculate_sigmas(flashface.model.model_sampling, name, 6, 0.5)
        assert len(sigmas) == 7 and sigmas[-1] == 0 and (sigmas[:-1] > 0).all(), name


def test_stock_sampler_nodes_run_with_apply_flashface(flashface, inputs):
    import nodes
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, Noise_RandomNoise, SamplerCustomAdvanced

    from comfyui_flashface.nodes.apply_flashface import ApplyFlashFace
    from comfyui_flashface.nodes.sampler import FlashFaceGuider, FlashFaceScheduler

    (patched,) = ApplyFlashFace.execute(model=flashface, references=inputs["references"], negative=inputs["negative"],
                                        strength=1.0, face_x1=0.3, face_y1=0.2, face_x2=0.6, face_y2=0.5).result
    latent = {"samples": torch.zeros(LATENT)}
    (plain,) = nodes.KSampler().sample(flashface, 1, 3, 7.5, "euler", "normal", inputs["positive"], inputs["negative"], latent)
    (with_refs,) = nodes.KSampler().sample(patched, 1, 3, 7.5, "euler", "normal", inputs["positive"], inputs["negative"], latent)
    (advanced,) = nodes.KSamplerAdvanced().sample(patched, "enable", 1, 3, 7.5, "euler", "normal", inputs["positive"], inputs["negative"], latent, 0, 10000, "disable")
    assert not torch.allclose(plain["samples"], with_refs["samples"])
    assert torch.allclose(advanced["samples"], with_refs["samples"])

    (guider,) = FlashFaceGuider.execute(model=patched, positive=inputs["positive"], negative=inputs["negative"], **GUIDANCE).result
    (sigmas,) = FlashFaceScheduler.execute(model=patched, scheduler="trailing", steps=3, denoise=1.0).result
    (sampler,) = KSamplerSelect().get_sampler("euler")
    result = SamplerCustomAdvanced().sample(Noise_RandomNoise(1), guider, sampler, sigmas, latent)
    samples = result[0]["samples"] if isinstance(result, tuple) else result.result[0]["samples"]
    assert samples.shape == LATENT and torch.isfinite(samples).all()



def test_sd15_lora_through_the_stock_loader(flashface, inputs, tmp_path):
    import folder_paths
    import nodes

    path = lora_file(tmp_path)
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    try:
        before = run_sampler(flashface, inputs, seed=2)
        (with_lora,) = nodes.LoraLoaderModelOnly().load_lora_model_only(flashface, path.name, 1.0)
        patched_keys = set(with_lora.patches)
        assert patched_keys and all(k.startswith("diffusion_model.") for k in patched_keys)
        assert len(patched_keys) == 3
        changed = run_sampler(with_lora, inputs, seed=2)
        assert not torch.allclose(changed, before, atol=1e-4)
        assert torch.equal(run_sampler(flashface, inputs, seed=2), before)
    finally:
        folder_paths.folder_names_and_paths["loras"][0].remove(str(tmp_path))


def test_freeu_stacks_with_flashface(flashface, inputs):
    from comfy_extras.nodes_freelunch import FreeU

    result = FreeU().patch(flashface, 1.3, 1.4, 0.9, 0.2)
    model = result[0] if isinstance(result, tuple) else result.result[0]
    before = run_sampler(flashface, inputs, seed=4)
    stacked = run_sampler(model, inputs, seed=4)
    assert torch.isfinite(stacked).all() and not torch.allclose(stacked, before)


# ---------------------------------------------------------------- bad input

def test_sampler_refuses_a_model_that_is_not_flashface(inputs):

    with pytest.raises(ValueError, match="LoadFlashFace"):
        run_sampler(plain_sd15_model(), inputs)


def test_guider_needs_references(flashface, inputs):
    from comfyui_flashface.nodes.sampler import FlashFaceGuider

    with pytest.raises(ValueError, match="ApplyFlashFace"):
        FlashFaceGuider.execute(model=flashface, positive=inputs["positive"], negative=inputs["negative"], **GUIDANCE)


@pytest.mark.parametrize("start", [-0.1, 1.5])
def test_start_fraction_outside_unit_range(flashface, inputs, start):
    with pytest.raises(ValueError, match="between 0 and 1"):
        run_sampler(flashface, inputs, reference_start=start)


@pytest.mark.parametrize("box", [(0.6, 0.2, 0.3, 0.5), (0.3, 0.5, 0.6, 0.5), (0.3, 0.2, 1.6, 0.5)])
def test_bad_face_boxes(flashface, inputs, box):
    with pytest.raises(ValueError, match="[Ff]ace box"):
        run_sampler(flashface, inputs, box=box)


def test_face_mask_of_another_size_is_resized_to_the_image(flashface, inputs):
    """As ComfyUI's own mask inputs: a mask painted at another size covers the same part of the image."""
    resized = run_sampler(flashface, inputs, seed=5, face_mask=torch.ones(1, 50, 30))
    full = run_sampler(flashface, inputs, seed=5, face_mask=torch.ones(1, 64, 64))
    assert torch.equal(resized, full)


def test_empty_face_mask_says_to_paint_the_face():
    """Load Image hands an empty 64x64 mask over for a photo without a painted mask."""
    from comfyui_flashface.flashface_core.model.face_position import FacePosition

    with pytest.raises(ValueError, match="MaskEditor") as error:
        FacePosition(mask=torch.zeros(1, 64, 64))
    assert "64x64" in str(error.value)


def test_controlnet_through_the_stock_node(flashface, inputs):
    """A randomly initialised ControlNet sized for the tiny model, applied by ControlNetApplyAdvanced."""
    positive, negative = apply_random_controlnet(flashface, inputs["positive"], inputs["negative"])
    before = run_sampler(flashface, inputs, seed=8)
    controlled = run_sampler(flashface, {**inputs, "positive": positive, "negative": negative}, seed=8)
    assert torch.isfinite(controlled).all() and not torch.allclose(controlled, before, atol=1e-4)


def test_other_nodes_cfg_hooks_see_cond_and_uncond_where_they_expect(flashface, inputs, golden):
    """Pre-CFG hooks (APG, TCFG, ...) read conds_out[0] as cond and [1] as uncond."""
    seen = []

    def pre_cfg(args):
        seen.append([c is inputs_conds for c, inputs_conds in zip(args["conds"], [positive, negative, positive])])
        return args["conds_out"]

    import comfy.samplers

    model = flashface.clone()
    model.set_model_sampler_pre_cfg_function(pre_cfg)
    positive = None
    negative = None
    original = comfy.samplers.calc_cond_batch

    def capture(model_, conds, *args):
        nonlocal positive, negative
        positive, negative = conds[0], conds[1]
        return original(model_, conds, *args)

    import unittest.mock

    with unittest.mock.patch.object(comfy.samplers, "calc_cond_batch", capture):
        run_sampler(model, inputs, steps=4, reference_start=0.5)
    assert len(seen) == 4 and all(all(flags) for flags in seen)
    assert [len(flags) for flags in seen] == [2, 2, 3, 3]


def test_reference_start_one_never_starts_reference_guidance(flashface, inputs, monkeypatch):
    from comfyui_flashface.flashface_core.guidance import guider

    counts = []
    original = guider.comfy.samplers.calc_cond_batch

    def counting(model, conds, *args):
        counts.append(len(conds))
        return original(model, conds, *args)

    monkeypatch.setattr(guider.comfy.samplers, "calc_cond_batch", counting)
    run_sampler(flashface, inputs, steps=3, scheduler="karras", reference_start=1.0)
    assert counts == [2, 2, 2]
    counts.clear()
    run_sampler(flashface, inputs, steps=3, scheduler="karras", reference_start=0.0)
    assert counts == [3, 3, 3]


def test_prompt_of_another_model_and_wrong_latent_are_named(flashface, inputs):
    wide = [[torch.zeros(1, 77, 1280), {}]]
    with pytest.raises(ValueError, match="positive conditioning is 1280 wide"):
        run_sampler(flashface, {**inputs, "positive": wide})
    with pytest.raises(ValueError, match="SD1.5 latents"):
        run_sampler(flashface, inputs, latent={"samples": torch.ones(1, 16, 8, 8)})


def test_sampler_custom_advanced_graph_gives_the_flashface_samplers_image(flashface, inputs):
    """The SamplerCustomAdvanced graph (Apply FlashFace + FlashFace Guider + FlashFace Scheduler + euler) is the
    FlashFace Sampler taken apart: the same seed gives the same image, as its Note says."""
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, Noise_RandomNoise, SamplerCustomAdvanced

    from comfyui_flashface.nodes.apply_flashface import ApplyFlashFace
    from comfyui_flashface.nodes.sampler import FlashFaceGuider, FlashFaceScheduler

    box = (0.3, 0.2, 0.6, 0.5)
    one_node = run_sampler(flashface, inputs, seed=4, steps=4, box=box)
    (patched,) = ApplyFlashFace.execute(model=flashface, references=inputs["references"], negative=inputs["negative"],
                                        strength=1.2, **dict(zip(("face_x1", "face_y1", "face_x2", "face_y2"), box))).result
    (guider,) = FlashFaceGuider.execute(model=patched, positive=inputs["positive"], negative=inputs["negative"], **GUIDANCE).result
    (sigmas,) = FlashFaceScheduler.execute(model=patched, scheduler="trailing", steps=4, denoise=1.0).result
    (sampler,) = KSamplerSelect().get_sampler("euler")
    result = SamplerCustomAdvanced().sample(Noise_RandomNoise(4), guider, sampler, sigmas, {"samples": torch.zeros(LATENT)})
    taken_apart = (result[0] if isinstance(result, tuple) else result.result[0])["samples"]
    assert torch.allclose(one_node, taken_apart, atol=1e-5), (one_node - taken_apart).abs().max()
