"""Fetch the model files the shipped graphs need from their official Hugging Face repositories.

    python -m flashface_core.download [--sd15] [--detector] [--dry-run] [--models-dir DIR]

By default: flashface.ckpt and the official face detector retinaface_resnet50.pth (both from
shilongz/FlashFace-SD1.5). --sd15 adds an SD1.5 checkpoint for the CLIP text encoder and VAE;
--detector fetches the detector alone. --dry-run prints what would be fetched, from where, to
where and how big, and fetches nothing.

Files go into the ComfyUI model folders (the ComfyUI found as the other tools find it, with its
extra_model_paths.yaml: a path marked ``is_default`` there is used first, as ComfyUI does), or
below --models-dir. A file already in any folder ComfyUI searches for it is skipped. Downloads
run in a hidden staging folder and resume when the command is run again; a file gets its final
name only after its size and SHA-256 match the official file's, so a broken or cut download is
never mistaken for a model. Nothing here runs by itself: nodes and the runner only name this
command.
"""

import argparse
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

from ..model_files.catalog import DETECTOR, FLASHFACE, SD15, ModelFile, human_size
from .host import find_comfyui

logger = logging.getLogger(__name__)

STAGING = ".flashface-download"  # inside the destination folder, so the final rename stays on one disk
HASH_CHUNK = 8 * 1024 * 1024


class DownloadError(RuntimeError):
    """A file could not be fetched or is not the official file; the message says what to do."""


def select_files(sd15: bool, detector_only: bool) -> list[ModelFile]:
    files = [DETECTOR] if detector_only else [FLASHFACE, DETECTOR]
    return files + [SD15] if sd15 else files


class ModelFolders:
    """Where each ComfyUI folder name lives: below --models-dir, or as ComfyUI resolves it."""

    def __init__(self, models_dir: Path | None = None, extra_configs: tuple[Path, ...] = ()):
        self.models_dir = models_dir
        self._folder_paths = None
        if models_dir is None:
            self._folder_paths = _comfyui_folder_paths(extra_configs)

    def destination(self, name: str) -> Path:
        if self._folder_paths is None:
            return self.models_dir / name
        if name in self._folder_paths.folder_names_and_paths:
            return Path(self._folder_paths.get_folder_paths(name)[0])
        return Path(self._folder_paths.models_dir) / name

    def existing(self, file: ModelFile) -> Path | None:
        """The file where ComfyUI would find it, if it is anywhere already."""
        for name in file.folders:
            if self._folder_paths is not None and name in self._folder_paths.folder_names_and_paths:
                found = self._folder_paths.get_full_path(name, file.filename)
                if found:
                    return Path(found)
            candidate = self.destination(name) / file.filename
            if candidate.is_file():
                return candidate
        return None


def _comfyui_folder_paths(extra_configs: tuple[Path, ...]):
    """ComfyUI's ``folder_paths`` with this pack's folders and the user's extra paths, as at start-up.

    Only ``folder_paths`` is imported (no torch). The pack registers its folders before the
    YAML files are read, so a YAML path marked ``is_default`` comes first, as ComfyUI's own
    example says it should ("used as the default dirs for eg downloads").
    """
    host = find_comfyui()
    if host is None:
        raise DownloadError(
            "ComfyUI was not found. Set COMFYUI_PATH to your ComfyUI folder, run this from "
            "ComfyUI/custom_nodes/<this pack>, or pass --models-dir PATH/TO/ComfyUI/models."
        )
    missing = [str(path) for path in extra_configs if not path.is_file()]
    if missing:
        raise DownloadError(f"extra model paths file not found: {', '.join(missing)}")
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import folder_paths

    from ..model_files import folders

    folders.register_model_folders()
    configs = [path for path in (host / "extra_model_paths.yaml", *extra_configs) if path.is_file()]
    if configs:
        from utils.extra_config import load_extra_path_config

        for path in configs:
            load_extra_path_config(str(path))
    return folder_paths


def sha256_of(path: Path, progress: bool = True) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    with open(path, "rb") as stream, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress
    ) as bar:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def check_file(path: Path, file: ModelFile, progress: bool = True) -> None:
    """Raise DownloadError unless ``path`` has the official size and SHA-256."""
    size = path.stat().st_size
    if size != file.size:
        raise DownloadError(f"{path} is {size:,} bytes, but the official {file.filename} is {file.size:,} bytes.")
    digest = sha256_of(path, progress)
    if digest != file.sha256:
        raise DownloadError(f"{path} has SHA-256 {digest}, but the official {file.filename} has {file.sha256}.")


