"""A failed file operation in one sentence: the path, the system's reason and what to do about it.

The command-line tools print it after ``error:`` in place of an ``OSError`` traceback.
"""

import errno

_WRITABLE = "Make that folder writable for this user (or run as the user who owns it), or use another folder."
ADVICE = {
    errno.ENOSPC: "The disk is full: free space on it, or use a folder on another disk.",
    errno.EACCES: _WRITABLE,
    errno.EPERM: _WRITABLE,
    errno.EROFS: "That disk is read-only: use a folder on another disk.",
    errno.EISDIR: "A folder is where a file belongs: move or rename the folder.",
    errno.ENOTDIR: "A file is where a folder belongs in that path: move or rename the file.",
    errno.EEXIST: "Something of that name is already there: move or rename it.",
    errno.ENOENT: "It is missing (or was removed while in use): check the path.",
    errno.ENAMETOOLONG: "The path is too long: use a folder with a shorter path.",
    errno.EXDEV: "The two paths are on different disks.",
}
if hasattr(errno, "EDQUOT"):
    ADVICE[errno.EDQUOT] = "Your disk quota is used up: free space, or use a folder on another disk."
FILE_SYSTEM_ERRNOS = frozenset(ADVICE)


def is_file_system_error(error: BaseException) -> bool:
    """An ``OSError`` about a file or the disk (not a network or HTTP error, which have other errno values or none)."""
    return isinstance(error, OSError) and error.errno in FILE_SYSTEM_ERRNOS


def explain(error: OSError, path=None) -> str:
    """``PATH: reason. What to do.``; ``path`` names the place when the error does not (a write has no file name)."""
    where = error.filename if error.filename is not None else path
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    reason = error.strerror or str(error) or type(error).__name__
    text = f"{where}: {reason}." if where is not None else f"{reason}."
    advice = ADVICE.get(error.errno)
    return f"{text} {advice}" if advice else text
