"""The face detail pass: crop then stitch round trips, the face position in the crops, faces matched to
people, bad input, and the one-node path against the two-node graph (tiny golden model, tiny VAE)."""

import numpy as np
import pytest
import torch
from conftest import FACES_DIR
from model_helpers import GUIDANCE, tiny_vae
from PIL import Image

from comfyui_flashface.flashface_core.detail.choices import FaceSelection, NoFaceFound
from comfyui_flashface.flashface_core.detail.crop import CropSettings, cut_crops
from comfyui_flashface.flashface_core.detail.geometry import FaceCrop
from comfyui_flashface.flashface_core.detail.stitch import stitch

CENTERFACE = "centerface (offline)"
HEIGHT, WIDTH = 240, 320
FACE = 40  # pixels: a small face, as in a half-body picture
SIZE = 256
ROUND_TRIP = 1 / 255  # mean absolute difference inside the masks after crop and stitch


def texture(height=HEIGHT, width=WIDTH, batch=1) -> torch.Tensor:
    """A natural picture to cut from: a shared photo resized (its detail is what resampling loses)."""
    with Image.open(FACES_DIR / "man_face" / "2.png") as photo:
        rgb = photo.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    image = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255)[None]
    return image.repeat(batch, 1, 1, 1) if batch > 1 else image


def face_at(x: float, y: float, side: float = FACE, image_index: int = 0, height=HEIGHT, width=WIDTH) -> FaceCrop:
    """The crop of a face box of ``side`` pixels centred at (x, y), with the crop node's defaults."""
    box = (x - side / 2, y - side / 2, x + side / 2, y + side / 2)
    return FaceCrop.around(image_index, height, width, box, 3.0, 1.5, 16 / SIZE)


PLACES = {
    "middle": [(160, 120)], "left border": [(FACE / 2, 120)], "right border": [(WIDTH - FACE / 2, 120)],
    "top border": [(160, FACE / 2)], "bottom border": [(160, HEIGHT - FACE / 2)], "top left corner": [(FACE / 2, FACE / 2)],
    "top right corner": [(WIDTH - FACE / 2, FACE / 2)], "bottom left corner": [(FACE / 2, HEIGHT - FACE / 2)],
    "bottom right corner": [(WIDTH - FACE / 2, HEIGHT - FACE / 2)], "several faces": [(60, 80), (160, 120), (270, 90)],
    "overlapping faces": [(140, 120), (175, 120)],
}


def outside_and_inside(image, result, crops):
    """Pixels of ``result`` outside every crop's mask, against ``image``, and the mean absolute difference inside."""
    touched = torch.zeros(image.shape[:3], dtype=torch.bool)
    for crop in crops:
        rows, cols = crop.in_image()
        touched[crop.image_index, rows, cols] |= crop.image_mask() > 0
    difference = (result - image).abs()
    return difference[~touched], difference[touched].mean()


@pytest.mark.parametrize("place", PLACES)
def test_crop_then_stitch_unchanged_returns_the_original(place):
    image = texture()
    crops = [face_at(x, y) for x, y in PLACES[place]]
    detail = cut_crops(image, crops, SIZE)
    assert detail.images.shape == (len(crops), SIZE, SIZE, 3)
    result = stitch(image, detail.images, detail.stitch)
    outside, inside = outside_and_inside(image, result, crops)
    assert torch.equal(outside, torch.zeros_like(outside))  # exactly the original's pixels
    assert 0 < inside < ROUND_TRIP


