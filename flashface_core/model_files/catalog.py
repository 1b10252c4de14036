"""The official model files the shipped graphs name: where each comes from, where it goes, its size and hash."""

from dataclasses import dataclass

DOWNLOAD_COMMAND = "python -m flashface_core.download"


@dataclass(frozen=True)
class ModelFile:
    """One official file: where it comes from, the ComfyUI folders it belongs in, its size and hash."""

    repo_id: str
    filename: str
    folders: tuple[str, ...]  # ComfyUI folder names: the first is where it is saved, all are searched
    size: int  # bytes, from the repository's Git LFS pointer
    sha256: str
    role: str
    download_flag: str = ""  # the downloader's option that fetches this file

    @property
    def download_command(self) -> str:
        """The command that fetches this file, run from the pack's folder."""
        return f"{DOWNLOAD_COMMAND}{self.download_flag}"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"

    @property
    def folder(self) -> str:
        return self.folders[0]


# Sizes and hashes are those of the files' Git LFS pointers on huggingface.co (commits 7d746dd,
# 44dd5d1 of shilongz/FlashFace-SD1.5; the SD1.5 file is runwayml's original, mirrored unchanged).
FLASHFACE = ModelFile(
    repo_id="shilongz/FlashFace-SD1.5",
    filename="flashface.ckpt",
    folders=("flashface",),
    size=10_557_394_752,
    sha256="9dd549616927198ffcce8206d79797a5b49bf0ceb62db94b1e893177ee60a46c",
    role="FlashFace-SD1.5 weights (fp32, both U-Nets)",
)
DETECTOR = ModelFile(
    repo_id="shilongz/FlashFace-SD1.5",
    filename="retinaface_resnet50.pth",
    folders=("facedetection", "flashface"),
    size=109_559_089,
    sha256="1883281fdd48d43a0aec46dfeb3bcbba3ee17d62386201b6748a6c6df97d1345",
    role="the official face detector (RetinaFace ResNet-50)",
    download_flag=" --detector",
)
SD15 = ModelFile(
    repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    filename="v1-5-pruned-emaonly.safetensors",
    folders=("checkpoints",),
    size=4_265_146_304,
    sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    role="an SD1.5 checkpoint, for its CLIP text encoder and VAE",
    download_flag=" --sd15",
)
FILES = (FLASHFACE, DETECTOR, SD15)


def human_size(size: int) -> str:
    """Decimal units, as huggingface.co shows them."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.0f} MB"
