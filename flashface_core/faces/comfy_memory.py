"""Face detectors held exactly as long as ComfyUI's model management keeps them loaded.

Each detector comes with a ModelPatcher that ComfyUI records in ``current_loaded_models``
(RetinaFace: its network; an ONNX detector: an empty module standing in for its session,
whose memory onnxruntime holds). The one strong reference to a detector is kept here, one
per kind and file; when ComfyUI unloads the patcher ("Unload models", POST /free, room for
other models) its ON_DETACH callback lets go of the detector together with ComfyUI's
record. A replaced file (another path, size, modification time or inode) loads anew.

The callback may run from ``ModelPatcher.__del__`` while the interpreter shuts down: it
imports nothing (what it needs is bound when the detector is kept) and does nothing once
the interpreter is finalizing.
"""

import os
import sys
import weakref


def file_identity(path: str) -> tuple:
    """What tells a file from its replacement: resolved path, size, modification time, inode."""
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino


def _drop(_entry):
    """Nothing to do: the finalizer holding the entry is what keeps it, until it runs."""


class HeldDetectors:
    """One loaded detector per kind, kept while ComfyUI keeps its patcher loaded."""

    def __init__(self):
        self._held = {}  # kind -> (key, detector, patcher)

    def __len__(self):
        return len(self._held)

    def current(self, kind: str, key):
        """The detector kept for ``kind`` under ``key``; None otherwise (one under another key is let go)."""
        entry = self._held.get(kind)
        if entry is not None and entry[0] == key:
            return entry[1]
        self._held.pop(kind, None)
        return None

    def keep(self, kind: str, key, detector, patcher):
        """Hold ``detector`` until ComfyUI unloads ``patcher``, its record in ComfyUI's model management."""
        import comfy.model_management
        import comfy.patcher_extension

        held, records, finalize, is_finalizing = self._held, comfy.model_management.current_loaded_models, weakref.finalize, sys.is_finalizing

        def release(unloaded, *_):
            """ON_DETACH. ComfyUI unloads models in a loop over its records and drops a record after
            that loop; a model freed inside the loop would make ComfyUI remove its record there and
            then, under the loop. So the detector lives on exactly as long as the record."""
            if is_finalizing():
                return
            entry = held.get(kind)
            if entry is None or entry[2] is not unloaded:
                return
            del held[kind]
            for record in records:
                if record.model is unloaded:
                    finalize(record, _drop, entry)
                    return

        patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_DETACH, release)
        held[kind] = (key, detector, patcher)

    def keep_beside_torch(self, kind: str, key, detector):
        """Hold a detector ComfyUI cannot see (an ONNX session) under a stand-in: a ModelPatcher of
        an empty module, loaded now so that ComfyUI records it and unloads it with the others."""
        import comfy.model_management
        import comfy.model_patcher
        import torch

        patcher = comfy.model_patcher.ModelPatcher(torch.nn.Module(), load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        self.keep(kind, key, detector, patcher)
        comfy.model_management.load_models_gpu([patcher])

    def clear(self):
        self._held.clear()
