"""Save a person's references under a name; load them back with a VAE.

Saving never loses a user's file: an existing name is refused unless ``overwrite`` is on
(a file that already holds exactly this identity is left as it is, so re-running a graph
that saves is no error), and the file is written to a hidden temporary name in the same
folder, flushed, then moved into place in one step (a no-clobber hard link without
``overwrite``, so a file that appeared meanwhile is not replaced either). A crash leaves
the old file or the new one, never half of one.

Loading gives the saved latents exactly when the VAE is the one that encoded them (by
``faces.vae_fingerprint``); with another VAE the saved crops are encoded again with it.
"""

import logging
import os
import tempfile

import torch

from ..faces.vae_fingerprint import same_vae, vae_fingerprint
from ..model.references import LATENT_CHANNELS, FlashFaceReferences
from ..model_files import folders
from .files import identity_tensors, read_identity_file
from .names import identity_file_name

logger = logging.getLogger(__name__)


def identity_path(name: str, folder: str | None = None) -> str:
    """Where identity ``name`` is saved: ``NAME.safetensors`` in ``folder`` (default: the first identities folder)."""
    file_name = identity_file_name(name)
    if folder is None:
        found = folders.identity_folders()
        if not found:
            raise ValueError(f"ComfyUI has no {folders.IDENTITIES} folder configured; add one to extra_model_paths.yaml.")
        folder = found[0]
    return os.path.join(folder, file_name)


def _holds_the_same(path: str, tensors: dict, metadata: dict) -> bool:
    try:
        saved = read_identity_file(path)
    except ValueError:
        return False
    return (torch.equal(saved.face_crops, tensors["face_crops"]) and torch.equal(saved.latents, tensors["latents"])
            and saved.fill_to == int(metadata["fill_to"]) and saved.detector == metadata["detector"]
            and (saved.vae_fingerprint or "") == metadata["vae_fingerprint"])


def save_identity(references: FlashFaceReferences, name: str, overwrite: bool = False, folder: str | None = None) -> str:
    """Write ``references`` as identity ``name``; the path written. ValueError, before writing, when it cannot be."""
    from safetensors.torch import save_file

    if not isinstance(references, FlashFaceReferences):
        raise ValueError(f"Save Identity needs FlashFace references, got {type(references).__name__}.")
    path = identity_path(name, folder)
    tensors, metadata = identity_tensors(references)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{path} exists and is not a file (a folder or a broken link): choose another identity name.")
    if os.path.isfile(path) and not overwrite:
        if _holds_the_same(path, tensors, metadata):
            logger.info("FlashFace: identity %s already holds these references; nothing written.", path)
            return path
        raise ValueError(f"An identity named '{os.path.basename(path)}' already exists ({path}). Choose another name, "
                         "or turn on overwrite to replace it.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".partial")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            _move_without_replacing(temporary, path)
    except FileExistsError:
        raise ValueError(f"An identity named '{os.path.basename(path)}' appeared while saving ({path}); it was kept. "
                         "Choose another name, or turn on overwrite.") from None
    except OSError as error:
        raise ValueError(f"Could not write the identity {path}: {error.strerror or error}. Check that the folder is "
                         "writable and the disk has room.") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    logger.info("FlashFace: saved identity %s (%d face(s), detector %s).", path, len(references), references.detector)
    return path


def _move_without_replacing(source: str, target: str):
    """``source`` renamed to ``target`` unless ``target`` exists (FileExistsError), in one step where links work."""
    try:
        os.link(source, target)  # fails with FileExistsError if target exists: nothing is replaced
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT file systems): check, then rename
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        os.replace(source, target)
        return
    os.remove(source)


def load_identity(path: str, vae) -> tuple[FlashFaceReferences, torch.Tensor]:
    """The references saved in identity file ``path`` and their crops (an IMAGE batch), for ``vae``.

    The saved latents when ``vae`` is the VAE that encoded them; else the crops encoded with ``vae``.
    """
    saved = read_identity_file(path)
    if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
        raise ValueError(f"The VAE makes {vae.latent_channels}-channel latents; FlashFace needs the SD1.5 VAE "
                         f"({LATENT_CHANNELS} channels). Connect the SD1.5 VAE to FlashFace Load Identity.")
    fingerprint = vae_fingerprint(vae)
    latents = saved.latents
    if not same_vae(saved.vae_fingerprint, fingerprint):
        logger.info("FlashFace: identity %s was encoded with another VAE; encoding its %d crop(s) with this one.",
                    os.path.basename(path), len(saved.latents))
        latents = vae.encode(saved.face_crops).float()
        if latents.shape[0] != saved.latents.shape[0] or latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"The VAE encoded the crops of {path} to latents of shape {tuple(latents.shape)}; "
                             f"FlashFace needs the SD1.5 VAE.")
    else:
        fingerprint = saved.vae_fingerprint
    references = FlashFaceReferences(latents, saved.fill_to, face_crops=saved.face_crops, detector=saved.detector,
                                     vae_fingerprint=fingerprint)
    return references, saved.face_crops