@pytest.mark.parametrize("centre", [(20, 48), (20, 20), (76, 76)], ids=["left border", "top left corner", "bottom right corner"])
def test_a_crop_past_the_border_is_padded_with_the_border_not_wrapped(centre):
    """A face at the border of a picture smaller than its crop: the crop runs past the image and is what the
    picture extended by repeating its border pixels gives; its mask is 0 past the border, so nothing from
    there is pasted back."""
    import dataclasses

    import torch.nn.functional as F

    from comfyui_flashface.flashface_core.detail.crop import cut

    image = texture(96, 96)
    crop = face_at(*centre, height=96, width=96)
    assert crop.side == 3 * FACE and (crop.left < 0 or crop.top < 0 or crop.left + crop.side > 96)
    margin = 200
    extended = F.pad(image.movedim(-1, 1), (margin,) * 4, mode="replicate").movedim(1, -1)
    inside_extended = dataclasses.replace(crop, left=crop.left + margin, top=crop.top + margin, height=96 + 2 * margin,
                                          width=96 + 2 * margin)
    assert torch.allclose(cut(image[0], crop, SIZE), cut(extended[0], inside_extended, SIZE), atol=1e-6)
    detail = cut_crops(image, [crop], SIZE)
    scale = SIZE / crop.side
    xs = (torch.arange(SIZE) + 0.5) / scale + crop.left
    ys = (torch.arange(SIZE) + 0.5) / scale + crop.top
    past = ~(((ys >= 0) & (ys < 96))[:, None] & ((xs >= 0) & (xs < 96))[None, :])
    assert past.any() and not detail.masks[0][past].any()
    result = stitch(image, detail.images, detail.stitch)
    outside, inside = outside_and_inside(image, result, [crop])
    assert not outside.any() and inside < ROUND_TRIP


def test_a_face_larger_than_the_crop_size_is_shrunk_to_it():
    image = texture(900, 900)
    crop = face_at(450, 450, side=400, height=900, width=900)
    detail = cut_crops(image, [crop], SIZE)
    assert crop.side == 1200 and detail.images.shape == (1, SIZE, SIZE, 3)  # shrunk 1200 -> 256, never enlarged
    result = stitch(image, detail.images, detail.stitch)
    outside, _ = outside_and_inside(image, result, [crop])
    assert not outside.any()


def test_the_mask_is_zero_on_the_crop_border_and_one_on_the_face():
    crop = face_at(160, 120)
    mask = crop.crop_mask(SIZE)
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    face = crop.face_mask(SIZE).bool()
    assert face.any() and torch.equal(mask[face], torch.ones(int(face.sum())))
    assert ((mask > 0) & (mask < 1)).any()  # feathered


def test_crops_of_a_batch_go_back_into_their_own_image():
    image = texture(batch=3)
    image[1] = image[1].flip(1)
    crops = [face_at(100, 100, image_index=0), face_at(200, 150, image_index=2)]
    detail = cut_crops(image, crops, SIZE)
    changed = stitch(image, torch.ones_like(detail.images), detail.stitch)  # white faces
    assert torch.equal(changed[1], image[1])
    for crop in crops:
        rows, cols = crop.in_image()
        full = crop.image_mask() == 1
        assert torch.equal(changed[crop.image_index, rows, cols][full], torch.ones(int(full.sum()), 3))


def test_stitch_data_of_another_image_is_refused():
    image = texture()
    detail = cut_crops(image, [face_at(160, 120)], SIZE)
    with pytest.raises(ValueError, match=r"made from a batch of 1 320x240 image\(s\), but the image to stitch into is "
                                         r"a batch of 1 240x320"):
        stitch(image.transpose(1, 2), detail.images, detail.stitch)
    with pytest.raises(ValueError, match="cut 1 square crop"):
        stitch(image, detail.images.repeat(2, 1, 1, 1), detail.stitch)
    with pytest.raises(ValueError, match="stitch output of FlashFace Crop Faces"):
        stitch(image, detail.images, {"boxes": []})


@pytest.mark.parametrize("change, message", [
    (dict(crop_size=100), "multiple of 8"), (dict(context_factor=0.5), "at least 1"),
    (dict(feather=200, crop_size=256), "half the crop size"), (dict(detector="yolo"), "Unknown face detector"),
    (dict(face_selection="biggest"), "Unknown face selection"),
])
def test_bad_settings_are_refused_before_a_detector_loads(change, message, monkeypatch):
    from comfyui_flashface.flashface_core.detail import detail_pass
    from comfyui_flashface.flashface_core.faces import detection

    monkeypatch.setattr(detection, "load_detector", lambda name: pytest.fail("a detector was loaded"))
    with pytest.raises(ValueError, match=message):
        detail_pass.crop_for_detail(texture(), CropSettings(**{"detector": CENTERFACE, **change}))


