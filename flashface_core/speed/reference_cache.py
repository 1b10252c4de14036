"""The reference pass's features, kept with a FlashFace MODEL across runs.

The reference pass depends only on the references, the negative prompt, the U-Net timestep
and the weights, never on the seed, the latent or the positive prompt: a second run with the
same faces reuses it. Entries are grouped by everything but the timestep; a group is
reused only when every part of its key matches. The memory is bounded: other groups are
dropped first (oldest first), then new timesteps are no longer kept (with one log line).
Entries are kept where ComfyUI offloads the model (system memory unless --gpu-only or
--highvram), outside its memory accounting on the GPU, and copied to the device when read.
"""

import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)
MB = 1 << 20


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


@dataclass(frozen=True, eq=False)
class CacheKey:
    """Everything but the timestep that the reference pass reads."""

    latents: torch.Tensor  # the reference latents as the model reads them
    context: torch.Tensor  # the negative prompt's embedding
    weights: object  # the patches (LoRAs) applied to the loaded weights: ModelPatcher.patches_uuid
    dtype: torch.dtype
    device: torch.device

    def matches(self, other: "CacheKey") -> bool:
        return (self.weights == other.weights and self.dtype == other.dtype and self.device == other.device
                and _same_tensor(self.latents, other.latents) and _same_tensor(self.context, other.context))


@dataclass(eq=False)
class _Group:
    key: CacheKey
    features: dict = field(default_factory=dict)  # timestep -> {layer name: (K, V)}
    nbytes: int = 0
    warned: bool = False


def _nbytes(features: dict) -> int:
    return sum(t.nbytes for pair in features.values() for t in pair)


def _moved(features: dict, device: torch.device) -> dict:
    return {name: tuple(t.to(device, non_blocking=True) for t in pair) for name, pair in features.items()}


class ReferenceCache:
    """Shared by every clone of one loaded MODEL; lives as long as that MODEL."""

    def __init__(self):
        self._groups: list[_Group] = []  # least recently used first

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return "ReferenceCache()"

    @property
    def nbytes(self) -> int:
        return sum(group.nbytes for group in self._groups)

    @property
    def timesteps(self) -> int:
        """How many timesteps are kept, all groups together."""
        return sum(len(group.features) for group in self._groups)

    def _group(self, key: CacheKey) -> _Group | None:
        for group in self._groups:
            if group.key.matches(key):
                self._groups.remove(group)
                self._groups.append(group)
                return group
        return None

    def get(self, key: CacheKey, timestep: float) -> dict | None:
        """The features kept for ``key`` at ``timestep``, on ``key.device``."""
        group = self._group(key)
        features = None if group is None else group.features.get(timestep)
        return None if features is None else _moved(features, key.device)

    def put(self, key: CacheKey, timestep: float, features: dict, limit_mb: int, store_device: torch.device):
        group = self._group(key)
        if group is None:
            group = _Group(key)
            self._groups.append(group)
        size, limit = _nbytes(features), limit_mb * MB
        while self.nbytes + size > limit and self._groups[0] is not group:
            self._groups.pop(0)
        if self.nbytes + size > limit:
            if not group.warned:
                group.warned = True
                logger.info(
                    "FlashFace: the reference-pass cache is full (%d MB, %d timesteps kept); other timesteps recompute "
                    "the reference pass. Set FLASHFACE_REFERENCE_CACHE_MB to change the bound.", limit_mb, len(group.features),
                )
            if not group.features:
                self._groups.remove(group)
            return
        group.features[timestep] = {name: tuple(t.to(store_device) for t in pair) for name, pair in features.items()}
        group.nbytes += size

    def clear(self):
        self._groups.clear()
