"""The downloader: its file list against the model guide, and fetching with huggingface_hub mocked.

No test touches the network: ``huggingface_hub.hf_hub_download`` is replaced by fakes that
write a file the way it does (into ``local_dir``) or fail the way it does offline.
"""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_flashface.flashface_core.model_files import catalog
from comfyui_flashface.flashface_core.model_files.catalog import ModelFile
from comfyui_flashface.flashface_core.tools import downloader as download
from comfyui_flashface.flashface_core.tools.downloader import DownloadError

PACK = Path(__file__).resolve().parents[1]
GUIDE = PACK / "models" / "README.md"
README = PACK / "README.md"
huggingface_hub = pytest.importorskip("huggingface_hub")


def _guide_table() -> dict[str, dict]:
    """The model guide's download table: file name -> its link, folder, size and hash."""
    table = {}
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match and "huggingface.co" in line:
            table[match.group(1)] = {
                "url": re.search(r"\((https://huggingface\.co/[^)]+)\)", line).group(1),
                "folder": re.search(r"`models/([^/`]+)/`", line).group(1),
                "size": int(re.search(r"([\d,]+) bytes", line).group(1).replace(",", "")),
                "sha256": re.search(r"`([0-9a-f]{64})`", line).group(1),
            }
    return table


def _dry_run_listing(text: str) -> dict[str, dict]:
    """--dry-run's output: file name -> its source, destination, folder, size and hash."""
    listing = {}
    for block in re.split(r"\n(?=\S+: )", text.strip()):
        name = block.split(":", 1)[0]
        if "\n  from:" not in block:
            continue
        field = dict(re.findall(r"^  (\w+): +(.*)$", block, re.MULTILINE))
        listing[name] = {
            "url": field["from"],
            "destination": field["to"].split("  (", 1)[0],
            "folder": re.search(r"models/([^/]+)/", field["to"]).group(1),
            "size": int(re.search(r"\(([\d,]+) bytes\)", field["size"]).group(1).replace(",", "")),
            "sha256": field["sha256"],
        }
    return listing


def test_dry_run_lists_what_the_model_guide_lists_and_fetches_nothing(tmp_path, capsys, monkeypatch):
    def no_download(**kwargs):
        raise AssertionError("--dry-run must not download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert download.main(["--dry-run", "--sd15", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    listing = _dry_run_listing(out)
    guide = _guide_table()
    assert set(listing) == set(guide) == {"flashface.ckpt", "retinaface_resnet50.pth", "v1-5-pruned-emaonly.safetensors"}
    for name, entry in listing.items():
        assert entry["destination"] == str(tmp_path / entry["folder"])
        assert {key: entry[key] for key in ("url", "folder", "size", "sha256")} == guide[name]
    total = catalog.human_size(sum(entry["size"] for entry in guide.values()))
    assert f"3 of 3 files to download, {total} in all." in out
    assert list(tmp_path.iterdir()) == []


def test_the_guides_show_each_size_as_huggingface_co_does():
    text = GUIDE.read_text(encoding="utf-8")
    readme_rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    for file in catalog.FILES:
        assert f"{catalog.human_size(file.size)} ({file.size:,} bytes)" in text
        row = next(line for line in readme_rows if line.startswith(f"| `{file.filename}`"))
        assert f"| {catalog.human_size(file.size)} | `models/{file.folder}/`" in row


def test_a_selected_file_lands_in_its_comfyui_folder(tmp_path, monkeypatch):
    content = b"detector weights" * 64
    file = ModelFile(repo_id="shilongz/FlashFace-SD1.5", filename="retinaface_resnet50.pth",
                     folders=("facedetection", "flashface"), size=len(content),
                     sha256=hashlib.sha256(content).hexdigest(), role="test")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(content, []))
    assert download.run([file], download.ModelFolders(tmp_path), dry_run=False) == 0
    assert (tmp_path / "facedetection" / "retinaface_resnet50.pth").read_bytes() == content
    assert not (tmp_path / "flashface").exists()


