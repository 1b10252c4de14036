"""Several people in one picture: the per-person reference attention against the one-person
path, region weights and their defaults, the cache per person, and bad input. Runs the tiny
golden model on small latents."""

import pytest
import torch
from model_helpers import run_sampler

pytestmark = pytest.mark.host

LATENT16 = {"samples": torch.zeros(1, 4, 16, 16)}
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def _people(*people):
    from comfyui_flashface.flashface_core.people.person import FlashFacePeople

    return FlashFacePeople(tuple(people))


def _person(references, region=None, face_box=None, strength_scale=1.0, region_mask=None):
    from comfyui_flashface.flashface_core.model.face_position import FacePosition
    from comfyui_flashface.flashface_core.people.person import Person
    from comfyui_flashface.flashface_core.people.regions import Region

    area = Region(box=region) if region is not None else Region(mask=region_mask) if region_mask is not None else None
    return Person(references, area, FacePosition(box=face_box) if face_box else None, strength_scale)


def _other_references(inputs):
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    latents = inputs["references"].latents
    return FlashFaceReferences(torch.flip(latents, dims=(-1,)) * 0.7 + 0.1)


def _sample(flashface, inputs, references, **kw):
    return run_sampler(flashface, {**inputs, "references": references}, latent=LATENT16, steps=3, **kw)


def relative(a, b):
    return float((a - b).norm() / b.norm())


def test_one_person_on_the_whole_image_reproduces_the_plain_path_on_every_golden_set(golden_sets):
    """A Person node's whole-image region runs the per-person attention (gathered queries), not
    the plain path: the official sampling run through it equals today's, and so the golden data."""
    from comfyui_flashface.flashface_core.loader import load_flashface
    from comfyui_flashface.flashface_core.model.face_position import FacePosition
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences
    from comfyui_flashface.flashface_core.people.person import Person
    from comfyui_flashface.flashface_core.people.regions import Region
    from comfyui_flashface.flashface_core.tools import golden_model

    for path in golden_sets:
        golden = golden_model.GoldenSet.load(path)
        model = load_flashface(golden.checkpoint, "fp32")
        t = golden.tensors
        references = FlashFaceReferences(model.model.latent_format.process_out(t["ref_latents"]))
        whole = _people(Person(references, Region(box=(0.0, 0.0, 1.0, 1.0)), FacePosition(mask=t["mask"])))
        today = golden_model.sample_z0(golden, model)
        people_z0 = golden_model.sample_z0(golden, model, whole)
        assert relative(people_z0, today) < 1e-6, path
        assert relative(people_z0, t["sample_z0"]) < 1e-5, path


def test_two_people_with_the_same_references_and_complementary_regions_equal_one_person(flashface, inputs):
    refs = inputs["references"]
    one = _sample(flashface, inputs, refs)
    two = _sample(flashface, inputs, _people(_person(refs, LEFT), _person(refs, RIGHT)))
    assert relative(two, one) < 1e-6


def test_a_person_whose_region_is_empty_changes_nothing(flashface, inputs):
    refs, other = inputs["references"], _other_references(inputs)
    alone = _sample(flashface, inputs, _people(_person(refs, LEFT)))
    empty = torch.zeros(16, 16)
    with_empty = _sample(flashface, inputs, _people(_person(refs, LEFT), _person(other, region_mask=empty)))
    assert torch.equal(alone, with_empty)


