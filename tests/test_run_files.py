"""The runner's files (in-process, and two command-line runs that stop before ComfyUI runs anything):
photos PIL refuses, image names a graph gives (inside ComfyUI's input folder as its Load Image reads
them, or refused), what a missing photo asks for, the run's photo folder, the output names two runs
share, and the default output folder.
"""

import json
import threading
import types
from pathlib import Path

import pytest
from conftest import FACES_DIR, ROOT
from PIL import Image
from test_run import runner

from comfyui_flashface.flashface_core.tools.run_graph import RunError
from comfyui_flashface.flashface_core.tools.run_photos import Folders, RunInputs, check_graph_images, check_photo, claim

pytestmark = pytest.mark.host


# Photos


def test_a_400_megapixel_photo_of_a_few_kb_is_refused(tmp_path):
    photo = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(photo)
    assert photo.stat().st_size < 100_000
    with pytest.raises(RunError, match=r"huge.png: too many pixels for a photo \(Image size \(400000000 pixels\)"):
        check_photo(str(photo))


def test_a_photo_over_pils_warning_size_is_refused_too(tmp_path):
    photo = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(photo)  # 100 megapixels: PIL's DecompressionBombWarning
    with pytest.raises(RunError, match="big.png: too many pixels"):
        check_photo(str(photo))


def test_an_extreme_aspect_ratio_is_a_photo(tmp_path):
    """64x300000: the runner passes it on (the encoder answers for what it does with it)."""
    photo = tmp_path / "strip.png"
    Image.new("L", (64, 300000)).save(photo)
    assert check_photo(str(photo)) == photo.resolve()


@pytest.mark.parametrize("case, message", [("folder", "a folder, not a photo"), ("missing", "no such photo"),
                                           ("unreadable", "cannot be read \\(permission denied\\)"),
                                           ("truncated", "not an image ComfyUI can read")])