CROP_INPUTS = ["detector", "threshold", "face_selection", "face_index", "min_face_size", "context_factor", "crop_size",
               "mask_grow", "feather", "no_face"]
SCHEMAS = {  # what saved graphs hold: input names in widget order, and the outputs
    "FlashFaceCropFaces": (["image", *CROP_INPUTS, "references"],
                           ["IMAGE", "FLASHFACE_PEOPLE", "MASK", "MASK", "FLASHFACE_DETAIL_STITCH"]),
    "FlashFaceStitchFaces": (["image", "crops", "stitch"], ["IMAGE"]),
    "FlashFaceFaceDetail": (["model", "references", "positive", "negative", "vae", "image", "seed", "steps", "sampler_name",
                             "scheduler", "denoise", "strength", "text_guidance", "reference_guidance", "reference_start",
                             "early_strength", "cfg_rescale", *CROP_INPUTS], ["IMAGE", "IMAGE"]),
}


@pytest.mark.host
@pytest.mark.parametrize("node_id", SCHEMAS)
def test_the_detail_nodes_keep_their_inputs_in_order_with_tooltips(node_id):
    from comfyui_flashface.nodes import detail

    cls = getattr(detail, node_id)
    spec = cls.INPUT_TYPES()
    names = [name for section in ("required", "optional") for name in spec.get(section, {})]
    inputs, outputs = SCHEMAS[node_id]
    assert names == inputs and list(cls.RETURN_TYPES) == outputs
    assert all(options.get("tooltip") for section in spec.values() for _, options in section.values())
    assert all(cls.OUTPUT_TOOLTIPS) and cls.GET_SCHEMA().description
    for name in ("face_selection", "no_face", "detector"):
        if name in inputs:
            assert all(type(value) is str for value in spec["required"][name][1]["options"])


# ---------------------------------------------------------------- real photos and the offline detector

def photo(name: str, longest: int) -> torch.Tensor:
    with Image.open(FACES_DIR / name) as source:
        rgb = source.convert("RGB")
    rgb.thumbnail((longest, longest))
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255)[None]


def half_body(name: str = "man_face/1.png", height=512, width=384, face_height=96, left=150, top=60) -> torch.Tensor:
    """A photo's face pasted small into a larger gray picture, as a half-body picture holds it."""
    canvas = torch.full((1, height, width, 3), 0.5)
    face = photo(name, face_height)
    canvas[:, top:top + face.shape[1], left:left + face.shape[2]] = face
    return canvas


@pytest.fixture(scope="module")
def centerface():
    pytest.importorskip("onnxruntime")
    from comfyui_flashface.flashface_core.faces import detection

    try:
        return detection.load_detector(CENTERFACE)
    except RuntimeError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("name", ["man_face/1.png", "woman_face/2.png", "details_face/1.jpeg", "age/1.png"])
