"""The downloader against the user's own files and real file-system failures, and the model folders
against the user's extra_model_paths.yaml.

huggingface_hub is faked as in test_download.py; links, folders, locks and ComfyUI's file lists are
real. Errors a test cannot provoke as root (who may write anywhere) are raised as the real
``OSError`` with its errno from the call that meets them.
"""

import copy
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_download import _fake_hub, _small_file

from comfyui_flashface.flashface_core.model_files import catalog
from comfyui_flashface.flashface_core.tools import downloader as download
from comfyui_flashface.flashface_core.tools.downloader import DownloadError

huggingface_hub = pytest.importorskip("huggingface_hub")
CONTENT = b"flashface weights" * 100
PACK = Path(__file__).resolve().parents[1]


def _hub_must_not_run(**kwargs):
    raise AssertionError("nothing may be downloaded")


def _error(err: str) -> str:
    """The command's error (from its ``error:`` line on; its info lines may come before it)."""
    return err[err.index("error: "):]


def _small_run(tmp_path, monkeypatch, hub):
    """The downloader's main() on a small flashface.ckpt into tmp_path/flashface."""
    monkeypatch.setattr(download, "select_files", lambda sd15, detector_only: [_small_file(CONTENT)])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    return download.main(["--models-dir", str(tmp_path)])


# Files and links of the user's at the target


def test_a_dangling_link_at_the_target_is_kept_and_reported(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "flashface"
    folder.mkdir()
    link = folder / "flashface.ckpt"
    link.symlink_to(tmp_path / "elsewhere" / "flashface.ckpt")
    assert _small_run(tmp_path, monkeypatch, _hub_must_not_run) == 1
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"error: {link} is a link to {tmp_path / 'elsewhere' / 'flashface.ckpt'}, which does not exist.")
    assert "remove the link" in err
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "elsewhere" / "flashface.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["flashface.ckpt"]


def test_a_folder_at_the_target_is_kept_and_reported_before_downloading(tmp_path, monkeypatch, capsys):
    target = tmp_path / "flashface" / "flashface.ckpt"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("the user's", encoding="utf-8")
    assert _small_run(tmp_path, monkeypatch, _hub_must_not_run) == 1
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"error: {target} is a folder, where the file flashface.ckpt belongs.")
    assert (target / "mine.txt").read_text(encoding="utf-8") == "the user's"


def test_a_file_put_at_the_target_during_the_download_is_not_replaced(tmp_path, monkeypatch, capsys):
    target = tmp_path / "flashface" / "flashface.ckpt"
    fake = _fake_hub(CONTENT, [])

    def user_saves_a_file_meanwhile(**kwargs):
        target.write_bytes(b"the user's own")
        return fake(**kwargs)

    assert _small_run(tmp_path, monkeypatch, user_saves_a_file_meanwhile) == 1
    assert "appeared while downloading" in capsys.readouterr().err
    assert target.read_bytes() == b"the user's own"


# The disk's errors are the disk's, the network's the network's


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "The disk is full"),
    (errno.EACCES, "Make that folder writable"),
    (errno.EROFS, "read-only"),
])
def test_a_disk_error_while_downloading_says_what_it_is_not_check_the_connection(tmp_path, monkeypatch, capsys, code, words):
    def disk_fails(repo_id, filename, local_dir, **kwargs):
        partial = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{filename}.incomplete"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"half")
        raise OSError(code, os.strerror(code), str(partial))

    assert _small_run(tmp_path, monkeypatch, disk_fails) == 1
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"error: Could not save flashface.ckpt in {tmp_path / 'flashface'}: ")
    assert os.strerror(code) in err and words in err
    assert "internet" not in err
    assert "it resumes where it stopped" in err


