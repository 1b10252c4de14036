"""The face detail pass: crop each face with context at FlashFace's scale, regenerate it, stitch it back."""
