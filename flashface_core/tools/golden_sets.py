"""Finding golden sets (data from the official code) and measuring against them."""

from pathlib import Path

import torch

SETTINGS = "golden.json"
TENSORS = "golden.safetensors"


def find_golden_sets(roots, weights: str) -> list[Path]:
    """Every folder below ``roots`` holding ``golden.json`` and ``golden.safetensors`` beside ``weights``."""
    found = set()
    for root in map(Path, roots):
        for settings in root.rglob(SETTINGS):
            folder = settings.parent
            if (folder / weights).is_file() and (folder / TENSORS).is_file():
                found.add(folder.resolve())
    return sorted(found)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm())
