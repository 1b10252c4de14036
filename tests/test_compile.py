"""ComfyUI's own TorchCompileModel on the FlashFace MODEL: it samples on the CPU (inductor, with
this machine's C compiler) with the result of the uncompiled MODEL, the FlashFace patches
inside the compiled U-Net and one graph break per U-Net call (the shared encoder's choice)."""

import shutil

import pytest
from model_helpers import run_sampler

pytestmark = [pytest.mark.host, pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                                   reason="inductor needs a C compiler on the CPU")]

BAR = 1e-5  # float32, relative: inductor fuses and reorders the products' sums


@pytest.fixture
def pytorch_attention(monkeypatch):
    """PyTorch attention, as ComfyUI runs on NVIDIA GPUs (or with --use-pytorch-cross-attention): the
    sub-quadratic attention ComfyUI picks on the CPU asks for free memory at every call, which
    breaks the graph at every attention layer."""
    import comfy.ldm.modules.attention as comfy_attention

    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_pytorch)


def test_torch_compile_model_samples_as_the_uncompiled_model(flashface, inputs, pytorch_attention):
    """Three steps: one before reference guidance starts (two conditions, ComfyUI's own U-Net
    forward) and two after (three conditions, the shared encoder's forward), both compiled."""
    import torch._dynamo
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from torch._dynamo.utils import counters

    from comfyui_flashface.flashface_core.injection.wrappers import reference_cache

    torch._dynamo.reset()
    counters.clear()
    steps, reference_start = 3, 0.25
    try:
        with torch.inference_mode():
            reference_cache(flashface).clear()
            eager = run_sampler(flashface, inputs, steps=steps, reference_start=reference_start)
            (compiled,) = TorchCompileModel.execute(flashface, "inductor").result
            reference_cache(flashface).clear()
            first = run_sampler(compiled, inputs, steps=steps, reference_start=reference_start)  # compiles
            again = run_sampler(compiled, inputs, steps=steps, reference_start=reference_start)  # compiled, cached reference pass
        stats = dict(counters["stats"])
        reasons = list(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    # The whole U-Net, the reference attention in its blocks included, in the compiled graphs.
    assert stats.get("unique_graphs", 0) >= 2 and stats.get("calls_captured", 0) > 1000, stats
    assert float((first - eager).norm() / eager.norm()) < BAR
    assert float((again - eager).norm() / eager.norm()) < BAR
    # Every graph break is the shared encoder's host-side choice (torch.compiler.disable'd).
    assert reasons and all("shared_chunks" in reason for reason in reasons), reasons
    # The compile wrapper joins the pack's APPLY_MODEL wrapper; the pack's DIFFUSION_MODEL wrapper runs inside the compiled U-Net.
    assert set(compiled.wrappers["apply_model"]) == {"flashface", "torch.compile"} and "flashface" in compiled.wrappers["diffusion_model"]
