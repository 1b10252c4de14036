"""Check this port against golden data from the official FlashFace code.

    python -m flashface_core.verify_golden DIR [DIR ...]

Finds every golden set below each DIR and prints one JSON line per set:
- model sets (flashface_tiny.ckpt, golden.json, golden.safetensors): the
  checkpoint loaded with LoadFlashFace's loader, its outputs reproduced through ComfyUI's
  model with the FlashFace patches, the relative error of each (bar: 1e-4);
- detector sets (retinaface_resnet50_random.pth, golden.json,
  golden.safetensors, the photos): the official detection path per photo, with raw
  head outputs within 1e-4 relative, boxes and landmarks within 0.05 photo pixels, scores
  within 1e-4 and crops within a mean absolute difference of 0.5 (of 255).
Exits 1 if any set fails.
"""

import argparse
import json
import logging
import sys

THRESHOLD = 1e-4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="folders to search for golden sets")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="largest accepted relative error (model sets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from .host import import_comfyui

    import_comfyui()
    import comfy.utils
    import torch

    # The golden data is float32 and the bar 1e-4: no TF32 convolutions (PyTorch's default on NVIDIA GPUs).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    from . import golden_faces, golden_model  # need ComfyUI on sys.path

    comfy.utils.PROGRESS_BAR_ENABLED = False  # one JSON line per set, nothing else on stdout

    sets = golden_model.find_golden_sets(args.dirs)
    detector_sets = golden_faces.find_golden_sets(args.dirs)
    if not sets and not detector_sets:
        print(f"error: no golden sets (folders with {golden_model.SETTINGS} and {golden_model.TENSORS} beside {golden_model.CHECKPOINT} or "
              f"{golden_faces.WEIGHTS}) under {args.dirs}", file=sys.stderr)
        return 1
    failed = False
    for path in sets:
        data = golden_model.GoldenSet.load(path)
        errors = golden_model.check(data)
        ok = all(e <= args.threshold for e in errors.values())
        failed |= not ok
        print(json.dumps({"set": str(path), "ok": ok, "relative_errors": errors}), flush=True)
    for path in detector_sets:
        photos = golden_faces.check(path)
        ok = all(golden_faces.photo_ok(errors) for errors in photos.values())
        failed |= not ok
        print(json.dumps({"set": str(path), "ok": ok, "detector_errors": photos}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
