"""The speed levers, each exact up to float rounding: the reference-pass cache, the shared encoder, the merged attention."""
