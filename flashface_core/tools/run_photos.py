"""The runner's files: the user's photos checked and put in ComfyUI's input folder, the graph's image
names kept inside the folders ComfyUI reads them from, and the saved PNGs claimed in the output folder."""

import os
import re
import secrets
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .run_graph import RunError
from .run_options import LOAD_IMAGE, mask_is_used

IMAGE_LOADERS = (LOAD_IMAGE, "LoadImageMask")  # core nodes reading an ``image`` name from the input folder
RUN_FOLDER = "flashface-run"  # under ComfyUI's input folder: one subfolder of photos per run
MASK_ADVICE = ("a PNG whose transparent pixels cover the face (the graph's Load Image takes its mask from the "
               "photo's alpha channel, as painted in the ComfyUI MaskEditor)")


def check_photo(path_text: str) -> Path:
    """The photo's path once PIL reads it as ComfyUI's Load Image would (RunError saying why not)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path_text).expanduser()
    if path.is_dir():
        raise RunError(f"{path_text}: a folder, not a photo.")
    if not path.is_file():
        raise RunError(f"{path_text}: no such photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RunError(f"{path_text}: too many pixels for a photo ({error}). Use a smaller copy.") from None
    except PermissionError:
        raise RunError(f"{path_text}: cannot be read (permission denied).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RunError(f"{path_text}: not an image ComfyUI can read ({error}).") from None
    return path.resolve()


@dataclass(frozen=True)
class Folders:
    """The folders ComfyUI reads images from, by the annotation that names them ("input" by default)."""

    input: Path
    output: Path
    temp: Path

    def image_path(self, name: str) -> Path | None:
        """Where ComfyUI's Load Image reads ``name`` (folder_paths.get_annotated_filepath), or None when
        that is outside its folder (as ComfyUI's /view refuses it: the absolute path under the folder)."""
        base = self.input
        for kind in ("output", "input", "temp"):
            if name.endswith(f"[{kind}]"):
                base, name = getattr(self, kind), name[:-len(kind) - 3]
                break
        base = os.path.abspath(base)
        path = os.path.abspath(os.path.join(base, name))
        try:
            inside = os.path.commonpath((base, path)) == base
        except ValueError:  # another drive
            inside = False
        return Path(path) if inside else None


def _title(entry: dict) -> str:
    return entry.get("_meta", {}).get("title") or entry["class_type"]


def check_graph_images(prompt: dict, folders: Folders, set_by_runner: set[str], references: list[str],
                       others: list[str]) -> list[Path]:
    """Every image name the graph gives itself: inside its folder (else RunError naming the node), and there
    (else RunError saying which option gives it). Returns the paths of those in the output folder (named
    with ' [output]'), which the run reads beside its outputs."""
    outside, missing = [], []
    for node_id, entry in prompt.items():
        if entry["class_type"] not in IMAGE_LOADERS or node_id in set_by_runner:
            continue
        name = entry["inputs"].get("image")
        where = f"node {node_id} ({_title(entry)})"
        if not isinstance(name, str):
            raise RunError(f"{where}: its image {name!r} is not a file name.")
        path = folders.image_path(name)
        if path is None:
            raise RunError(f"{where}: the image name {name!r} points outside ComfyUI's input folder; a graph may only "
                           "read images inside it (or inside the output folder, with ' [output]').")
        if not path.is_file():
            missing.append((node_id, where, name))
        elif path.is_relative_to(folders.output) and not path.is_relative_to(folders.input):
            outside.append(path)
    lines = []
    for node_id, where, name in missing:
        there = f"{where} reads {name}, which is not in ComfyUI's input folder ({folders.input})"
        if node_id in references:
            lines.append(f"{there}: this graph takes {len(references)} reference photo(s) (Load Image nodes "
                         f"{', '.join(references)}); give yours with --ref PHOTO, once per photo (more than "
                         f"{len(references)} also work).")
        elif others == [node_id]:
            mask = f", {MASK_ADVICE}" if mask_is_used(prompt, node_id) else ""
            lines.append(f"{there}: give the photo with --photo PHOTO{mask}.")
        else:
            lines.append(f"{there}: put it there, or choose another image in the ComfyUI page.")
    if lines:
        raise RunError("\n".join(lines))
    return outside


class RunInputs:
    """The run's photos, in a new folder of ComfyUI's input folder (``flashface-run/<run id>/``), named as
    ComfyUI's Load Image takes subfolder names, so a saved PNG dropped on the page finds them."""

    def __init__(self, input_dir: Path):
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.folder = input_dir / RUN_FOLDER / self.run_id
        self.photos: dict[str, Path] = {}

    def name(self, kind: str, index: int, source: Path) -> str:
        name = f"{RUN_FOLDER}/{self.run_id}/{kind}{index:02d}{source.suffix.lower() or '.png'}"
        self.photos[name] = source
        return name

    def create(self):
        """Copy the photos in (a new folder: nothing there is overwritten)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=False)
            for name, source in self.photos.items():
                with open(source, "rb") as photo, open(self.folder / Path(name).name, "xb") as copy:
                    shutil.copyfileobj(photo, copy)
        except OSError as error:
            self.remove()
            raise RunError(f"cannot put the photos in {self.folder} ({error.strerror or error}).") from None

    def remove(self):
        """Take the run's photos out again (a run that did not save anything)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # only when no other run's photos are there
        except OSError:
            pass


COUNTER = re.compile(r"^(?P<prefix>.*_)(?P<counter>\d{5,})(?P<rest>_?\.[^.]+)$")


def claim(source: Path, folder: Path) -> Path:
    """Move a saved image into ``folder`` under a name no other file has (exclusive create), renumbering
    ComfyUI's ``prefix_00001_.png`` counter when another run took the name meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    name = source.name
    while True:
        target = folder / name
        try:
            with open(source, "rb") as image, open(target, "xb") as copy:
                shutil.copyfileobj(image, copy)
        except FileExistsError:
            match = COUNTER.match(name)
            counter = int(match["counter"]) + 1 if match else 1
            stem, rest = (match["prefix"], match["rest"]) if match else (f"{source.stem}_", source.suffix)
            name = f"{stem}{counter:05}{rest}"
            continue
        source.unlink()
        return target