def _hf_hub_download():
    try:
        import huggingface_hub
    except ImportError as error:
        raise DownloadError(
            "The downloader needs huggingface_hub, which did not import "
            f"({error}). Install it into ComfyUI's Python: python -m pip install huggingface_hub"
        ) from error
    # From 0.23 a download into local_dir is a real file written through an .incomplete name;
    # older versions may leave a link into their cache instead.
    if tuple(int(part) for part in huggingface_hub.__version__.split(".")[:2]) < (0, 23):
        raise DownloadError(
            f"huggingface_hub {huggingface_hub.__version__} is too old for the downloader (0.23 or newer "
            "needed). Update it in ComfyUI's Python: python -m pip install -U huggingface_hub"
        )
    return huggingface_hub.hf_hub_download


def fetch(file: ModelFile, folder: Path, progress: bool = True) -> Path:
    """Download ``file`` into ``folder`` through the staging folder; return its final path."""
    target = folder / file.filename
    staging = folder / STAGING
    hf_hub_download = _hf_hub_download()
    folder.mkdir(parents=True, exist_ok=True)
    partial = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file()) if staging.is_dir() else 0
    free = shutil.disk_usage(folder).free
    if free + partial < file.size:
        raise DownloadError(
            f"{file.filename} needs {human_size(file.size)} but {folder} has {human_size(free)} free."
        )
    logger.info("%s (%s) from %s", file.filename, human_size(file.size), file.url)
    try:
        staged = Path(hf_hub_download(repo_id=file.repo_id, filename=file.filename, local_dir=staging))
    except Exception as error:  # network, HTTP and Hub errors differ between huggingface_hub versions
        if not any(path.stat().st_size for path in staging.rglob("*.incomplete")):
            shutil.rmtree(staging, ignore_errors=True)  # nothing to resume: leave no clutter
        raise DownloadError(
            f"Could not download {file.filename} from {file.url}: {error}\n"
            "Check the internet connection (and HF_ENDPOINT or proxy settings, if you use them), then run "
            f"the command again: it resumes where it stopped. Or download the file in a browser into {folder}."
        ) from error
    try:
        check_file(staged, file, progress)
    except DownloadError as error:
        staged.unlink(missing_ok=True)
        raise DownloadError(f"{error} The download was deleted; run the command again.") from error
    os.replace(staged, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def describe(file: ModelFile, folders: ModelFolders) -> str:
    """The --dry-run lines for one file."""
    existing = folders.existing(file)
    state = f"already there: {existing}" if existing else "to download"
    return (
        f"{file.filename}: {file.role}\n"
        f"  size:   {human_size(file.size)} ({file.size:,} bytes)\n"
        f"  from:   {file.url}\n"
        f"  to:     {folders.destination(file.folder)}  (ComfyUI folder '{file.folder}': models/{file.folder}/)\n"
        f"  sha256: {file.sha256}\n"
        f"  status: {state}"
    )


def run(files: list[ModelFile], folders: ModelFolders, dry_run: bool) -> int:
    todo = [file for file in files if folders.existing(file) is None]
    if dry_run:
        for file in files:
            print(describe(file, folders))
        total = sum(file.size for file in todo)
        print(f"{len(todo)} of {len(files)} files to download, {human_size(total)} in all.")
        return 0
    for file in files:
        existing = folders.existing(file)
        if existing is not None:
            if existing.stat().st_size != file.size:
                raise DownloadError(
                    f"{existing} is {existing.stat().st_size:,} bytes, not the official {file.size:,}: it may be an "
                    "unfinished copy. Delete or rename it, then run this command again."
                )
            logger.info("%s: already there (%s)", file.filename, existing)
            continue
        target = fetch(file, folders.destination(file.folder))
        logger.info("%s: saved to %s (size and SHA-256 checked)", file.filename, target)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15", action="store_true", help=f"also fetch {SD15.filename} into models/checkpoints ({human_size(SD15.size)})")
    parser.add_argument("--detector", action="store_true", help=f"fetch only the face detector {DETECTOR.filename} (with --sd15: and the SD1.5 file)")
    parser.add_argument("--dry-run", action="store_true", help="print each file's source, folder and size; fetch nothing")
    parser.add_argument("--models-dir", type=Path, help="save below this models folder (DIR/flashface, DIR/checkpoints, ...) instead of ComfyUI's")
    parser.add_argument("--extra-model-paths-config", type=Path, action="append", default=[], metavar="YAML",
                        help="another extra_model_paths.yaml to read, as ComfyUI's option of that name")
    args = parser.parse_args(argv)
    if args.models_dir and args.extra_model_paths_config:
        parser.error("--models-dir replaces ComfyUI's folders; --extra-model-paths-config has no effect with it")
    if not logger.handlers:  # this command's own lines only; huggingface_hub prints its own
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        folders = ModelFolders(args.models_dir, tuple(args.extra_model_paths_config))
        return run(select_files(args.sd15, args.detector), folders, args.dry_run)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
