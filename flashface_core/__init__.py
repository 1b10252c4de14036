"""FlashFace for ComfyUI: the model, its U-Net patches, guidance and face handling.

One subpackage per job: ``model/`` (FlashFace as a ComfyUI model, checkpoints, key layout,
timesteps), ``injection/`` (the reference pass and the reference attention), ``speed/``
(the exact speed levers), ``guidance/`` (the guidance math, the GUIDER, schedules),
``faces/`` (detection, alignment, encoding), ``model_files/`` (the official files, the
folders, the missing-file messages) and ``tools/`` (command-line and development tools,
which nothing at run time imports). ``contract.py`` holds the keys and settings they share;
``loader.py`` loads a checkpoint as a patched MODEL. The top-level ``run``, ``download``,
``convert`` and ``verify_golden`` are the commands (``python -m flashface_core.run``).

No node classes live here (they are in ``nodes/``), and importing this package loads no
model and imports nothing from ComfyUI: the modules that need ComfyUI import it themselves.
"""
