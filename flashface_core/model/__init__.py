"""FlashFace-SD1.5 as a ComfyUI model: the BaseModel, checkpoint files, the official key layout, the timestep rule."""
