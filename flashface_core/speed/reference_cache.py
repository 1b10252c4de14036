"""The reference pass's features, kept with a FlashFace MODEL across runs.

The reference pass depends only on the references, the negative prompt, the U-Net timestep
and the weights, never on the seed, the latent or the positive prompt: a second run with the
same faces reuses it. Entries are grouped by everything but the timestep; a group is
reused only when every part of its key matches. The memory is bounded: other groups are
dropped first (oldest first), then new timesteps are no longer kept (with one log line).

The memory is ComfyUI's to free, like the model's own: entries are kept in system memory
whatever the VRAM mode (never on the GPU, where ComfyUI would not count them; not pinned,
as ComfyUI pins none of its own) and copied to the device when read; the bound, chosen on
the loader, is capped at a quarter of the machine's memory; the loader empties the cache
when ComfyUI unloads the model ("Unload models", POST /free, or room for other models), and
it goes with the MODEL when ComfyUI's node cache drops that.
"""

import logging
import weakref
from dataclasses import dataclass, field

import comfy.model_management
import torch

logger = logging.getLogger(__name__)
MB = 1 << 20
STORE_DEVICE = torch.device("cpu")
MAX_SHARE_OF_MEMORY = 4  # at most 1/4 of the machine's memory
_live_caches = weakref.WeakSet()


def held_bytes() -> int:
    """Bytes of features held by every live reference-pass cache of this process."""
    return sum(cache.nbytes for cache in list(_live_caches))


def capped_mb(asked_mb: int) -> int:
    """``asked_mb``, or a quarter of the machine's memory where that is less (with a log line)."""
    cap = comfy.model_management.get_total_memory(STORE_DEVICE) // (MAX_SHARE_OF_MEMORY * MB)
    if asked_mb > cap:
        logger.info("FlashFace: the reference-pass cache is capped at %d MB (a quarter of this machine's memory) "
                    "instead of the %d MB asked.", cap, asked_mb)
        return cap
    return asked_mb


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


def _stored(t: torch.Tensor) -> torch.Tensor:
    """``t`` in system memory, on its own storage (not a view that keeps a larger batch alive)."""
    t = t.to(STORE_DEVICE)
    return t.clone() if t.untyped_storage().nbytes() > t.nbytes else t


def moved(features: dict, device: torch.device) -> dict:
    """``features`` on ``device`` (the same tensors where they are there already)."""
    return {name: tuple(t.to(device) for t in pair) for name, pair in features.items()}


class ReferenceCache:
    """Shared by every clone of one loaded MODEL; lives as long as that MODEL."""

    def __init__(self, limit_mb: int):
        self.limit_mb = capped_mb(limit_mb)
        self._groups: list[_Group] = []  # least recently used first
        _live_caches.add(self)

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f"ReferenceCache({self.limit_mb})"

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

    def kept(self, key: CacheKey) -> dict:
        """Every timestep kept for ``key``, {timestep: features in system memory}, to read only:
        a run matches its key once instead of at every step."""
        group = self._group(key)
        return {} if group is None else group.features

    def get(self, key: CacheKey, timestep: float) -> dict | None:
        """The features kept for ``key`` at ``timestep``, on ``key.device``."""
        features = self.kept(key).get(timestep)
        return None if features is None else moved(features, key.device)

    def put(self, key: CacheKey, timestep: float, features: dict):
        """Keep ``features`` at ``timestep`` (a copy in system memory) if they fit the bound."""
        self.put_all(key, {timestep: features})

    def put_all(self, key: CacheKey, by_timestep: dict):
        """Keep ``by_timestep`` ({timestep: features}, copied to system memory) while it fits the bound."""
        group = self._group(key)
        if group is None:
            group = _Group(key)
            self._groups.append(group)
        limit = self.limit_mb * MB
        for timestep, features in by_timestep.items():
            if timestep in group.features:
                continue
            size = _nbytes(features)
            while self.nbytes + size > limit and self._groups[0] is not group:
                self._groups.pop(0)
            if self.nbytes + size > limit:
                if not group.warned:
                    group.warned = True
                    logger.info(
                        "FlashFace: the reference-pass cache is full (%d MB, %d timesteps kept); other timesteps recompute "
                        "the reference pass. Raise reference_cache_mb on Load FlashFace Model to keep more.", self.limit_mb,
                        len(group.features),
                    )
                break
            group.features[timestep] = {name: tuple(_stored(t) for t in pair) for name, pair in features.items()}
            group.nbytes += size
        if not group.features:
            self._groups.remove(group)

    def clear(self):
        self._groups.clear()
