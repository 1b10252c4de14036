"""The reference injection: the reference pass, a run's reference features (prefetched for its
schedule), the reference attention patches and the wrappers that carry them."""
