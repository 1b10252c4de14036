"""FlashFace for ComfyUI: the model, its U-Net patches, guidance and face handling.

No node classes live here (they are in ``nodes/``), and importing this package loads no
model and imports nothing from ComfyUI: the modules that need ComfyUI import it themselves.
"""
