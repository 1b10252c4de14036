"""``python -m flashface_core.download``: the model files the shipped graphs need (``tools/downloader.py``)."""

import sys

from .tools.downloader import main

if __name__ == "__main__":
    sys.exit(main())