def test_the_crops_put_the_face_at_flashfaces_place_and_scale(centerface, name):
    """The face is found again in its crop where the face position says, at a third of the crop's side (the
    official face box's scale), and the face position the sampler reads is that box within one latent cell."""
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail
    from comfyui_flashface.flashface_core.faces.encoding import detect_faces
    from comfyui_flashface.flashface_core.model.face_position import resize_face_mask

    image = half_body(name, top=160)  # the square around the face fits in the picture: not moved
    detail = crop_for_detail(image, CropSettings(detector=CENTERFACE, crop_size=SIZE, feather=16))
    (crop,) = detail.stitch.crops
    x1, y1, x2, y2 = (v * SIZE for v in crop.face_in_crop())
    assert max(x2 - x1, y2 - y1) == pytest.approx(SIZE / 3, abs=8)  # a third of the crop, to one latent cell
    assert (x1 + x2) / 2 == pytest.approx(SIZE / 2, abs=8) and (y1 + y2) / 2 == pytest.approx(SIZE / 2, abs=8)
    crop_rgb = (detail.images[0].numpy() * 255).round().astype(np.uint8)
    again = max(detect_faces(centerface, crop_rgb, 0.6), key=lambda face: face.area)
    assert again.box == pytest.approx((x1, y1, x2, y2), abs=0.08 * SIZE)
    cells = resize_face_mask(detail.face_masks[0], SIZE // 8, SIZE // 8)[0].nonzero()
    (top, left), (bottom, right) = cells.min(0).values.tolist(), (cells.max(0).values + 1).tolist()
    assert [left, top, right, bottom] == pytest.approx([x1 / 8, y1 / 8, x2 / 8, y2 / 8], abs=1)


def test_face_selection_and_an_image_batch_where_one_image_has_no_face(centerface):
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail

    two = torch.cat([half_body(left=20), torch.full((1, 512, 384, 3), 0.5)])
    two[0, 300:396, 200:] = half_body("woman_face/2.png", face_height=96, left=200, top=300)[0, 300:396, 200:]
    settings = dict(detector=CENTERFACE, crop_size=SIZE, feather=16)
    everyone = crop_for_detail(two, CropSettings(face_selection=FaceSelection.ALL, **settings))
    assert [c.image_index for c in everyone.stitch.crops] == [0, 0]
    assert everyone.stitch.crops[0].face[0] < everyone.stitch.crops[1].face[0]  # left to right
    largest = crop_for_detail(two, CropSettings(**settings))
    assert len(largest.stitch.crops) == 1
    second = crop_for_detail(two, CropSettings(face_selection=FaceSelection.BY_INDEX, face_index=1, **settings))
    assert second.stitch.crops[0] == everyone.stitch.crops[1]
    with pytest.raises(ValueError, match="Image 1 of 2 holds 2 face"):
        crop_for_detail(two, CropSettings(face_selection=FaceSelection.BY_INDEX, face_index=2, **settings))
    none_large = crop_for_detail(two, CropSettings(face_selection=FaceSelection.ALL_ABOVE_SIZE, min_face_size=400, **settings))
    assert not none_large.stitch.crops
    with pytest.raises(ValueError, match=r"Image 2 of 2 \(384x512\) has no face the centerface \(offline\) detector finds"):
        crop_for_detail(two, CropSettings(no_face=NoFaceFound.ERROR, **settings))


def test_an_image_without_a_face_passes_through_unchanged(centerface, caplog):
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail

    blank = torch.full((2, 200, 300, 3), 0.25)
    references = _references(0)
    with caplog.at_level("INFO"):
        detail = crop_for_detail(blank, CropSettings(detector=CENTERFACE, crop_size=SIZE, feather=16), references)
    assert "has no face; it is kept unchanged" in caplog.text
    assert detail.images.shape == (1, SIZE, SIZE, 3) and not detail.masks.any()  # a filler that changes nothing
    (person,) = detail.people.people  # what the sampler after it reads: the references, anywhere
    assert person.references is references and person.face_position is None
    assert stitch(blank, torch.rand(1, SIZE, SIZE, 3), detail.stitch) is blank


def test_image_checks_name_the_detail_input():
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail

    with pytest.raises(ValueError, match=r"Images \(image\) are 40x40 pixels"):
        crop_for_detail(torch.rand(1, 40, 40, 3), CropSettings(detector=CENTERFACE))
    with pytest.raises(ValueError, match=r"Image values \(image\) run from 255 to 255"):
        crop_for_detail(torch.full((1, 80, 80, 3), 255.0), CropSettings(detector=CENTERFACE))


# ---------------------------------------------------------------- people

def _person(references, region=None, face_box=None):
    from comfyui_flashface.flashface_core.model.face_position import FacePosition
    from comfyui_flashface.flashface_core.people.person import Person
    from comfyui_flashface.flashface_core.people.regions import Region

    return Person(references, Region(box=region) if region else None, FacePosition(box=face_box) if face_box else None)


def _references(seed):
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

    return FlashFaceReferences(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)))


