"""The downloader's staging folder: invisible to ComfyUI's model lists, one downloader at a time, and
a final rename that never replaces anything of the user's.

ComfyUI lists every file below a model folder, hidden folders too, whose name ends in one of the
folder's model extensions. huggingface_hub writes ``<name>.incomplete`` files and then moves the
finished file to ``<name>`` in its ``local_dir``; the downloader renames that at once to
``<name>.part``, so no staged file ever ends in a model extension until the size and SHA-256
check passed and the file got its final name in the model folder itself.
"""

import errno
import os
import shutil
import socket
from pathlib import Path

STAGING = ".flashface-download"  # inside the destination folder, so the final rename stays on one disk
LOCK = ".flashface-download.lock"  # beside it: the staging folder is removed while the lock is held
PART = ".part"


class DownloadError(RuntimeError):
    """A file could not be fetched or is not the official file; the message says what to do."""


def part_path(staging: Path, filename: str) -> Path:
    return staging / (filename + PART)


def hide(staged: Path, part: Path) -> None:
    """Give a finished but unchecked download a name ComfyUI does not list."""
    if staged.is_file() and not staged.is_symlink():
        os.replace(staged, part)


def staged_bytes(staging: Path) -> int:
    """Bytes already fetched into ``staging`` (a resumed download needs that much less space)."""
    if not staging.is_dir():
        return 0
    return sum(path.stat().st_size for path in staging.rglob("*") if path.is_file() and not path.is_symlink())


def clean(staging: Path) -> None:
    """Remove the staging folder unless it holds something to resume (a partial or an unchecked download)."""
    if not staging.is_dir():
        return
    resumable = [path for pattern in ("*.incomplete", f"*{PART}") for path in staging.rglob(pattern)]
    if not any(path.is_file() and path.stat().st_size for path in resumable):
        shutil.rmtree(staging, ignore_errors=True)


def in_the_way(target: Path, filename: str) -> str | None:
    """Why ``target`` cannot become the downloaded file, when something the user has is there; else None."""
    keep = "The downloader never replaces your files or links:"
    if target.is_symlink() and not target.exists():
        return (f"{target} is a link to {os.readlink(target)}, which does not exist. {keep} restore what it "
                "points to, or remove the link, then run this command again.")
    if target.is_dir():
        return (f"{target} is a folder, where the file {filename} belongs. {keep} move or rename the "
                "folder, then run this command again.")
    if os.path.lexists(target) and not target.is_file():
        return f"{target} is there but is not a file. {keep} move or rename it, then run this command again."
    return None


def _refuse_occupied(target: Path) -> None:
    problem = in_the_way(target, target.name)
    if problem is None and os.path.lexists(target):
        problem = (f"{target} appeared while downloading. The downloader never replaces your files: "
                   "delete or rename one of the two, then run this command again.")
    if problem:
        raise DownloadError(problem)


def move_into_place(part: Path, target: Path) -> None:
    """Rename the checked download to ``target``; stop if anything appeared there meanwhile."""
    _refuse_occupied(target)
    try:
        os.replace(part, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    # The staging folder is on another disk (a link or mount): copy beside the target, then rename there.
    local = target.with_name(f".{target.name}{PART}")
    try:
        shutil.copyfile(part, local)
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    part.unlink()
    _refuse_occupied(target)
    os.replace(local, target)


def _holder(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text(encoding="utf-8").split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _is_stale(lock: Path) -> bool:
    """The lock's process is gone (checked only on this machine; a lock from another one counts as held)."""
    # A lock holding this process's own id is held too: another download in this process.
    holder = _holder(lock)
    if holder is None or holder[1] != socket.gethostname():
        return False
    if os.name == "nt":  # the holder keeps the file open, and Windows refuses to delete an open file
        try:
            lock.unlink()
            return True
        except OSError:
            return False
    try:
        os.kill(holder[0], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class DownloadLock:
    """One downloader per folder: a lock file created exclusively, holding its process id and machine."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self._fd = None

    def __enter__(self):
        for _ in range(2):
            try:
                self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _is_stale(self.path):
                    self.path.unlink(missing_ok=True)
                    continue
                break
            os.write(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return self
        holder = _holder(self.path)
        who = f" (process {holder[0]} on {holder[1]})" if holder else ""
        raise DownloadError(
            f"Another download into {self.path.parent} is running{who}. Let it finish, then run this command "
            f"again. If no download is running, delete {self.path} and run it again.")

    def __exit__(self, *exc):
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
