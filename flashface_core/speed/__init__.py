"""The speed levers, each exact up to float rounding: the reference-pass cache, the shared encoder,
the merged attention. The prefetched reference pass lives with a run's features (``injection/run_references.py``)."""
