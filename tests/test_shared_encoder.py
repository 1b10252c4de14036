"""The shared encoder is a copy of ComfyUI's U-Net forward: it must give ComfyUI's result with every
patch kind the pack and ComfyUI use, and step aside for a ComfyUI whose forward reads other names."""

import copy
import logging

import pytest
import torch

pytestmark = pytest.mark.host

BAR = 1e-6


def _every_patch_kind(flashface):
    """transformer_options patches of every kind: emb, input, input-after-skip, middle (in the
    transformer blocks), attention output, and FreeU's output-block patch from ComfyUI's own node."""
    from comfy_extras.nodes_freelunch import FreeU

    (freeu,) = FreeU().patch(flashface, 1.1, 1.2, 0.9, 0.2)
    patches = copy.copy(freeu.model_options["transformer_options"]["patches"])
    patches["emb_patch"] = [lambda emb, channels, options: emb * 1.01]
    patches["input_block_patch"] = [lambda h, options: h + 0.01 * options["block"][1]]
    patches["input_block_patch_after_skip"] = [lambda h, options: h * 0.99]
    patches["middle_patch"] = [lambda x, options: x + 0.001]
    patches["attn1_output_patch"] = [*patches.get("attn1_output_patch", []), lambda out, options: out * 1.001]
    return patches


def _controlnet_residuals(unet, x, t, context):
    """ControlNet-shaped residuals for every input block, the middle block and every output block."""
    shapes = []
    record = {"patches": {"input_block_patch": [lambda h, options: shapes.append(h.shape) or h]}}
    unet._forward(x, t, context, None, None, record)
    generator = torch.Generator().manual_seed(7)
    residual = [torch.randn(shape, generator=generator) * 0.1 for shape in shapes]
    return {"input": residual[::-1], "middle": [torch.randn(shapes[-1], generator=generator) * 0.1],
            "output": [torch.randn(shape, generator=generator) * 0.1 for shape in shapes]}


def test_shared_forward_equals_comfyuis_forward_with_every_patch_kind(flashface):
    from comfyui_flashface.flashface_core.speed import shared_encoder

    unet = flashface.model.diffusion_model
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, 8, generator=generator)[[0, 1, 0]]  # chunks 0 and 2 alike: the encoder is shared
    t = torch.full((3,), 500.0)
    context = torch.randn(2, 77, 768, generator=generator)[[0, 1, 0]]
    control = _controlnet_residuals(unet, x, t, context)
    for row in ("input", "middle"):  # residuals the same on the shared rows, as ControlNet gives them
        control[row] = [c[[0, 1, 0]] for c in control[row]]
    patches = _every_patch_kind(flashface)

    def options():
        return {"patches": patches, "cond_or_uncond": [0, 1, 0], "uuids": ["a", "b", "c"]}

    with torch.no_grad():
        comfy = unet._forward(x, t, context, None, copy.deepcopy(control), options())
        assert shared_encoder.duplicate_chunks(x, t, context, control, 3) == [0, 1, 0]
        shared = shared_encoder._forward_shared(unet, x, t, context, copy.deepcopy(control), options(), [0, 1, 0])
        plain = unet._forward(x, t, context, None, None, {})
    assert not torch.allclose(comfy, plain, atol=1e-3)  # the patches and residuals did act
    assert float((shared - comfy).norm() / comfy.norm()) < BAR


def test_the_copy_is_of_this_comfyuis_forward():
    """A ComfyUI whose U-Net forward reads other names (a new patch point, a new option) fails here, so
    the copy is reviewed instead of drifting; at run time such a ComfyUI gets its own forward."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from comfyui_flashface.flashface_core.speed import shared_encoder

    assert shared_encoder.forward_names(UNetModel._forward) == shared_encoder.FORWARD_NAMES
    assert shared_encoder.copy_matches_comfyui()


def test_another_forward_gets_comfyuis_own_forward_with_one_log_line(flashface, monkeypatch, caplog):
    from comfyui_flashface.flashface_core.speed import shared_encoder

    copies, ran = [], []
    monkeypatch.setattr(shared_encoder, "_forward_shared", lambda *args: copies.append(args) or "the copy")
    unet = flashface.model.diffusion_model
    x = torch.randn(1, 5, 8, 8).repeat(2, 1, 1, 1)
    context = torch.randn(1, 77, 768).repeat(2, 1, 1)

    class Executor:
        class_obj = unet

        def __call__(self, *args, **kwargs):
            ran.append(args)
            return "comfyui's forward"

    def forward():
        options = {"wrappers": flashface.wrappers, "cond_or_uncond": [0, 0]}  # the pack's wrappers, as a run has them
        return shared_encoder.diffusion_model_with_shared_encoder(Executor(), x, torch.full((2,), 500.0), context,
                                                                  transformer_options=options)

    assert forward() == "the copy" and len(copies) == 1  # this ComfyUI: the copy runs
    monkeypatch.setattr(shared_encoder, "FORWARD_NAMES", shared_encoder.FORWARD_NAMES | {"middle_block_patch"})
    shared_encoder.copy_matches_comfyui.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert forward() == forward() == "comfyui's forward"
    finally:
        shared_encoder.copy_matches_comfyui.cache_clear()
    assert len(ran) == 2 and len(copies) == 1
    assert sum("middle_block_patch" in r.getMessage() for r in caplog.records) == 1
