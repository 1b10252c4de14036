"""The reference faces as they travel between nodes (socket type ``FLASHFACE_REFERENCES``)."""

from dataclasses import dataclass

import torch

LATENT_CHANNELS = 4
DETECTOR_JOIN = " + "  # between the detectors of a chain that used several
CROP_SIZE = 224  # the aligned face crops' side (faces.alignment.CROP_SIZE; kept here so the model layer needs no faces)


@dataclass(frozen=True)
class FlashFaceReferences:
    """Reference face latents, one per aligned face crop.

    ``latents`` follow ComfyUI's LATENT convention: what ``VAE.encode`` returns, not yet
    multiplied by the SD1.5 scale factor (the model applies ``process_latent_in``). They are
    the distinct faces; ``fill_to`` asks for them to be repeated in order up to that count
    where the model reads them (the official demo fills to 4), so chaining encoders never
    repeats a face before the last one is added.

    What made the latents travels with them, so an identity can be saved and re-encoded
    with another VAE (``flashface_core.identities``); all three are optional, so
    ``FlashFaceReferences(latents)`` and ``(latents, fill_to)`` work as before:

    - ``face_crops``: the aligned crops the latents were encoded from, ``[N, 224, 224, 3]``
      floats in 0..1 on the CPU, row i for latent i (None when any row's crop is unknown);
    - ``detector``: the detector menu value that made the crops; a chain of encoders with
      different detectors records them all, in order of first use, joined by ``DETECTOR_JOIN``
      (``detectors()`` splits it again);
    - ``vae_fingerprint``: ``faces.vae_fingerprint.vae_fingerprint`` of the VAE that
      encoded them (None when unknown, e.g. a stand-in VAE; a chain whose VAEs differ
      keeps None, since no one VAE made every row).
    """

    latents: torch.Tensor
    fill_to: int = 0
    face_crops: torch.Tensor | None = None
    detector: str | None = None
    vae_fingerprint: str | None = None

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
        crops = self.face_crops
        if crops is not None:
            wanted = (latents.shape[0], CROP_SIZE, CROP_SIZE, 3)
            if not isinstance(crops, torch.Tensor) or tuple(crops.shape) != wanted or not crops.is_floating_point():
                raise ValueError(
                    f"FlashFace reference face crops must be a float [N, {CROP_SIZE}, {CROP_SIZE}, 3] IMAGE with one crop "
                    f"per latent ({latents.shape[0]}); got {type(crops).__name__} {tuple(getattr(crops, 'shape', ()))}."
                )

    def detectors(self) -> list[str]:
        """The detector menu values that made the crops, in order of first use (empty when unknown)."""
        return self.detector.split(DETECTOR_JOIN) if self.detector else []

    def __len__(self):
        return self.latents.shape[0]

    def model_latents(self) -> torch.Tensor:
        """The latents the model reads: the faces cycled in order up to ``fill_to``."""
        count = max(self.fill_to, len(self))
        return self.latents[[i % len(self) for i in range(count)]]

    def __deepcopy__(self, memo):
        # Immutable: model clones share it instead of copying the tensor.
        return self