def test_each_face_goes_to_the_person_whose_region_holds_it():
    from comfyui_flashface.flashface_core.detail import people

    first, second = _references(0), _references(1)
    left, right = face_at(70, 100), face_at(250, 110)
    by_face_box = (_person(first, face_box=(0.1, 0.3, 0.35, 0.6)), _person(second, face_box=(0.65, 0.3, 0.9, 0.6)))
    assert people.owners(by_face_box, [right, left], 1, HEIGHT, WIDTH) == [1, 0]  # default regions: nearest face box
    by_region = (_person(first, region=(0.5, 0.0, 1.0, 1.0)), _person(second, region=(0.0, 0.0, 0.5, 1.0)))
    assert people.owners(by_region, [left, right], 1, HEIGHT, WIDTH) == [1, 0]
    top_only = (_person(first, region=(0.0, 0.0, 1.0, 0.2)), _person(second, region=(0.0, 0.0, 0.1, 0.1)))
    assert people.owners(top_only, [left, right], 1, HEIGHT, WIDTH) == [None, None]  # in nobody's region


def test_the_crops_people_give_each_crop_only_its_own_persons_references():
    from comfyui_flashface.flashface_core.detail import people
    from comfyui_flashface.flashface_core.model.face_position import resize_face_mask
    from comfyui_flashface.flashface_core.people.regions import people_in_picture

    first, second = _references(0), _references(1)
    crops = [face_at(70, 100), face_at(250, 110), face_at(160, 120)]
    detail = cut_crops(texture(), crops, SIZE)
    placed = people.crop_people((_person(first), _person(second)), [1, 0, 1], detail.face_masks)
    assert [p.references for p in placed.people] == [first, second]
    present, weights, faces = people_in_picture(placed.people, 3, SIZE // 8, SIZE // 8)
    assert torch.equal(weights[:, :, 0, 0], torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(weights.sum(1), torch.ones(3, SIZE // 8, SIZE // 8))
    assert torch.equal(faces.latent_mask(SIZE // 8, SIZE // 8), resize_face_mask(detail.face_masks, SIZE // 8, SIZE // 8))
    alone = people.crop_people((_person(first), _person(second)), [1, 1, 1], detail.face_masks)
    assert len(alone.people) == 1 and alone.people[0].references is second and alone.people[0].region is None


# ---------------------------------------------------------------- sampling (tiny golden model)

DETAIL = dict(detector=CENTERFACE, threshold=0.6, face_selection=FaceSelection.ALL, face_index=0, min_face_size=0,
              context_factor=3.0, crop_size=64, mask_grow=1.5, feather=8, no_face=NoFaceFound.KEEP)
SAMPLING = dict(seed=3, steps=4, sampler_name="euler", scheduler="trailing", strength=1.2, **GUIDANCE)


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(0)


def two_nodes(flashface, references, positive, negative, vae, image, denoise):
    """The two-node graph: Crop Faces, VAEEncode, SetLatentNoiseMask, FlashFace Sampler, VAEDecode, Stitch Faces."""
    import utils.extra_config  # noqa: F401 (ComfyUI's utils package before nodes puts comfy/ on sys.path)
    import nodes as comfy_nodes

    from comfyui_flashface.nodes.detail import FlashFaceCropFaces, FlashFaceStitchFaces
    from comfyui_flashface.nodes.sampler import FlashFaceSampler

    crops, people, _, mask, data = FlashFaceCropFaces.execute(image=image, references=references, **DETAIL).result
    (latent,) = comfy_nodes.VAEEncode().encode(vae, crops)
    (latent,) = comfy_nodes.SetLatentNoiseMask().set_mask(latent, mask)
    (sampled,) = FlashFaceSampler.execute(model=flashface, references=people, positive=positive, negative=negative,
                                          latent_image=latent, denoise=denoise, face_x1=0.0, face_y1=0.0, face_x2=0.0,
                                          face_y2=0.0, **SAMPLING).result
    (decoded,) = comfy_nodes.VAEDecode().decode(vae, sampled)
    return FlashFaceStitchFaces.execute(image=image, crops=decoded, stitch=data).result[0], data


def one_node(flashface, references, positive, negative, vae, image, denoise):
    from comfyui_flashface.nodes.detail import FlashFaceFaceDetail

    return FlashFaceFaceDetail.execute(model=flashface, references=references, positive=positive, negative=negative,
                                       vae=vae, image=image, denoise=denoise, **SAMPLING, **DETAIL).result


@pytest.fixture(scope="module")
def group():
    """Two small faces in one picture."""
    image = half_body(left=20, top=40)
    image[0, 300:396, 200:] = half_body("woman_face/2.png", left=200, top=300)[0, 300:396, 200:]
    return image


@pytest.mark.host
def test_the_one_node_path_gives_the_two_node_graphs_image(flashface, inputs, vae, group, centerface):
    reference = inputs["references"]
    two, data = two_nodes(flashface, reference, inputs["positive"], inputs["negative"], vae, group, 0.6)
    one, crops = one_node(flashface, reference, inputs["positive"], inputs["negative"], vae, group, 0.6)
    assert len(data.crops) == 2 and crops.shape == (2, 64, 64, 3)
    assert torch.equal(one, two)
    outside, inside = outside_and_inside(group, one, data.crops)
    assert not outside.any() and inside > 0.01  # the faces were regenerated, nothing else changed


@pytest.mark.host
def test_with_denoise_zero_only_the_vae_round_trip_is_pasted_inside_the_masks(flashface, inputs, vae, group, centerface):
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail

    out, _ = one_node(flashface, inputs["references"], inputs["positive"], inputs["negative"], vae, group, 0.0)
    detail = crop_for_detail(group, CropSettings(**DETAIL), inputs["references"])
    assert len(detail.stitch.crops) == 2
    assert torch.equal(out, stitch(group, vae.decode(vae.encode(detail.images)), detail.stitch))
    outside, _ = outside_and_inside(group, out, detail.stitch.crops)
    assert not outside.any()


@pytest.mark.host
def test_several_people_regenerate_each_face_with_its_own_references(flashface, inputs, vae, group, centerface):
    """Two people (left and right face boxes): the crops sampled in one call equal each crop sampled alone with
    its own person's references and the same noise."""
    from comfyui_flashface.flashface_core.contract import GuidanceSettings
    from comfyui_flashface.flashface_core.detail.detail_pass import crop_for_detail
    from comfyui_flashface.flashface_core.guidance.sampling import sample
    from comfyui_flashface.flashface_core.injection.apply import apply_flashface
    from comfyui_flashface.flashface_core.model.references import FlashFaceReferences
    from comfyui_flashface.flashface_core.people.person import FlashFacePeople

    first = inputs["references"]
    second = FlashFaceReferences(torch.flip(first.latents, dims=(-1,)) * 0.7 + 0.1)
    people = FlashFacePeople((_person(first, face_box=(0.05, 0.05, 0.3, 0.3)), _person(second, face_box=(0.5, 0.55, 0.8, 0.8))))
    detail = crop_for_detail(group, CropSettings(**DETAIL), people)
    assert [p.references for p in detail.people.people] == [first, second]
    latent = {"samples": vae.encode(detail.images), "noise_mask": detail.masks[:, None]}
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(5))
    guidance = GuidanceSettings(**GUIDANCE)
    args = dict(seed=0, steps=4, sampler_name="euler", scheduler="trailing", denoise=0.6, guidance=guidance)
    together = sample(apply_flashface(flashface, detail.people, inputs["negative"], 1.2), inputs["positive"],
                      inputs["negative"], latent, noise=noise, **args)["samples"]
    for row, references in enumerate((first, second)):
        one = {"samples": latent["samples"][row:row + 1], "noise_mask": latent["noise_mask"][row:row + 1]}
        model = apply_flashface(flashface, references, inputs["negative"], 1.2, face_mask=detail.face_masks[row:row + 1])
        alone = sample(model, inputs["positive"], inputs["negative"], one, noise=noise[row:row + 1], **args)["samples"]
        assert float((together[row] - alone[0]).norm() / alone.norm()) < 1e-5, row
