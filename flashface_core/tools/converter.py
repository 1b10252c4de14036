"""Convert the official flashface.ckpt to the pack's .safetensors layout.

    python -m flashface_core.convert flashface.ckpt flashface.safetensors [--dtype fp16|bf16|fp32]

The result loads memory-mapped and safely (no pickle), in ComfyUI key names, and at fp16
is about half the size of an fp32 file. The source is read memory-mapped and converted
tensor by tensor, so two full copies are never held at once.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from . import os_errors

DTYPES = ("fp16", "bf16", "fp32", "keep")


def convert_file(source: Path, target: Path, dtype: str = "fp16") -> int:
    """Write ``target``; return the number of tensors. Never overwrites ``source``."""
    import torch
    from safetensors.torch import save_file

    from ..model import checkpoint, key_layout

    if source.resolve() == target.resolve():
        raise ValueError("The output must be a new file; the source is never overwritten.")
    state_dict = checkpoint.load_flashface_state_dict(source)
    cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    tensors = {}
    for key in list(state_dict):
        tensor = state_dict.pop(key)
        tensors[key] = (tensor.to(cast) if cast is not None and tensor.is_floating_point() else tensor).contiguous()
    metadata = {"format": "pt", "flashface_format": key_layout.PACK_FORMAT, "flashface_format_version": key_layout.PACK_FORMAT_VERSION}
    partial = target.with_name(target.name + ".partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk or Ctrl-C leaves no half-written file
        raise
    return len(tensors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the official flashface.ckpt (or a FlashFace .safetensors)")
    parser.add_argument("target", type=Path, help="the .safetensors file to write (e.g. ComfyUI/models/flashface/flashface.safetensors)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16", help="weight precision to store (default fp16; 'keep' keeps the source's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..model.checkpoint import CheckpointError

    if os.path.lexists(args.target):
        print(f"error: {args.target} exists; choose another name or remove it first.", file=sys.stderr)
        return 2
    try:
        count = convert_file(args.source, args.target, args.dtype)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: Could not convert {args.source} to {args.target}: {os_errors.explain(error, args.target)}",
              file=sys.stderr)
        return 1
    logging.info("wrote %s (%d tensors, %s)", args.target, count, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
