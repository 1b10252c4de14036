"""Fetch the model files the shipped graphs need from their official Hugging Face repositories.

    python -m flashface_core.download [--sd15] [--detector] [--dry-run] [--models-dir DIR]

By default: flashface.ckpt and the official face detector retinaface_resnet50.pth (both from
shilongz/FlashFace-SD1.5). --sd15 adds an SD1.5 checkpoint for the CLIP text encoder and VAE;
--detector fetches the detector alone. --dry-run prints what would be fetched, from where, to
where and how big, and fetches nothing.

Files go into the ComfyUI model folders (the ComfyUI found as the other tools find it, with its
extra_model_paths.yaml: a folder it names gets only its paths, an is_default one first, as in
ComfyUI), or below --models-dir. A file already in any folder ComfyUI searches for it is skipped once its
size is the official one; a file, link or folder of yours under the name is never replaced.
Downloads run in a hidden staging folder under names ComfyUI does not list, one downloader
per folder at a time, and resume when the command is run again; a file gets its final name
only after its size and SHA-256 match the official file's, so a broken or cut download is
never mistaken for a model. --dry-run checks the same (sizes, what is in the way, free
space) without hashing. Nothing here runs by itself: nodes and the runner only name this
command.
"""

import argparse
import hashlib
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..model_files.catalog import DETECTOR, FLASHFACE, SD15, ModelFile, human_size
from . import download_staging as staging_area
from . import os_errors
from .download_staging import STAGING, DownloadError
from .host import find_comfyui

logger = logging.getLogger(__name__)

HASH_CHUNK = 8 * 1024 * 1024


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
    """ComfyUI's ``folder_paths`` with the user's extra paths and this pack's folders, as at start-up.

    Only ``folder_paths`` is imported (no torch). As in ComfyUI's main.py, the YAML files are
    read first and the pack registers its folders after them (adding a default folder only
    where the user's configuration names none).
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

    configs = [path for path in (host / "extra_model_paths.yaml", *extra_configs) if path.is_file()]
    if configs:
        from utils.extra_config import load_extra_path_config

        for path in configs:
            load_extra_path_config(str(path))
    folders.register_model_folders()
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


def _free_space(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (or would: its nearest existing parent)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _space_problem(file: ModelFile, folder: Path) -> str | None:
    free = _free_space(folder)
    if free + staging_area.staged_bytes(folder / STAGING) < file.size:
        return f"{file.filename} needs {human_size(file.size)} but {folder} has {human_size(free)} free."
    return None


def _failure(file: ModelFile, folder: Path, error: Exception) -> str:
    """What a failed download means: the disk's or the folder's problem, or the network's."""
    if os_errors.is_file_system_error(error):
        return (f"Could not save {file.filename} in {folder}: {os_errors.explain(error, folder / STAGING)} "
                "Then run the command again: it resumes where it stopped (or use --models-dir for other folders).")
    return (f"Could not download {file.filename} from {file.url}: {error}\n"
            "Check the internet connection (and HF_ENDPOINT or proxy settings, if you use them), then run "
            f"the command again: it resumes where it stopped. Or download the file in a browser into {folder}.")


