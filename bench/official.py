"""The official FlashFace U-Net, driven as its demo drives it, to time beside the pack's.

Used by ``bench/speed.py --official DIR``, where DIR is a checkout of ali-vilab/FlashFace.
Only the U-Net's two files are imported (``ldm/models/unet.py`` and
``flashface/all_finetune/models/reference_unet.py``): the official packages' ``__init__``
files import the demo's tokenizer and its dependencies, which the U-Net does not need.
The official forward calls ``.cuda()``; on another device those calls go to that device
while the official code runs, and nothing else of it is changed.
"""

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

UNET_FILE = Path("ldm/models/unet.py")
REFERENCE_UNET_FILE = Path("flashface/all_finetune/models/reference_unet.py")


def check_checkout(checkout: Path) -> Path:
    """The checkout's path, or a SystemExit that says which official file is missing."""
    checkout = Path(checkout).expanduser().resolve()
    for relative in (UNET_FILE, REFERENCE_UNET_FILE):
        if not (checkout / relative).is_file():
            raise SystemExit(
                f"--official {checkout}: {relative} is missing. Pass a checkout of "
                f"https://github.com/ali-vilab/FlashFace (git clone https://github.com/ali-vilab/FlashFace)."
            )
    return checkout


def _import_reference_unet(checkout: Path) -> types.ModuleType:
    for package in ("ldm", "ldm.models", "ldm.ops"):  # bare packages: their __init__ files are not run
        module = sys.modules.get(package)
        folder = str(checkout / package.replace(".", "/"))
        if module is None:
            module = types.ModuleType(package)
            module.__path__ = [folder]
            sys.modules[package] = module
        elif list(getattr(module, "__path__", [])) != [folder]:
            raise SystemExit(f"--official: another module named {package} is already imported ({module!r}).")
    importlib.import_module("ldm.models.unet")
    spec = importlib.util.spec_from_file_location("flashface_official_reference_unet", checkout / REFERENCE_UNET_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_attention(device: torch.device) -> str:
    """What the official ``scaled_dot_product_attention`` runs: flash_attn's kernel in half
    precision where that package is installed on CUDA, else PyTorch's."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attn"
    return "torch scaled_dot_product_attention"


@contextlib.contextmanager
def cuda_calls_go_to(device: torch.device):
    """Send the official code's ``.cuda()`` calls to ``device`` (nothing changes on CUDA)."""
    if device.type == "cuda":
        yield
        return
    tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(device)
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda


def build_official_unet(checkout: Path, model_channels: int, device: torch.device, seed: int) -> torch.nn.Module:
    """The official RefStableUNet as the demo builds it (5-channel input), random weights N(0, 0.02), float32."""
    module = _import_reference_unet(checkout)
    with cuda_calls_go_to(device):
        unet = module.sd_v1_ref_unet(dim=model_channels, device=device)
        unet.replace_input_conv()
    unet.eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return unet


class OfficialStep:
    """One official guidance step's U-Net call, set up as ``demo_gradio.generate`` and
    ``ContextGaussianDiffusion.denoise`` set it up: the reference pass and the main pass
    over the batched conditions, in one forward."""

    def __init__(self, unet, references: torch.Tensor, negative: torch.Tensor, face_mask: torch.Tensor, batch: int,
                 autocast_dtype: torch.dtype | None):
        self.unet, self.autocast_dtype = unet, autocast_dtype
        self.device = next(unet.parameters()).device
        self.unet.share_cache.update({
            "num_pairs": len(references),
            "ref": references.to(self.device),
            "ref_context": negative.to(self.device).repeat(len(references), 1, 1),
            "masks": face_mask.to(self.device)[None].repeat(batch, 1, 1),
        })

    def __call__(self, x: torch.Tensor, contexts: list, similarity: float, timestep: int) -> torch.Tensor:
        """``contexts`` in the official order: [positive, negative] (similarity on both rows)
        or [positive, positive, negative] (similarity on the first row only)."""
        batch = x.shape[0]
        self.unet.share_cache["similarity"] = torch.tensor(similarity, device=self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with cuda_calls_go_to(self.device), autocast:
            return self.unet(
                x.to(self.device).repeat(len(contexts), 1, 1, 1),
                t=torch.full((batch,), timestep, device=self.device),
                context=torch.cat([c.to(self.device).expand(batch, -1, -1) for c in contexts]),
            )
