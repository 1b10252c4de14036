"""``python -m flashface_core.convert``: the official checkpoint as a .safetensors (``tools/converter.py``)."""

import sys

from .tools.converter import main

if __name__ == "__main__":
    sys.exit(main())
