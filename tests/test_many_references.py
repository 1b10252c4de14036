"""Many reference faces: the reference pass in chunks gives the same features, and a count whose
features cannot fit on the device is refused before any U-Net call, with the count and the limit."""

import re

import comfy.model_management
import pytest
import torch

from comfyui_flashface.flashface_core.injection import apply, reference_pass
from comfyui_flashface.flashface_core.model.references import FlashFaceReferences

pytestmark = pytest.mark.host


def test_chunked_reference_pass_gives_the_features_of_one_batch(flashface, golden):
    model = flashface.model
    t = golden.tensors
    latents = model.process_latent_in(t["ref_latents"].float())
    latents = torch.cat([latents, latents.flip(0)[:1] * 0.5])  # 5 faces: chunks of 2, 2 and 1
    references, context = FlashFaceReferences(latents), t["uncond"][:1]
    timestep = torch.tensor(500.0)
    kwargs = dict(device=torch.device("cpu"), dtype=torch.float32, latents=latents)
    whole = reference_pass.compute_reference_features(model, references, context, timestep, chunk=64, **kwargs)
    chunked = reference_pass.compute_reference_features(model, references, context, timestep, chunk=2, **kwargs)
    assert whole.keys() == chunked.keys() == model.reference_attention.keys()
    for name in whole:
        for one, parts in zip(whole[name], chunked[name]):
            assert one.shape == parts.shape and one.shape[1] == 5 * (parts.shape[1] // 5)
            # Float tolerance: a batch of 5 and of 2 sum in other orders (as the golden checks, relative to the norm).
            assert float((parts - one).norm() / one.norm()) < 1e-5, name


def test_reference_pass_runs_in_bounded_chunks(flashface, golden):
    model = flashface.model
    t = golden.tensors
    latents = model.process_latent_in(t["ref_latents"].float()).repeat(5, 1, 1, 1)[:19]
    batches = []
    stem = model.reference_unet.input_blocks[0][0]
    hook = stem.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        features = reference_pass.compute_reference_features(model, FlashFaceReferences(latents), t["uncond"][:1], torch.tensor(500.0),
                                                             torch.device("cpu"), torch.float32, latents)
    finally:
        hook.remove()
    assert batches == [8, 8, 3]
    tokens = {name: k.shape[1] for name, (k, v) in features.items()}
    assert tokens["output_11_0"] == 19 * latents.shape[2] * latents.shape[3]


def test_too_many_references_are_refused_before_any_unet_call(flashface, inputs, monkeypatch):
    from model_helpers import run_sampler

    model = flashface.model
    calls = []
    monkeypatch.setattr(model, "apply_model", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError("U-Net ran")))
    latents = inputs["references"].latents
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *a, **k: 50 * 2**20)
    monkeypatch.setattr(comfy.model_management, "current_loaded_models", [])
    many = {**inputs, "references": FlashFaceReferences(latents[:1].repeat(1000, 1, 1, 1))}
    with pytest.raises(ValueError, match=r"FlashFaceSampler: 1000 reference faces .* at most (\d+) faces fit") as error:
        run_sampler(flashface, many)
    assert not calls  # refused before the sampler started
    limit = int(re.search(r"at most (\d+) faces", str(error.value)).group(1))
    per_face = apply.reference_bytes_per_face(model, latents.shape[2], latents.shape[3], 4)
    assert limit == 50 * 2**20 // per_face and 0 < limit < 1000

    from comfyui_flashface.nodes.apply_flashface import ApplyFlashFace

    def apply_node(references):
        return ApplyFlashFace.execute(model=flashface, references=references, negative=inputs["negative"], strength=1.2,
                                      face_x1=0.0, face_y1=0.0, face_x2=0.0, face_y2=0.0).result[0]

    with pytest.raises(ValueError, match=f"ApplyFlashFace: {limit + 1} reference faces"):
        apply_node(FlashFaceReferences(latents[:1].repeat(limit + 1, 1, 1, 1)))
    assert apply_node(FlashFaceReferences(latents[:1].repeat(limit, 1, 1, 1))) is not flashface  # what fits is kept


def test_per_face_memory_follows_the_architecture(flashface):
    """For the tiny model at 28x28 latents: K and V of the 10 layers (the middle block at 4x4, output
    blocks 3-5 at 7x7, 6-8 at 14x14, 9-11 at 28x28), one more copy of the largest and its scores."""
    model = flashface.model
    channels = model.diffusion_model.model_channels
    tokens_and_width = [(16, 4 * channels)] + [(49, 4 * channels)] * 3 + [(196, 2 * channels)] * 3 + [(784, channels)] * 3
    held = sum(2 * n * c * 2 for n, c in tokens_and_width)
    largest = max(2 * n * c * 2 for n, c in tokens_and_width)
    heads = model.reference_attention["output_11_0"].heads
    assert apply.reference_bytes_per_face(model, 28, 28, 2) == held + largest + apply.QUERY_CHUNK * heads * 784 * 4
