"""Time a FlashFace sampling step against the plain SD1.5 step, in one run.

    python -m flashface_core.benchmark [--size 512] [--refs 4] [--repeats 3] [--dtype fp16]

Builds the real SD1.5-sized FlashFace architecture with random weights (no download) and
times, on ComfyUI's device, one sampler step each of: the plain SD1.5 U-Net on
[positive, negative] (no FlashFace patches), FlashFace before reference guidance starts
(2 conditions + the reference pass) and after (3 conditions + the reference pass). Prints
seconds per step and the ratio to the plain step.
"""

import argparse
import json
import sys
import time


def _sd15_unet_config(model_channels: int) -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 5, "out_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--refs", type=int, default=4, help="number of reference faces")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None, help="weights (default: ComfyUI's choice)")
    parser.add_argument("--model-channels", type=int, default=320, help="U-Net width (320 is SD1.5)")
    args = parser.parse_args(argv)

    from .comfy_host import import_comfyui

    import_comfyui()
    import comfy.model_management
    import comfy.model_patcher
    import torch

    from .golden import evaluate_conditions
    from .model import WEIGHT_DTYPES, FlashFaceConfig, reference_attention
    from .apply import apply_flashface
    from .references import FlashFaceReferences

    device = comfy.model_management.get_torch_device()
    config = FlashFaceConfig(_sd15_unet_config(args.model_channels))
    dtype = WEIGHT_DTYPES[args.dtype] if args.dtype else comfy.model_management.unet_dtype(model_params=2_000_000_000)
    config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(dtype, device))
    model = config.get_model({})
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    offload = comfy.model_management.unet_offload_device()
    plain = comfy.model_patcher.ModelPatcher(model, device, offload)
    flashface = plain.clone()
    reference_attention.install(flashface)

    latent = args.size // 8
    x = torch.randn(1, 4, latent, latent)
    context = [torch.randn(1, 77, 768), torch.randn(1, 77, 768)]
    mask = torch.zeros(latent, latent)
    refs = FlashFaceReferences(torch.randn(args.refs, 4, 28, 28))
    with_refs = apply_flashface(flashface, refs, [[context[1], {}]], 1.2)

    variants = {
        "plain SD1.5 step (2 conditions)": (plain, context, [0.0, 0.0], 900),
        "FlashFace, before reference guidance (2 conditions)": (with_refs, context, [0.85, 0.85], 900),
        "FlashFace, with reference guidance (3 conditions)": (with_refs, [context[0], context[0], context[1]], [1.2, 0.0, 0.0], 500),
    }
    timings = {}
    for name, (patcher, contexts, strengths, timestep) in variants.items():
        evaluate_conditions(patcher, x, timestep, contexts, strengths, mask)  # warm-up, loads the model
        seconds = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            evaluate_conditions(patcher, x, timestep, contexts, strengths, mask)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        timings[name] = min(seconds)
    baseline = timings["plain SD1.5 step (2 conditions)"]
    for name, value in timings.items():
        print(json.dumps({"variant": name, "seconds": round(value, 4), "ratio_to_plain": round(value / baseline, 3),
                          "device": str(device), "dtype": str(dtype), "size": args.size, "refs": args.refs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
