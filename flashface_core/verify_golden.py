"""``python -m flashface_core.verify_golden``: this port against the official code's golden data (``tools/verify_golden.py``)."""

import sys

from .tools.verify_golden import main

if __name__ == "__main__":
    sys.exit(main())
