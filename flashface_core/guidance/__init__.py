"""FlashFace's disentangled text and reference guidance: the math, the GUIDER, the schedules and the sampling call."""
