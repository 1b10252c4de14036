"""Regional prompts through FlashFace: ComfyUI's own ConditioningSetMask, ConditioningSetArea and
ConditioningCombine, wired as a user's graph wires them ("a bearded man" left, "a woman in red"
right), reach the U-Net through the FlashFace guider exactly as through ComfyUI's CFG guider, and
with two people an area condition crops the people's regions with the latent.

Tiny golden model on 16x16 latents: ConditioningSetArea's smallest area is 64 px, 8 latent pixels."""

import pytest
import torch
from model_helpers import GUIDANCE

pytestmark = pytest.mark.host

SIZE = 128  # pixels; the latent is 16x16
LATENT = (1, 4, SIZE // 8, SIZE // 8)
STEPS = 3
# Never reference guidance and no CFG rescale: the FlashFace guider's prediction is then text CFG.
TEXT_ONLY = {**GUIDANCE, "reference_start": 1.0, "cfg_rescale": 0.0}
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
LEFT_FACE, RIGHT_FACE = (0.1, 0.25, 0.4, 0.75), (0.6, 0.25, 0.9, 0.75)


def _result(output):
    return output[0] if isinstance(output, tuple) else output.result[0]


def prompts(inputs):
    """The scene prompt and two more, one per side (random embeddings as wide and as spread as the golden prompt's)."""
    cond = inputs["positive"][0][0]
    generator = torch.Generator().manual_seed(11)
    left, right = (torch.randn(cond.shape, generator=generator) * cond.std() + cond.mean() for _ in range(2))
    return inputs["positive"], [[left, {}]], [[right, {}]]


def side_masks():
    """Painted left and right masks at image size, soft where they meet (ComfyUI resizes them to the latent)."""
    across = torch.linspace(0.0, 1.0, SIZE)
    left = ((0.6 - across) / 0.2).clamp(0, 1)[None, :].expand(SIZE, SIZE).clone()
    return left, 1 - left


def regional(inputs, how: str):
    """The scene prompt combined with a left and a right prompt, by mask or by area, through ComfyUI's nodes."""
    import nodes

    scene, left, right = prompts(inputs)
    if how == "area":
        set_area = nodes.ConditioningSetArea()
        (left,) = set_area.append(left, SIZE // 2, SIZE, 0, 0, 1.0)
        (right,) = set_area.append(right, SIZE // 2, SIZE, SIZE // 2, 0, 1.0)
    else:
        left_mask, right_mask = side_masks()
        set_mask = nodes.ConditioningSetMask()
        bounds = "mask bounds" if how == "mask bounds" else "default"
        (left,) = set_mask.append(left, left_mask, bounds, 1.0)
        (right,) = set_mask.append(right, right_mask, bounds, 1.0)
    combine = nodes.ConditioningCombine()
    (sides,) = combine.combine(left, right)
    (both,) = combine.combine(scene, sides)
    return both


def on_timesteps(model) -> torch.Tensor:
    """Sigmas of integer U-Net timesteps (999, 666, 333), where the FlashFace guider's x0 is
    ComfyUI's (the trailing schedule's sigmas sit between timesteps at some steps, where the
    guider uses the timestep's own noise level as the official sampler does)."""
    table = model.get_model_object("model_sampling").sigmas
    return torch.cat([table[[999, 666, 333]], table.new_zeros(1)])


def sample(model, guider, seed=3, sigmas=None):
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, Noise_RandomNoise, SamplerCustomAdvanced

    from comfyui_flashface.nodes.sampler import FlashFaceScheduler

    if sigmas is None:
        (sigmas,) = FlashFaceScheduler.execute(model=model, scheduler="trailing", steps=STEPS, denoise=1.0).result
    (sampler,) = KSamplerSelect().get_sampler("euler")
    return _result(SamplerCustomAdvanced().sample(Noise_RandomNoise(seed), guider, sampler, sigmas,
                                                  {"samples": torch.zeros(LATENT)}))["samples"]


def flashface_guider(model, positive, negative, **guidance):
    from comfyui_flashface.nodes.sampler import FlashFaceGuider

    (guider,) = FlashFaceGuider.execute(model=model, positive=positive, negative=negative, **guidance).result
    return guider


def cfg_guider(model, positive, negative, cfg):
    from comfy_extras.nodes_custom_sampler import CFGGuider

    (guider,) = CFGGuider().get_guider(model, positive, negative, cfg)
    return guider


def apply(flashface, references, negative, strength):
    from comfyui_flashface.nodes.apply_flashface import ApplyFlashFace

    (patched,) = ApplyFlashFace.execute(model=flashface, references=references, negative=negative, strength=strength,
                                        face_x1=0.0, face_y1=0.0, face_x2=0.0, face_y2=0.0).result
    return patched


def relative(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


# Reference strength 0 (references read, weighted 0) and 0.85 (the early phase's strength on every row).
@pytest.mark.parametrize("strength", [0.0, 0.85])
@pytest.mark.parametrize("how", ["mask", "mask bounds", "area"])
def test_flashface_guider_passes_regional_prompts_as_comfyui_cfg_does(flashface, inputs, how, strength):
    """Before reference guidance both rows carry the same reference strength, and the FlashFace
    guider's text guidance is CFG: on the same FlashFace MODEL, with masked or area conditions,
    it samples the latent ComfyUI's CFGGuider samples."""
    patched = apply(flashface, inputs["references"], inputs["negative"], strength)
    positive = regional(inputs, how)
    sigmas = on_timesteps(patched)
    guidance = {**TEXT_ONLY, "early_strength": strength}
    ours = sample(patched, flashface_guider(patched, positive, inputs["negative"], **guidance), sigmas=sigmas)
    comfy = sample(patched, cfg_guider(patched, positive, inputs["negative"], TEXT_ONLY["text_guidance"]), sigmas=sigmas)
    assert torch.isfinite(ours).all()
    assert relative(ours, comfy) <= 1e-6, relative(ours, comfy)
    # The regions are in effect: without them the prompt gives another latent.
    plain = sample(patched, flashface_guider(patched, inputs["positive"], inputs["negative"], **guidance), sigmas=sigmas)
    assert relative(ours, plain) > 1e-3


def two_people(inputs, first, second):
    from comfyui_flashface.nodes.people import FlashFacePerson

    people = None
    for references, region, face in ((first, LEFT, LEFT_FACE), (second, RIGHT, RIGHT_FACE)):
        (people,) = FlashFacePerson.execute(references=references, **dict(zip(("region_x1", "region_y1", "region_x2", "region_y2"), region)),
                                            **dict(zip(("face_x1", "face_y1", "face_x2", "face_y2"), face)), strength_scale=1.0,
                                            people=people).result
    return people


@pytest.fixture(scope="module")
def other_references(inputs):
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    latents = inputs["references"].latents
    return FlashFaceReferences(torch.randn(latents.shape, generator=torch.Generator().manual_seed(12)) * latents.std())


def test_two_people_with_area_prompts_crop_the_regions_with_the_latent(flashface, inputs, other_references, monkeypatch):
    """Two people, left and right, prompted left and right with ConditioningSetArea, through the
    FlashFace guider with reference guidance: ComfyUI's calc_cond_batch crops the latent to each
    area, and the people's regions are cropped with it (each cropped row is one person's side);
    the area prompts and the people both change the latent."""
    from comfyui_flashface.flashface_core.injection import wrappers

    seen = []
    real_mix = wrappers.PeopleMix

    def recording_mix(regions, *args):
        seen.append(regions.detach().cpu().clone())
        return real_mix(regions, *args)

    monkeypatch.setattr(wrappers, "PeopleMix", recording_mix)
    guidance = {**GUIDANCE, "reference_start": 0.0}
    people = two_people(inputs, inputs["references"], other_references)
    patched = apply(flashface, people, inputs["negative"], 1.2)
    positive = regional(inputs, "area")
    regional_latent = sample(patched, flashface_guider(patched, positive, inputs["negative"], **guidance))
    assert regional_latent.shape == LATENT and torch.isfinite(regional_latent).all()

    left = torch.zeros(2, 16, 16)
    left[0, :, :8] = 1.0
    full = torch.stack([left[0], 1 - left[0]])  # [person, H, W]: person 1 left, person 2 right
    cropped_rows = []
    for regions in seen:
        assert regions.shape[1] == 2
        if regions.shape[-1] == 16:
            assert all(torch.equal(row, full) for row in regions)
        else:
            assert regions.shape[-2:] == (16, 8)
            cropped_rows += [row for row in regions]
    # Every cropped row reads one side's people: the left area only person 1, the right only person 2.
    sides = {0 if torch.equal(row, full[:, :, :8]) else 1 if torch.equal(row, full[:, :, 8:]) else None for row in cropped_rows}
    assert sides == {0, 1}

    monkeypatch.setattr(wrappers, "PeopleMix", real_mix)
    unmasked = sample(patched, flashface_guider(patched, inputs["positive"], inputs["negative"], **guidance))
    assert relative(regional_latent, unmasked) > 1e-3
    swapped = apply(flashface, two_people(inputs, other_references, inputs["references"]), inputs["negative"], 1.2)
    assert relative(regional_latent, sample(swapped, flashface_guider(swapped, positive, inputs["negative"], **guidance))) > 1e-3


def test_two_people_with_the_same_references_and_area_prompts_are_one_person(flashface, inputs):
    """The issue's identity through area conditions: two people with the same references on
    complementary regions equal one person with them, also where calc_cond_batch crops."""
    from comfyui_flashface.nodes.people import FlashFacePerson

    guidance = {**GUIDANCE, "reference_start": 0.0}
    positive = regional(inputs, "area")
    people = None
    for region in (LEFT, RIGHT):
        (people,) = FlashFacePerson.execute(references=inputs["references"],
                                            **dict(zip(("region_x1", "region_y1", "region_x2", "region_y2"), region)),
                                            face_x1=0.0, face_y1=0.0, face_x2=0.0, face_y2=0.0, strength_scale=1.0,
                                            people=people).result
    both = apply(flashface, people, inputs["negative"], 1.2)
    one = apply(flashface, inputs["references"], inputs["negative"], 1.2)
    two_latent = sample(both, flashface_guider(both, positive, inputs["negative"], **guidance))
    one_latent = sample(one, flashface_guider(one, positive, inputs["negative"], **guidance))
    assert relative(two_latent, one_latent) <= 1e-6, relative(two_latent, one_latent)


@pytest.mark.parametrize("how", ["mask", "area"])
def test_regional_prompts_run_through_the_flashface_sampler_and_ksampler(flashface, inputs, other_references, how):
    """The one-box FlashFace Sampler and stock KSampler on Apply FlashFace take the same regional
    prompts with two people; the FlashFace Sampler gives the guider graph's latent."""
    import nodes
    from model_helpers import run_sampler

    people = two_people(inputs, inputs["references"], other_references)
    positive = regional(inputs, how)
    regional_inputs = {**inputs, "references": people, "positive": positive}
    one_node = run_sampler(flashface, regional_inputs, latent={"samples": torch.zeros(LATENT)}, seed=3, steps=STEPS)
    patched = apply(flashface, people, inputs["negative"], 1.2)
    taken_apart = sample(patched, flashface_guider(patched, positive, inputs["negative"], **GUIDANCE))
    assert relative(one_node, taken_apart) <= 1e-6, relative(one_node, taken_apart)
    (ksampled,) = nodes.KSampler().sample(patched, 3, STEPS, 7.5, "euler", "normal", positive, inputs["negative"],
                                          {"samples": torch.zeros(LATENT)})
    assert ksampled["samples"].shape == LATENT and torch.isfinite(ksampled["samples"]).all()