def test_a_full_disk_during_a_write_without_a_file_name_names_the_staging_folder(tmp_path, monkeypatch, capsys):
    def disk_full(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    assert _small_run(tmp_path, monkeypatch, disk_full) == 1
    err = _error(capsys.readouterr().err)
    assert f"{tmp_path / 'flashface' / download.STAGING}: No space left on device. The disk is full" in err


def test_a_network_error_stays_a_network_error(tmp_path, monkeypatch, capsys):
    def offline(**kwargs):
        raise huggingface_hub.errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    assert _small_run(tmp_path, monkeypatch, offline) == 1
    err = _error(capsys.readouterr().err)
    assert err.startswith("error: Could not download flashface.ckpt from ") and "Check the internet connection" in err


def test_permission_denied_on_the_final_rename_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    real_replace = os.replace
    target = tmp_path / "flashface" / "flashface.ckpt"

    def denied(src, dst):
        if Path(dst) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", denied)
    assert _small_run(tmp_path, monkeypatch, _fake_hub(CONTENT, [])) == 1
    err = _error(capsys.readouterr().err)
    assert err.startswith("error: Could not save flashface.ckpt in ") and "Permission denied" in err
    assert "Make that folder writable" in err and not target.exists()


def test_a_staging_folder_on_another_disk_is_copied_beside_the_target(tmp_path, monkeypatch):
    real_replace = os.replace
    target = tmp_path / "flashface" / "flashface.ckpt"

    def cross_device(src, dst):
        if Path(dst) == target and Path(src).parent != target.parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", cross_device)
    assert _small_run(tmp_path, monkeypatch, _fake_hub(CONTENT, [])) == 0
    assert target.read_bytes() == CONTENT
    assert sorted(p.name for p in target.parent.iterdir()) == ["flashface.ckpt"]


# Staging is invisible to ComfyUI's file lists


@pytest.fixture
def comfy_folders(monkeypatch):
    """ComfyUI's real folder_paths with its folder table restored after the test."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder_paths


@pytest.mark.host
def test_no_staged_file_is_ever_in_comfyuis_list_and_an_interrupted_check_resumes(tmp_path, monkeypatch, comfy_folders):
    from comfyui_flashface.flashface_core.model_files.folders import CHECKPOINT_EXTENSIONS

    folder = tmp_path / "flashface"
    comfy_folders.folder_names_and_paths["flashface"] = ([str(folder)], set(CHECKPOINT_EXTENSIONS))

    def listed():
        return comfy_folders.get_filename_list_("flashface")[0]

    seen = []
    fake = _fake_hub(CONTENT, [])

    def hub(**kwargs):
        seen.append(("downloading", listed()))
        return fake(**kwargs)

    real_sha256 = download.sha256_of

    def interrupted(path, progress=True):
        seen.append(("checking", listed()))
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(download, "sha256_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download.fetch(_small_file(CONTENT), folder, progress=False)
    assert seen == [("downloading", []), ("checking", [])]
    assert listed() == []  # the complete, unchecked file is not offered to Load FlashFace
    assert comfy_folders.get_full_path("flashface", f"{download.STAGING}/flashface.ckpt") is None

    monkeypatch.setattr(download, "sha256_of", real_sha256)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _hub_must_not_run)  # the staged file is checked, not fetched again
    assert download.fetch(_small_file(CONTENT), folder, progress=False) == folder / "flashface.ckpt"
    assert listed() == ["flashface.ckpt"]
    assert sorted(p.name for p in folder.iterdir()) == ["flashface.ckpt"]


# One downloader per folder


def test_a_second_downloader_into_the_same_folder_stops_and_leaves_the_first_ones_files(tmp_path, monkeypatch):
    from comfyui_flashface.flashface_core.tools import download_staging

    folder = tmp_path / "flashface"
    fake = _fake_hub(CONTENT, [])
    second = []

    def hub(**kwargs):
        staged = fake(**kwargs)
        with pytest.raises(DownloadError) as stopped:
            download.fetch(_small_file(CONTENT), folder, progress=False)
        second.append(str(stopped.value))
        assert Path(staged).is_file()
        return staged

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    assert download.fetch(_small_file(CONTENT), folder, progress=False).read_bytes() == CONTENT
    assert second == [
        f"Another download into {folder} is running (process {os.getpid()} on {socket.gethostname()}). "
        f"Let it finish, then run this command again. If no download is running, delete {folder / download_staging.LOCK} "
        "and run it again."
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["flashface.ckpt"]  # the lock is gone too


def test_the_lock_of_a_process_that_died_is_taken_over(tmp_path, monkeypatch):
    from comfyui_flashface.flashface_core.tools import download_staging

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "flashface"
    folder.mkdir()
    (folder / download_staging.LOCK).write_text(f"{dead.pid} {socket.gethostname()}\n", encoding="utf-8")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(CONTENT, []))
    assert download.fetch(_small_file(CONTENT), folder, progress=False).read_bytes() == CONTENT
    assert not (folder / download_staging.LOCK).exists()


# --dry-run checks what the real run checks, without hashing


def test_dry_run_reports_a_wrong_sized_file_in_place(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "flashface"
    folder.mkdir()
    (folder / "flashface.ckpt").write_bytes(b"x" * 42)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _hub_must_not_run)
    assert download.main(["--dry-run", "--models-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert (f"status: stop: {folder / 'flashface.ckpt'} is 42 bytes, not the official {catalog.FLASHFACE.size:,}: "
            "it may be an unfinished copy.") in captured.out
    assert "already there" not in captured.out.split("retinaface_resnet50.pth:")[0]
    assert captured.err.startswith("error: the download would stop: 1 of the files need you first")


def test_dry_run_says_a_right_sized_file_is_there_and_what_was_checked(tmp_path, monkeypatch, capsys):
    file = _small_file(CONTENT)
    (tmp_path / "flashface").mkdir()
    (tmp_path / "flashface" / "flashface.ckpt").write_bytes(CONTENT)
    assert download.run([file], download.ModelFolders(tmp_path), dry_run=True) == 0
    out = capsys.readouterr().out
    assert f"status: already there: {tmp_path / 'flashface' / 'flashface.ckpt'} ({file.size:,} bytes, the official size)" in out


def test_dry_run_reports_a_dangling_link_and_too_little_space(tmp_path, monkeypatch, capsys):
    (tmp_path / "flashface").mkdir()
    (tmp_path / "flashface" / "flashface.ckpt").symlink_to(tmp_path / "gone")
    monkeypatch.setattr(download, "_free_space", lambda folder: 5_000_000)
    assert download.main(["--dry-run", "--models-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"status: stop: {tmp_path / 'flashface' / 'flashface.ckpt'} is a link to {tmp_path / 'gone'}, which does not exist." in out
    assert (f"status: to download; but retinaface_resnet50.pth needs 110 MB but {tmp_path / 'facedetection'} "
            "has 5 MB free. Free space first.") in out


# The model folders follow the user's extra_model_paths.yaml


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "extra_model_paths.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.host
def test_a_yaml_that_names_the_folders_keeps_only_the_users_paths(tmp_path, comfy_folders):
    """As ComfyUI starts: main.py reads the YAML, then imports the pack, which registers its folders."""
    from utils.extra_config import load_extra_path_config

    from comfyui_flashface.flashface_core.model_files import folders, messages

    for name in (folders.FLASHFACE, folders.FACE_DETECTION, folders.INSIGHTFACE):
        comfy_folders.folder_names_and_paths.pop(name, None)
    mine = tmp_path / "mine"
    (mine / "flashface").mkdir(parents=True)
    (mine / "flashface" / "flashface.ckpt").write_bytes(b"weights")
    (mine / "flashface" / "notes.txt").write_text("not a model", encoding="utf-8")
    load_extra_path_config(str(_yaml(tmp_path, f"mine:\n  base_path: {mine}\n  flashface: flashface\n  facedetection: faces\n")))
    folders.register_model_folders()

    def paths(name):
        return comfy_folders.get_folder_paths(name)

    default = Path(comfy_folders.models_dir)
    assert paths("flashface") == [str(mine / "flashface")]
    assert paths("facedetection") == [str(mine / "faces")]
    assert paths("insightface") == [str(default / "insightface")]  # the YAML leaves it out: the default
    assert comfy_folders.get_filename_list_("flashface")[0] == ["flashface.ckpt"]  # the pack's extensions

    # Looking files up (validation, the detector, the insightface packs) registers nothing again.
    assert messages.check_in_folder(folders.FLASHFACE, "flashface.ckpt", catalog.FLASHFACE) is None
    assert "not in any of" in messages.missing_detector_message()
    assert folders.detector_folders() == [str(mine / "flashface"), str(mine / "faces")]
    assert folders.insightface_roots() == [str(default / "insightface")]
    assert paths("flashface") == [str(mine / "flashface")] and paths("facedetection") == [str(mine / "faces")]


@pytest.mark.host
def test_the_downloader_saves_where_a_yaml_puts_the_folder(tmp_path, comfy_folders):
    comfy_folders.folder_names_and_paths.pop("flashface", None)
    mine = tmp_path / "mine"
    yaml = _yaml(tmp_path, f"mine:\n  base_path: {mine}\n  flashface: flashface\n")
    folders = download.ModelFolders(extra_configs=(yaml,))
    assert folders.destination("flashface") == mine / "flashface"
    assert comfy_folders.get_folder_paths("flashface") == [str(mine / "flashface")]


# The tools' one-line errors and --help


@pytest.mark.parametrize("command", ["download", "convert", "verify_golden"])
def test_help_is_plain_text(command):
    result = subprocess.run([sys.executable, "-m", f"flashface_core.{command}", "--help"], cwd=PACK,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "``" not in result.stdout and "usage:" in result.stdout


def test_convert_errors_begin_with_error(tmp_path, capsys, monkeypatch):
    from comfyui_flashface.flashface_core.tools import converter

    target = tmp_path / "out.safetensors"
    target.write_bytes(b"")
    assert converter.main([str(tmp_path / "in.ckpt"), str(target)]) == 2
    assert capsys.readouterr().err == f"error: {target} exists; choose another name or remove it first.\n"

    def disk_full(source, target, dtype):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(converter, "convert_file", disk_full)
    assert converter.main([str(tmp_path / "in.ckpt"), str(tmp_path / "new.safetensors")]) == 1
    assert capsys.readouterr().err == (
        f"error: Could not convert {tmp_path / 'in.ckpt'} to {tmp_path / 'new.safetensors'}: "
        f"{tmp_path / 'new.safetensors'}: No space left on device. The disk is full: free space on it, or use a "
        "folder on another disk.\n")


def test_a_conversion_cut_short_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch
    from model_folder import golden_checkpoint

    from comfyui_flashface.flashface_core.tools import converter

    def disk_fills(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills)
    with pytest.raises(OSError):
        converter.convert_file(golden_checkpoint(), tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_verify_golden_without_sets_begins_with_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flashface_core.verify_golden", str(tmp_path)],
                            cwd=PACK, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: no golden sets")
