"""Identity names: a plain file name inside the identities folder, or a clear refusal.

A name comes from a node's text box (or the runner's command line), so it is checked
before anything touches the disk: no folders, no ``..``, no characters some file systems
refuse, nothing hidden, no Windows device names. ``.safetensors`` is added when missing.
"""

import re

EXTENSION = ".safetensors"
MAX_LENGTH = 100
# Letters and digits of any script, then also spaces, dots, dashes, underscores and brackets.
_ALLOWED = re.compile(r"[\w][\w .()\[\]-]*")
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def identity_file_name(name) -> str:
    """``name`` as the file name it is saved under (``NAME.safetensors``); ValueError saying what is wrong."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("The identity name is empty: type a name for this person, e.g. 'alice'.")
    stem = name.strip()
    if stem.lower().endswith(EXTENSION):
        stem = stem[:-len(EXTENSION)]
    what = f"The identity name '{name}'"
    if any(sep in stem for sep in ("/", "\\")) or stem in (".", "..") or ".." in stem:
        raise ValueError(f"{what} holds a path ('/', '\\' or '..'); identities are saved directly in the identities "
                         "folder: use a plain name such as 'alice'.")
    if not stem:
        raise ValueError(f"{what} has nothing before {EXTENSION}: type a name for this person, e.g. 'alice'.")
    if len(stem) > MAX_LENGTH:
        raise ValueError(f"{what} is {len(stem)} characters long; use at most {MAX_LENGTH}.")
    if not _ALLOWED.fullmatch(stem) or stem.endswith("."):
        bad = sorted({c for c in stem if not re.fullmatch(r"[\w .()\[\]-]", c)})
        detail = f" ({' '.join(repr(c) for c in bad)})" if bad else " (it must start with a letter or digit and not end with '.')"
        raise ValueError(f"{what} holds characters a file name may not{detail}; use letters, digits, spaces, "
                         "'.', '-', '_' and brackets.")
    if stem.split(".")[0].lower() in _WINDOWS_DEVICES:
        raise ValueError(f"{what} is a name Windows reserves for a device; choose another.")
    return stem + EXTENSION
