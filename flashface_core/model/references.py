"""The reference faces as they travel between nodes (socket type ``FLASHFACE_REFERENCES``)."""

from dataclasses import dataclass

import torch

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class FlashFaceReferences:
    """Reference face latents, one per aligned face crop.

    ``latents`` follow ComfyUI's LATENT convention: what ``VAE.encode`` returns, not yet
    multiplied by the SD1.5 scale factor (the model applies ``process_latent_in``). They are
    the distinct faces; ``fill_to`` asks for them to be repeated in order up to that count
    where the model reads them (the official demo fills to 4), so chaining encoders never
    repeats a face before the last one is added.
    """

    latents: torch.Tensor
    fill_to: int = 0

    def __post_init__(self):
        latents = self.latents
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            raise ValueError(
                "FlashFace reference latents must be a [N, 4, H, W] tensor; got "
                f"{type(latents).__name__} {tuple(getattr(latents, 'shape', ()))}."
            )
        if latents.shape[0] == 0:
            raise ValueError("FlashFace needs at least one reference face; the batch is empty.")
        if latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(
                f"FlashFace reference latents must have {LATENT_CHANNELS} channels (SD1.5 VAE), "
                f"got {latents.shape[1]}. Encode the face crops with an SD1.5 VAE."
            )
        if not latents.is_floating_point():
            raise ValueError(f"FlashFace reference latents must be floating point, got {latents.dtype}.")

    def __len__(self):
        return self.latents.shape[0]

    def model_latents(self) -> torch.Tensor:
        """The latents the model reads: the faces cycled in order up to ``fill_to``."""
        count = max(self.fill_to, len(self))
        return self.latents[[i % len(self) for i in range(count)]]

    def __deepcopy__(self, memo):
        # Immutable: model clones share it instead of copying the tensor.
        return self
