"""The memory a whole FlashFace run takes, under one of ComfyUI's VRAM modes.

    python bench/vram.py [--size 768] [--refs 4] [--steps 4] [--dtype fp16] [--lowvram | --novram]

Builds the SD1.5-sized FlashFace model with random weights (nothing is downloaded), lets
ComfyUI load it as it loads a checkpoint (``load_models_gpu`` through the sampler, in the
VRAM mode asked for), and runs one whole sampling run through the FlashFace sampler at
``--size`` with ``--refs`` references. Prints the weights' size and, on CUDA, the peak memory
PyTorch's allocator held during the run (weights included, so it is what the card must
hold), then one JSON line. On the CPU it prints the process's peak resident memory instead.
Run each mode in its own process: ComfyUI reads the mode once, when it is imported.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=768, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--refs", type=int, default=4, help="reference faces")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (memory does not grow with them); 0: only the weights' size")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="weights")
    parser.add_argument("--channels", type=int, default=320, help="U-Net base channels (smaller only to check the script quickly)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lowvram", action="store_true", help="as ComfyUI's --lowvram: weights streamed to the GPU in parts")
    mode.add_argument("--novram", action="store_true", help="as ComfyUI's --novram")
    args = parser.parse_args(argv)

    from flashface_core.tools.host import import_comfyui

    import_comfyui()
    import comfy.cli_args

    comfy.cli_args.args.lowvram, comfy.cli_args.args.novram = args.lowvram, args.novram
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    import torch
    from speed import PeakMemory, sd15_unet_config

    from flashface_core import contract
    from flashface_core.guidance.sampling import sample
    from flashface_core.injection import wrappers
    from flashface_core.injection.apply import apply_flashface
    from flashface_core.model.flashface_model import FlashFaceConfig
    from flashface_core.model.loading import TORCH_DTYPES
    from flashface_core.model.references import FlashFaceReferences

    comfy.utils.PROGRESS_BAR_ENABLED = False
    device = comfy.model_management.get_torch_device()
    dtype = TORCH_DTYPES[args.dtype]
    config = FlashFaceConfig(sd15_unet_config(args.channels))
    config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(dtype, device))
    model = config.get_model({})
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    flashface = comfy.model_patcher.ModelPatcher(model, device, comfy.model_management.unet_offload_device())
    wrappers.install(flashface)

    generator = torch.Generator().manual_seed(1)
    latent = args.size // 8
    noise = torch.randn(1, 4, latent, latent, generator=generator)
    positive, negative = torch.randn(1, 77, 768, generator=generator), torch.randn(1, 77, 768, generator=generator)
    references = FlashFaceReferences(torch.randn(args.refs, 4, 28, 28, generator=generator))
    patched = apply_flashface(flashface, references, [[negative, {}]], 1.2)
    guidance = contract.GuidanceSettings()
    if args.steps == 0:
        print(json.dumps({"dtype": args.dtype, "channels": args.channels, "weights_mb": round(weights_mb)}))
        return 0
    with torch.inference_mode(), PeakMemory(device, absolute=True) as peak:
        sample(patched, [[positive, {}]], [[negative, {}]], {"samples": torch.zeros_like(noise)}, 0, args.steps, "euler",
               "trailing", 1.0, guidance, noise=noise)
    mode_name = "lowvram" if args.lowvram else "novram" if args.novram else "normal"
    result = {"device": str(device), "vram_mode": mode_name, "comfy_vram_state": comfy.model_management.vram_state.name,
              "dtype": args.dtype, "size": args.size, "refs": args.refs, "steps": args.steps, "channels": args.channels,
              "weights_mb": round(weights_mb), "peak_mb": round(peak.mb),
              "peak_kind": "CUDA allocator peak, weights included" if device.type == "cuda" else "process resident memory peak"}
    print(f"{args.size}x{args.size}, {args.refs} references, {args.dtype}, ComfyUI VRAM mode {mode_name} "
          f"({result['comfy_vram_state']}) on {device}: weights {weights_mb:.0f} MB, peak {peak.mb:.0f} MB ({result['peak_kind']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
