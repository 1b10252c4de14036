"""A ComfyUI models folder and input folder holding every file the shipped graphs name, for tests.

* ``flashface/flashface.ckpt`` (and ``flashface_tiny.ckpt``): the golden tiny FlashFace model;
* ``checkpoints/v1-5-pruned-emaonly.safetensors``: a random checkpoint that ComfyUI's
  CheckpointLoaderSimple reads as SD1.5: the full-size CLIP ViT-L text encoder (its shape is
  fixed), a small U-Net with SD1.5's widths (320 channels, 768-wide context, one level; the
  graphs never run it) and the SD1.5 tiny autoencoder (TAESD) as the VAE, which encodes and
  decodes SD1.5 latents far faster on a CPU than the full VAE. Made once per test session;
* ``facedetection/retinaface_resnet50.pth``: the random-weight RetinaFace of the golden face set;
* ``flashface_identities/``: empty, where the graphs that save identities write them (never the host's folder);
* the input photos the graphs load (``face_1.png`` ... ``face_8.png``, ``photo.png`` with a
  painted mask, ``character.png``), small RGB PNGs made from the shared reference photos.
"""

from pathlib import Path

import pytest
from conftest import FACES_DIR, GOLDEN_DIR, GOLDEN_FACES_DIR
from PIL import Image

FLASHFACE_FILE = "flashface.ckpt"
TINY_FILE = "flashface_tiny.ckpt"
SD15_FILE = "v1-5-pruned-emaonly.safetensors"
DETECTOR_FILE = "retinaface_resnet50.pth"
DETECTOR_SOURCE = GOLDEN_FACES_DIR / "retinaface_random" / "retinaface_resnet50_random.pth"
FACES = ["man_face/1.png", "man_face/2.png", "man_face/3.png", "man_face/4.png",
         "woman_face/1.png", "woman_face/2.png", "woman_face/3.png", "woman_face/4.png"]
PHOTO_SIZE = 320
# The folders an extra_model_paths.yaml must name for ComfyUI to search them.
FOLDERS = ("flashface", "checkpoints", "facedetection", "flashface_identities")


def golden_checkpoint() -> Path:
    found = sorted(GOLDEN_DIR.glob(f"*/{TINY_FILE}"))
    if not found:
        pytest.skip(f"no golden {TINY_FILE} under {GOLDEN_DIR}")
    return found[0]


def write_sd15_checkpoint(path: Path):
    """The random SD1.5-layout checkpoint described above (about 300 MB of fp16)."""
    import safetensors.torch
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.sd1_clip import SDClipModel
    from comfy.taesd.taesd import TAESD

    with torch.device("meta"):
        unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                         channel_mult=(1,), num_heads=8, transformer_depth=[1], transformer_depth_output=[1, 1],
                         transformer_depth_middle=1, context_dim=768, use_spatial_transformer=True,
                         use_linear_in_transformer=False)
        clip = SDClipModel()
        vae = TAESD()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for prefix, module in (("model.diffusion_model.", unet), ("cond_stage_model.", clip), ("first_stage_model.", vae)):
        for key, value in module.state_dict().items():
            if value.ndim == 0:  # TAESD's latent scale and shift
                state[prefix + key] = torch.tensor(1.0 if key.endswith("scale") else 0.0)
            elif value.is_floating_point():
                state[prefix + key] = (torch.randn(value.shape, generator=generator) * 0.02).half()
            else:
                state[prefix + key] = torch.zeros(value.shape, dtype=value.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    safetensors.torch.save_file(state, str(partial))
    partial.rename(path)


def sd15_checkpoint(cache: Path) -> Path:
    path = cache / SD15_FILE
    if not path.is_file():
        write_sd15_checkpoint(path)
    return path


def _thumbnail(source: Path, target: Path, size: int = PHOTO_SIZE):
    with Image.open(source) as photo:
        rgb = photo.convert("RGB")
    rgb.thumbnail((size, size))
    rgb.save(target)


def fill_models(models: Path, cache: Path):
    """Put every model file of the graphs under ``models`` (links to the golden and cached files)."""
    if not DETECTOR_SOURCE.is_file():
        pytest.skip(f"no golden RetinaFace weights at {DETECTOR_SOURCE}")
    for folder in FOLDERS:
        (models / folder).mkdir(parents=True, exist_ok=True)
    golden = golden_checkpoint()
    (models / "flashface" / TINY_FILE).symlink_to(golden)
    (models / "flashface" / FLASHFACE_FILE).symlink_to(golden)
    (models / "checkpoints" / SD15_FILE).symlink_to(sd15_checkpoint(cache))
    (models / "facedetection" / DETECTOR_FILE).symlink_to(DETECTOR_SOURCE)


def fill_inputs(input_dir: Path):
    """The photos the shipped graphs load, by the names they use."""
    if not FACES_DIR.is_dir():
        pytest.skip(f"no reference photos at {FACES_DIR}")
    for index, source in enumerate(FACES, start=1):
        _thumbnail(FACES_DIR / source, input_dir / f"face_{index}.png")
    _thumbnail(FACES_DIR / "snow_white.png", input_dir / "character.png", 224)
    write_masked_photo(input_dir / "photo.png")


def write_masked_photo(path: Path, size: int = 128):
    """A photo whose transparent middle is the painted face mask (Load Image's mask = 1 - alpha)."""
    with Image.open(FACES_DIR / FACES[0]) as photo:
        rgba = photo.convert("RGB").resize((size, size)).convert("RGBA")
    alpha = Image.new("L", (size, size), 255)
    alpha.paste(0, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    rgba.putalpha(alpha)
    rgba.save(path)