def test_photos_that_cannot_be_read_say_why(case, message, tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    if case == "folder":
        photo.mkdir()
    elif case == "unreadable":  # (the tests may run as root, who reads any file)
        photo.write_bytes(b"")
        monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    elif case == "truncated":
        Image.new("RGB", (64, 64), "red").save(photo)
        photo.write_bytes(photo.read_bytes()[:60])
    with pytest.raises(RunError, match=f"^{photo}: {message}"):
        check_photo(str(photo))


# Image names a graph gives


@pytest.fixture
def folders(tmp_path) -> Folders:
    folders = Folders(input=tmp_path / "input", output=tmp_path / "output", temp=tmp_path / "temp")
    for folder in (folders.input / "people", folders.output, folders.temp):
        folder.mkdir(parents=True)
    for path in (folders.input / "face.png", folders.input / "people" / "ann.png", folders.output / "done.png"):
        Image.new("RGB", (8, 8)).save(path)
    return folders


@pytest.mark.parametrize("name, where", [
    ("face.png", "input/face.png"), ("people/ann.png", "input/people/ann.png"), ("face.png [input]", "input/face.png"),
    ("done.png [output]", "output/done.png"), ("x.png [temp]", "temp/x.png"), ("people/../face.png", "input/face.png"),
    ("../secret.txt", None), ("people/../../secret.txt", None), ("/etc/passwd", None), ("../output/done.png", None),
    ("../input/face.png [output]", None), ("..", None),
])
def test_image_names_resolve_as_comfyuis_load_image_reads_them_inside_their_folder(folders, tmp_path, name, where):
    expected = None if where is None else tmp_path / where
    assert folders.image_path(name) == expected


def load_image(name: str, title: str = "Load Image") -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": name}, "_meta": {"title": title}}


def test_a_name_outside_the_input_folder_is_refused_naming_the_node(folders):
    prompt = {"7": load_image("../secret.txt", "Extra photo")}
    with pytest.raises(RunError, match=r"^node 7 \(Extra photo\): the image name '../secret.txt' points outside"):
        check_graph_images(prompt, folders, set(), [], ["7"])


def test_the_runner_copies_nothing_a_graph_names_outside_the_input_folder(tmp_path):
    """As reproduced in the issue: an extra Load Image named ../../somewhere/private.txt. One line naming the node,
    exit status 2, and the file is nowhere else."""
    private = tmp_path / "somewhere" / "private.txt"
    private.parent.mkdir()
    private.write_text("private")
    inputs = tmp_path / "comfy" / "input"
    inputs.mkdir(parents=True)
    graph = json.loads((ROOT / "workflows" / "api" / "flashface_from_photos.json").read_text())
    graph["99"] = load_image("../../somewhere/private.txt", "Shared extra")
    graph["100"] = {"class_type": "PreviewImage", "inputs": {"images": ["99", 0]}}
    (tmp_path / "graph.json").write_text(json.dumps(graph))
    result = runner(str(tmp_path / "graph.json"), "--ref", str(FACES_DIR / "man_face" / "1.png"), "--out",
                    str(tmp_path / "comfy" / "output"), "--input-directory", str(inputs), "--no-custom-nodes")
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: node 99 (Shared extra): the image name '../../somewhere/private.txt' points outside")
    assert "Traceback" not in result.stderr
    assert [path for path in tmp_path.rglob("*") if path.is_file() and path.read_bytes() == b"private"] == [private]
    assert not any(inputs.iterdir())  # no photo of the run left either


def test_names_in_the_folders_are_fine_and_output_ones_are_named_for_the_run(folders):
    prompt = {"1": load_image("face.png"), "2": load_image("people/ann.png"), "3": load_image("done.png [output]")}
    assert check_graph_images(prompt, folders, set(), ["1"], ["2", "3"]) == [folders.output / "done.png"]


@pytest.fixture
def face_inpaint() -> dict:
    return json.loads((ROOT / "workflows" / "api" / "flashface_face_inpaint.json").read_text())


def test_missing_reference_photos_say_how_many_ref_the_graph_takes(folders, face_inpaint):
    with pytest.raises(RunError) as error:
        check_graph_images(face_inpaint, folders, set(), ["3", "4"], ["9"])
    lines = str(error.value).splitlines()
    assert len(lines) == 3  # the two reference photos and the photo to change
    assert lines[0].startswith("node 3 (Reference photo 1) reads face_1.png, which is not in ComfyUI's input folder")
    assert "this graph takes 2 reference photo(s) (Load Image nodes 3, 4); give yours with --ref PHOTO" in lines[0]
    assert "give the photo with --photo PHOTO, a PNG whose transparent pixels cover the face" in lines[2]


def test_without_ref_the_graphs_own_photos_in_the_input_folder_are_used(folders, face_inpaint):
    for name in ("face_1.png", "face_2.png", "photo.png"):
        Image.new("RGB", (8, 8)).save(folders.input / name)
    assert check_graph_images(face_inpaint, folders, set(), ["3", "4"], ["9"]) == []


def test_a_missing_ref_is_said_before_comfyui_validates(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    result = runner("from_photos", "--prompt", "a man", "--out", str(tmp_path / "out"), "--input-directory", str(inputs),
                    "--no-custom-nodes")
    assert result.returncode == 2, result.stderr
    assert "Custom validation failed" not in result.stderr and "Traceback" not in result.stderr
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines()]
    assert "this graph takes 3 reference photo(s)" in lines[-3] and "--ref PHOTO" in lines[-3], result.stderr
    assert len(lines) >= 3 and not any(inputs.iterdir())


# The run's photos and outputs


def test_the_runs_photos_go_to_a_new_folder_of_the_input_folder(tmp_path):
    source = tmp_path / "Me.JPG"
    source.write_bytes(b"photo")
    first, second = RunInputs(tmp_path / "input"), RunInputs(tmp_path / "input")
    assert first.name("ref", 1, source) == f"flashface-run/{first.run_id}/ref01.jpg" and first.run_id != second.run_id
    second.name("ref", 1, source)
    first.create()
    second.create()
    assert (tmp_path / "input" / first.name("ref", 1, source)).read_bytes() == b"photo"
    first.remove()
    assert not first.folder.exists() and second.folder.is_dir()
    second.remove()
    assert not (tmp_path / "input" / "flashface-run").exists()


def test_two_runs_saving_one_name_keep_both_images(tmp_path):
    """ComfyUI's Save Image numbers from the files it sees, so two runs can pick FlashFace_00001_.png; each
    run's images are claimed under a free name."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "FlashFace_00001_.png").write_bytes(b"another run's")
    staged = []
    for run in range(8):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        (folder / "FlashFace_00001_.png").write_bytes(f"run {run}".encode())
        staged.append(folder / "FlashFace_00001_.png")
    claimed = []
    threads = [threading.Thread(target=lambda path=path: claimed.append(claim(path, out))) for path in staged]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(path.read_bytes() for path in out.iterdir()) == sorted([b"another run's"] + [f"run {run}".encode() for run in range(8)])
    assert sorted(path.name for path in claimed) == [f"FlashFace_{i:05}_.png" for i in range(2, 10)]


def test_the_default_output_folder_is_comfyuis(tmp_path):
    import folder_paths

    from comfyui_flashface.flashface_core.tools import runner as run

    args = types.SimpleNamespace(out=None, input_directory=None)
    folders = run.comfy_folders(args, tmp_path)
    assert folders.output == Path(folder_paths.get_output_directory()).resolve()
    assert folders.input == Path(folder_paths.get_input_directory()).resolve()
    assert not folders.output.is_relative_to(ROOT)