def test_one_reference_pass_for_several_people_equals_a_pass_per_person(flashface, inputs):
    from comfyui_flashface.flashface_core.injection import reference_pass

    model, context = flashface.model, inputs["negative"][0][0]
    people = [inputs["references"], _other_references(inputs)]
    latents = [reference_pass.reference_latents(model, refs, "cpu", torch.float32) for refs in people]
    timestep, kw = torch.tensor(500.0), dict(device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        (joined,) = reference_pass.people_reference_pass_at(model, latents, context, [float(timestep)], **kw)
        for refs, lat, features in zip(people, latents, joined):
            alone = reference_pass.compute_reference_features(model, refs, context, timestep, latents=lat, **kw)
            for name, (k, v) in alone.items():
                # a batch of 8 faces and of 4 sum in other orders (the chunk test's bound)
                assert relative(features[name][0], k) < 1e-5 and relative(features[name][1], v) < 1e-5, name


def test_the_order_of_the_people_changes_nothing_and_swapping_their_references_does(flashface, inputs):
    refs, other = inputs["references"], _other_references(inputs)
    a = _sample(flashface, inputs, _people(_person(refs, LEFT), _person(other, RIGHT)))
    b = _sample(flashface, inputs, _people(_person(other, RIGHT), _person(refs, LEFT)))
    swapped = _sample(flashface, inputs, _people(_person(other, LEFT), _person(refs, RIGHT)))
    assert relative(b, a) < 1e-6
    assert relative(swapped, a) > 1e-3


def test_default_regions_come_from_the_face_boxes(flashface, inputs):
    """Face boxes and no regions: each person gets the half nearer their face (the faces end 3 latent pixels
    either side of the middle), as explicit halves do."""
    refs, other = inputs["references"], _other_references(inputs)
    by_faces = _sample(flashface, inputs, _people(_person(refs, face_box=(0.1, 0.3, 0.3, 0.5)),
                                                  _person(other, face_box=(0.66, 0.3, 0.86, 0.5))))
    by_regions = _sample(flashface, inputs, _people(_person(refs, LEFT, face_box=(0.1, 0.3, 0.3, 0.5)),
                                                    _person(other, RIGHT, face_box=(0.66, 0.3, 0.86, 0.5))))
    assert relative(by_faces, by_regions) < 1e-6


@pytest.mark.parametrize("merged", [True, False])
def test_at_one_block_every_token_takes_its_own_persons_one_person_output(merged):
    from comfy.ldm.modules.attention import CrossAttention

    from comfyui_flashface.flashface_core.injection.people_attention import PeopleMix, merged_people_attention_term, people_attention_term
    from comfyui_flashface.flashface_core.injection.reference_attention import merged_reference_attention_term, reference_attention_term, row_mix
    from comfyui_flashface.flashface_core.speed.attention_lse import sub_quad_attention_lse

    torch.manual_seed(0)
    layer = CrossAttention(query_dim=32, heads=4, dim_head=8)
    with torch.no_grad():
        for parameter in layer.parameters():  # ComfyUI's layers come uninitialised
            parameter.normal_(0.0, 0.2)
    height, width, rows = 4, 6, 2
    y = torch.randn(rows, height * width, 32)
    refs = [torch.randn(1, 3 * height * width, 32) for _ in range(2)]
    features = [(layer.to_k(r), layer.to_v(r)) for r in refs]
    regions = torch.zeros(rows, 2, height, width)
    regions[:, 0, :, :2] = 1.0  # person 1: the left third; person 2: the right half; the rest: nobody
    regions[:, 1, :, 3:] = 1.0
    lam = [1.2, 0.85]
    mix = PeopleMix(regions, torch.tensor(lam), torch.tensor([1.0, 1.0]))
    with torch.no_grad():
        if merged:
            out = merged_people_attention_term(layer, y, features, mix, (height, width), sub_quad_attention_lse)
        else:
            out = people_attention_term(layer, y, features, mix, (height, width))
        for row in range(rows):
            for person, kv in enumerate(features):
                one = reference_attention_term(layer, y[row:row + 1], kv, row_mix([lam[row]], "cpu", y.dtype),
                                               row_mix([1 - lam[row]], "cpu", y.dtype))
                if merged:
                    one = merged_reference_attention_term(layer, y[row:row + 1], kv, row_mix([lam[row]], "cpu", y.dtype),
                                                          sub_quad_attention_lse)
                tokens = regions[row, person].flatten().nonzero().squeeze(1)
                assert relative(out[row, tokens], one[0, tokens]) < 1e-6, (row, person)
            nobody = (regions[row].sum(0).flatten() == 0).nonzero().squeeze(1)
            plain = reference_attention_term(layer, y[row:row + 1], None, None, row_mix([1.0], "cpu", y.dtype))
            assert relative(out[row, nobody], plain[0, nobody]) < 1e-6


def test_a_repeat_run_with_two_people_runs_no_reference_pass(flashface, inputs, monkeypatch):
    from comfyui_flashface.flashface_core.injection import reference_pass, wrappers

    people = _people(_person(inputs["references"], LEFT), _person(_other_references(inputs), RIGHT))
    wrappers.reference_cache(flashface).clear()
    calls = []
    original = reference_pass.reference_pass_at
    monkeypatch.setattr(reference_pass, "reference_pass_at", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    first = _sample(flashface, inputs, people)
    assert sum(len(timesteps) for timesteps in calls) == 3  # each step's timestep once, both people's faces in each pass
    calls.clear()
    again = _sample(flashface, inputs, people, seed=1)
    assert calls == [] and not torch.equal(first, again)


def test_region_masks_of_another_size_are_resized_as_comfyui_resizes_masks(flashface, inputs):
    refs, other = inputs["references"], _other_references(inputs)
    left = torch.zeros(64, 64)
    left[:, :32] = 1.0
    by_masks = _sample(flashface, inputs, _people(_person(refs, region_mask=left), _person(other, region_mask=1.0 - left)))
    by_boxes = _sample(flashface, inputs, _people(_person(refs, LEFT), _person(other, RIGHT)))
    assert relative(by_masks, by_boxes) < 1e-6


def test_strength_scale_multiplies_the_strength_for_that_person(flashface, inputs):
    """A person at scale 0.5 under strength 1.2 (early 0.85) is plain references at 0.6 (early 0.425)."""
    from model_helpers import GUIDANCE

    from comfyui_flashface.nodes.sampler import FlashFaceSampler

    refs = inputs["references"]
    scaled = _sample(flashface, inputs, _people(_person(refs, strength_scale=0.5)))
    (out,) = FlashFaceSampler.execute(
        model=flashface, references=refs, positive=inputs["positive"], negative=inputs["negative"], latent_image=LATENT16,
        seed=0, steps=3, sampler_name="euler", scheduler="trailing", denoise=1.0, strength=0.6, face_x1=0.0, face_y1=0.0,
        face_x2=0.0, face_y2=0.0, **{**GUIDANCE, "early_strength": 0.425},
    ).result
    assert relative(scaled, out["samples"]) < 1e-6


# Bad input: each refused with a message naming the person, before sampling starts.

def test_region_weights_refuse_what_cannot_give_a_region(inputs):
    from comfyui_flashface.flashface_core.people.regions import region_weights

    refs = inputs["references"]
    with pytest.raises(ValueError, match="Person 2 has no region and no face box"):
        region_weights((_person(refs, face_box=(0.1, 0.1, 0.3, 0.3)), _person(refs)), 1, 8, 8)
    with pytest.raises(ValueError, match="Every person's region is empty"):
        region_weights((_person(refs, region_mask=torch.zeros(8, 8)), _person(refs, region_mask=torch.zeros(8, 8))), 1, 8, 8)
    with pytest.raises(ValueError, match="Person 1's region mask is a batch of 3, but the latent is a batch of 2"):
        region_weights((_person(refs, region_mask=torch.ones(3, 8, 8)), _person(refs, RIGHT)), 2, 8, 8)


def test_region_weights_share_overlaps_and_ties_and_never_sum_above_one(inputs):
    from comfyui_flashface.flashface_core.people.regions import region_weights

    refs = inputs["references"]
    weights = region_weights((_person(refs, (0.0, 0.0, 0.75, 1.0)), _person(refs, (0.25, 0.0, 1.0, 1.0))), 1, 8, 8)
    assert torch.allclose(weights.sum(1), torch.ones(1, 8, 8))
    assert torch.equal(weights[0, 0, :, 3], torch.full((8,), 0.5))
    voronoi = region_weights((_person(refs, face_box=(0.0, 0.0, 0.25, 0.25)), _person(refs, face_box=(0.75, 0.0, 1.0, 0.25))), 1, 8, 8)
    assert torch.equal(voronoi[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(voronoi[0, 1, :, 4:], torch.ones(8, 4))
    assert torch.equal(voronoi.sum(1), torch.ones(1, 8, 8))


def test_person_nodes_refuse_missing_references_and_shared_face_boxes(inputs):
    from comfyui_flashface.nodes.people import FlashFacePerson

    def person(references, people=None, box=(0.1, 0.2, 0.4, 0.5)):
        return FlashFacePerson.execute(references=references, region_x1=0.0, region_y1=0.0, region_x2=0.0, region_y2=0.0,
                                       face_x1=box[0], face_y1=box[1], face_x2=box[2], face_y2=box[3], strength_scale=1.0,
                                       people=people).result[0]

    with pytest.raises(ValueError, match=r"person 1\) has no reference faces"):
        person(None)
    first = person(inputs["references"])
    with pytest.raises(ValueError, match="person 2 has the same face box as person 1"):
        person(inputs["references"], first)
    assert len(person(inputs["references"], first, box=(0.6, 0.2, 0.9, 0.5))) == 2


def test_a_sampler_with_people_refuses_its_own_face_box(flashface, inputs):
    people = _people(_person(inputs["references"], LEFT))
    with pytest.raises(ValueError, match="each FlashFace Person node has its own face box"):
        _sample(flashface, inputs, people, box=(0.1, 0.1, 0.4, 0.4))


def test_too_many_people_for_the_memory_are_refused_with_the_count(flashface, inputs, monkeypatch):
    from comfyui_flashface.flashface_core.injection import apply
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    monkeypatch.setattr(apply, "_device_memory_for_references", lambda device: 10 * 2**20)
    many = FlashFaceReferences(inputs["references"].latents[:1].repeat(40, 1, 1, 1))
    people = _people(*(_person(many, (i / 3, 0.0, (i + 1) / 3, 1.0)) for i in range(3)))
    with pytest.raises(ValueError, match="3 people with 120 reference faces"):
        apply.apply_flashface(flashface, people, inputs["negative"], 1.2)


def test_apply_flashface_with_people_works_in_the_stock_ksampler(flashface, inputs):
    """Two people through Apply FlashFace and KSampler (a batch of 2, so regions meet batched rows)."""
    import nodes

    from comfyui_flashface.nodes.apply_flashface import ApplyFlashFace

    refs, other = inputs["references"], _other_references(inputs)
    latent = {"samples": torch.zeros(2, 4, 16, 16)}
    box = dict(face_x1=0.0, face_y1=0.0, face_x2=0.0, face_y2=0.0)

    def ksampler(references):
        (patched,) = ApplyFlashFace.execute(model=flashface, references=references, negative=inputs["negative"], strength=1.0,
                                            **box).result
        return nodes.KSampler().sample(patched, 1, 3, 7.5, "euler", "normal", inputs["positive"], inputs["negative"], latent)[0]["samples"]

    one = ksampler(refs)
    same = ksampler(_people(_person(refs, LEFT), _person(refs, RIGHT)))
    two = ksampler(_people(_person(refs, LEFT), _person(other, RIGHT)))
    assert relative(same, one) < 1e-6 and relative(two, one) > 1e-3


def test_two_people_give_the_same_image_with_every_speed_lever_off(flashface, inputs):
    """The plain per-row attention path (what runs where the log-sum-exp merge does not) against the merged one."""
    from model_helpers import all_off

    from comfyui_flashface.flashface_core.contract import set_speed

    people = _people(_person(inputs["references"], LEFT), _person(_other_references(inputs), RIGHT))
    slow = flashface.clone()
    set_speed(slow, all_off())
    # float rounding of two orders of summation over 3 steps: about 2e-6 measured
    assert relative(_sample(slow, inputs, people), _sample(flashface, inputs, people)) < 1e-5