def test_the_windows_portable_line_works_in_isolated_mode(tmp_path):
    """The README's -c form for the embedded Python, whose ._pth file means isolated mode (-I)."""
    line = next(line for line in README.read_text(encoding="utf-8").splitlines() if "from flashface_core.download import main" in line)
    code = re.search(r'-c "([^"]+)"', line).group(1).replace(r"ComfyUI\custom_nodes\ComfyUI-FlashFace", str(PACK))
    result = subprocess.run([sys.executable, "-I", "-c", code, "--dry-run", "--models-dir", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"to:     {tmp_path / 'flashface'}  " in result.stdout


def test_selection_flags():
    assert download.select_files(sd15=False, detector_only=False) == [catalog.FLASHFACE, catalog.DETECTOR]
    assert download.select_files(sd15=True, detector_only=False) == list(catalog.FILES)
    assert download.select_files(sd15=False, detector_only=True) == [catalog.DETECTOR]


def _small_file(content=b"flashface weights" * 100) -> ModelFile:
    return ModelFile(
        repo_id="shilongz/FlashFace-SD1.5", filename="flashface.ckpt", folders=("flashface",),
        size=len(content), sha256=hashlib.sha256(content).hexdigest(), role="test",
    )


def _fake_hub(content: bytes, calls: list):
    """Writes ``content`` as hf_hub_download does: an .incomplete file, then the name in local_dir."""

    def hf_hub_download(repo_id, filename, local_dir, **kwargs):
        calls.append((repo_id, filename, Path(local_dir)))
        incomplete = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{filename}.incomplete"
        incomplete.parent.mkdir(parents=True, exist_ok=True)
        incomplete.write_bytes(content)
        final = Path(local_dir) / filename
        incomplete.replace(final)
        return str(final)

    return hf_hub_download


def test_download_lands_in_the_folder_under_its_name_after_the_size_and_hash_check(tmp_path, monkeypatch):
    content = b"flashface weights" * 100
    file = _small_file(content)
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(content, calls))
    folder = tmp_path / "models" / "flashface"
    target = download.fetch(file, folder, progress=False)
    assert target == folder / "flashface.ckpt" and target.read_bytes() == content
    assert calls == [("shilongz/FlashFace-SD1.5", "flashface.ckpt", folder / download.STAGING)]
    assert sorted(p.name for p in folder.iterdir()) == ["flashface.ckpt"]  # staging removed


@pytest.mark.parametrize("damage", ["short", "other bytes"])
def test_a_wrong_download_is_deleted_and_never_gets_the_final_name(tmp_path, monkeypatch, damage):
    file = _small_file()
    wrong = b"flashface weights" * 50 if damage == "short" else b"x" * file.size
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(wrong, []))
    folder = tmp_path / "flashface"
    with pytest.raises(DownloadError, match="run the command again"):
        download.fetch(file, folder, progress=False)
    assert not (folder / file.filename).exists()
    assert not (folder / download.STAGING / file.filename).exists()


@pytest.mark.parametrize("partial", [b"", b"partial"], ids=["offline", "cut off"])
def test_no_network_gives_a_clear_error_and_no_file_under_the_final_name(tmp_path, monkeypatch, capsys, partial):
    def offline(repo_id, filename, local_dir, **kwargs):
        # A cut-off transfer leaves a partial file in the staging folder; no network leaves an empty one.
        incomplete = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{filename}.incomplete"
        incomplete.parent.mkdir(parents=True, exist_ok=True)
        incomplete.write_bytes(partial)
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub and we cannot find the requested "
            "files in the local cache. Please check your connection and try again."
        )

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert download.main(["--models-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "\nerror: Could not download flashface.ckpt from " + catalog.FLASHFACE.url in "\n" + err
    assert "run the command again: it resumes" in err
    assert not (tmp_path / "flashface" / "flashface.ckpt").exists()
    assert not (tmp_path / "facedetection" / "retinaface_resnet50.pth").exists()
    # A partial file is kept for the resume (under a name ComfyUI lists as no model); nothing else is left.
    kept = tmp_path / "flashface" / download.STAGING / ".cache/huggingface/download/flashface.ckpt.incomplete"
    assert kept.is_file() == bool(partial)
    assert (tmp_path / "flashface" / download.STAGING).exists() == bool(partial)


def test_a_file_already_in_place_is_not_downloaded_again_but_a_wrong_sized_one_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(b"", []))
    folder = tmp_path / "facedetection"
    folder.mkdir()
    (folder / catalog.DETECTOR.filename).write_bytes(b"too short")
    assert download.main(["--detector", "--models-dir", str(tmp_path)]) == 1
    assert "Delete or rename it" in capsys.readouterr().err
    assert download.main(["--detector", "--dry-run", "--models-dir", str(tmp_path)]) == 1  # as the real run
    assert f"status: stop: {folder / catalog.DETECTOR.filename} is 9 bytes, not the official" in capsys.readouterr().out


@pytest.mark.host
def test_folders_are_comfyuis_and_an_is_default_extra_path_comes_first(tmp_path, monkeypatch):
    import copy

    import folder_paths

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    folders = download.ModelFolders()
    models = Path(folder_paths.models_dir)
    assert folders.destination("flashface") == models / "flashface"
    assert folders.destination("checkpoints") == models / "checkpoints"
    assert folders.destination("facedetection") == models / "facedetection"

    shared = tmp_path / "shared"
    (shared / "flashface").mkdir(parents=True)
    (shared / "flashface" / "retinaface_resnet50.pth").write_bytes(b"detector")
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(f"mine:\n  base_path: {shared}\n  is_default: true\n  flashface: flashface\n", encoding="utf-8")
    folders = download.ModelFolders(extra_configs=(yaml,))
    assert folders.destination("flashface") == shared / "flashface"
    # The detector is also found where the pack looks for it besides models/facedetection.
    assert folders.existing(catalog.DETECTOR) == shared / "flashface" / "retinaface_resnet50.pth"


def test_missing_huggingface_hub_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub":
            raise ImportError("No module named 'huggingface_hub'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(DownloadError, match="pip install huggingface_hub"):
        download.fetch(_small_file(), tmp_path / "flashface", progress=False)