def fetch(file: ModelFile, folder: Path, progress: bool = True) -> Path:
    """Download ``file`` into ``folder`` through the staging folder; return its final path."""
    target = folder / file.filename
    staging = folder / STAGING
    part = staging_area.part_path(staging, file.filename)
    hf_hub_download = _hf_hub_download()
    folder.mkdir(parents=True, exist_ok=True)
    with staging_area.DownloadLock(folder):
        problem = staging_area.in_the_way(target, file.filename)
        staging_area.hide(staging / file.filename, part)  # left by a run stopped as the download ended
        if problem is None and not (part.is_file() and part.stat().st_size == file.size):
            problem = _space_problem(file, folder)
            if problem is None:
                logger.info("%s (%s) from %s", file.filename, human_size(file.size), file.url)
                try:
                    try:
                        hf_hub_download(repo_id=file.repo_id, filename=file.filename, local_dir=staging)
                    finally:
                        staging_area.hide(staging / file.filename, part)
                except Exception as error:  # network, HTTP and Hub errors differ between huggingface_hub versions
                    staging_area.clean(staging)  # nothing to resume: leave no clutter
                    raise DownloadError(_failure(file, folder, error)) from error
        if problem:
            raise DownloadError(problem)
        try:
            check_file(part, file, progress)
        except DownloadError as error:
            part.unlink(missing_ok=True)
            staging_area.clean(staging)
            raise DownloadError(f"{error} The download was deleted; run the command again.") from error
        staging_area.move_into_place(part, target)
        staging_area.clean(staging)
    return target


@dataclass(frozen=True)
class Plan:
    """What the downloader finds for one file: in place already, to fetch, or something in the way."""

    file: ModelFile
    folder: Path
    existing: Path | None = None
    problem: str | None = None  # stops the run before anything is fetched
    warning: str | None = None  # stops the run when this file's turn comes (free space)


def plan(file: ModelFile, folders: ModelFolders) -> Plan:
    """The cheap checks of the real run, without fetching or hashing: shared by --dry-run and the run."""
    folder = folders.destination(file.folder)
    existing = folders.existing(file)
    if existing is not None:
        size = existing.stat().st_size
        if size != file.size:
            return Plan(file, folder, existing, problem=(
                f"{existing} is {size:,} bytes, not the official {file.size:,}: it may be an "
                "unfinished copy. Delete or rename it, then run this command again."))
        return Plan(file, folder, existing)
    problem = staging_area.in_the_way(folder / file.filename, file.filename)
    return Plan(file, folder, problem=problem, warning=None if problem else _space_problem(file, folder))


def describe(item: Plan) -> str:
    """The --dry-run lines for one file."""
    file = item.file
    if item.problem:
        state = f"stop: {item.problem}"
    elif item.existing:
        state = f"already there: {item.existing} ({file.size:,} bytes, the official size)"
    else:
        staged = staging_area.staged_bytes(item.folder / STAGING)
        state = "to download" + (f", resuming ({human_size(staged)} fetched)" if staged else "")
        if item.warning:
            state += f"; but {item.warning} Free space first."
    return (
        f"{file.filename}: {file.role}\n"
        f"  size:   {human_size(file.size)} ({file.size:,} bytes)\n"
        f"  from:   {file.url}\n"
        f"  to:     {item.folder}  (ComfyUI folder '{file.folder}': models/{file.folder}/)\n"
        f"  sha256: {file.sha256}\n"
        f"  status: {state}"
    )


def run(files: list[ModelFile], folders: ModelFolders, dry_run: bool) -> int:
    plans = [plan(file, folders) for file in files]
    problems = [item.problem for item in plans if item.problem]
    todo = [item for item in plans if item.existing is None and not item.problem]
    if dry_run:
        for item in plans:
            print(describe(item))
        total = sum(item.file.size for item in todo)
        print(f"{len(todo)} of {len(files)} files to download, {human_size(total)} in all.")
        if problems:
            print(f"error: the download would stop: {len(problems)} of the files need you first (see 'stop:' above).",
                  file=sys.stderr)
        return 1 if problems else 0
    if problems:
        raise DownloadError("\n".join(problems))
    for item in plans:
        if item.existing is not None:
            logger.info("%s: already there (%s)", item.file.filename, item.existing)
            continue
        try:
            target = fetch(item.file, item.folder)
        except OSError as error:
            raise DownloadError(_failure(item.file, item.folder, error)) from error
        logger.info("%s: saved to %s (size and SHA-256 checked)", item.file.filename, target)
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
    except OSError as error:  # reading the folders (the downloads' own errors are DownloadErrors)
        print(f"error: {os_errors.explain(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
