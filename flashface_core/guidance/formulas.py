"""FlashFace's disentangled guidance, on noise (eps) predictions.

Before reference guidance starts: out = u + g (y - u).
After:                              out = u + g (y - u) + r (y_ref - y).
Then CFG rescale: out <- out * (phi * std(y) / std(out) + 1 - phi), std per sample over
all latent elements, y being the positive prediction without references.
"""

import torch

LAUNCH_TIMESTEP_SCALE = 1000.0


def launch_timestep(start_fraction: float) -> float:
    """The U-Net timestep at or below which reference guidance runs.

    ``start_fraction`` is the share of the 1000-step schedule already behind: 0.25 is the
    official t = 750, 0 starts it at once, 1 never.
    """
    if start_fraction == 1.0:
        return float("-inf")  # never, not even at the last step's t = 0
    return round(LAUNCH_TIMESTEP_SCALE * (1.0 - start_fraction), 6)


def text_guidance(uncond: torch.Tensor, text: torch.Tensor, text_scale: float) -> torch.Tensor:
    return uncond + text_scale * (text - uncond)


def reference_guidance(uncond: torch.Tensor, text: torch.Tensor, text_and_refs: torch.Tensor, text_scale: float, ref_scale: float) -> torch.Tensor:
    return text_guidance(uncond, text, text_scale) + ref_scale * (text_and_refs - text)


def rescale(guided: torch.Tensor, positive: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023) towards the positive prediction's spread."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (phi * ratio + 1.0 - phi)
