"""The reference injection: the reference pass, the reference attention patches and the wrappers that carry them."""
