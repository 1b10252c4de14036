"""Check this port against golden data from the official FlashFace code.

    python -m flashface_core.verify_golden DIR [DIR ...]

Finds every golden set below each DIR, loads its checkpoint with LoadFlashFace's loader,
reproduces its outputs through ComfyUI's model with the FlashFace patches, prints one JSON
line per set with the relative error of each output, and exits 1 if any error is above
the bar (1e-4).
"""

import argparse
import json
import logging
import sys

THRESHOLD = 1e-4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="folders to search for golden sets")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="largest accepted relative error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from .comfy_host import import_comfyui

    import_comfyui()
    import comfy.utils

    from . import golden  # needs ComfyUI on sys.path

    comfy.utils.PROGRESS_BAR_ENABLED = False  # one JSON line per set, nothing else on stdout

    sets = golden.find_golden_sets(args.dirs)
    if not sets:
        print(f"no golden sets (folders with {golden.CHECKPOINT}, {golden.SETTINGS}, {golden.TENSORS}) under {args.dirs}", file=sys.stderr)
        return 1
    failed = False
    for path in sets:
        data = golden.GoldenSet.load(path)
        errors = golden.check(data)
        ok = all(e <= args.threshold for e in errors.values())
        failed |= not ok
        print(json.dumps({"set": str(path), "ok": ok, "relative_errors": errors}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
