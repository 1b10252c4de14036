"""The headless runner, ``python -m flashface_core.run``, as a user runs it.

Runs in a child process on the ComfyUI host with a temporary models folder (``model_folder``:
the tiny golden FlashFace, a random SD1.5-layout checkpoint, the random golden RetinaFace)
named by --extra-model-paths-config, at 64x64 and 2 steps. Bad input fails before ComfyUI
starts, with one line and exit status 2; missing model files are named with what to download.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import model_folder
import pytest
from conftest import FACES_DIR, HOST, ROOT
from PIL import Image

from comfyui_flashface.flashface_core.model_files import catalog

pytestmark = pytest.mark.host
TIMEOUT = 600


def runner(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMFYUI_PATH": str(HOST), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "flashface_core.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def models_yaml(base: Path) -> Path:
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"runner_test:\n  base_path: {base}\n" + "".join(f"  {f}: models/{f}\n" for f in model_folder.FOLDERS))
    return yaml


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("runner_models")
    model_folder.fill_models(base / "models", tmp_path_factory.getbasetemp() / "model_cache")
    return models_yaml(base)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    model_folder.fill_inputs(folder)
    return [folder / "face_1.png", folder / "face_5.png"]


def test_runner_writes_images_with_the_prompt_and_workflow(models, photos, tmp_path):
    out, inputs = tmp_path / "out", tmp_path / "input"
    result = runner("from_photos", "--ref", str(photos[0]), "--ref", str(photos[1]), "--prompt", "a man on a boat",
                    "--negative", "blurry", "--seed", "7", "--steps", "2", "--width", "64", "--height", "64",
                    "--out", str(out), "--input-directory", str(inputs), "--extra-model-paths-config", str(models),
                    "--no-custom-nodes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2" in result.stderr  # the progress bar reached the last step
    (png,) = sorted(out.glob("*.png"))
    assert f"saved {png}" in result.stderr

    with Image.open(png) as image:
        assert image.size == (64, 64)
        prompt, workflow = json.loads(image.info["prompt"]), json.loads(image.info["workflow"])
    # The options landed where the runner's documentation says, in the prompt and in the workflow.
    kinds = {node_id: node["class_type"] for node_id, node in prompt.items()}
    sampler = next(node for node in prompt.values() if node["class_type"] == "FlashFaceSampler")
    assert (sampler["inputs"]["seed"], sampler["inputs"]["steps"]) == (7, 2)
    assert prompt[sampler["inputs"]["positive"][0]]["inputs"]["text"] == "a man on a boat"
    assert prompt[sampler["inputs"]["negative"][0]]["inputs"]["text"] == "blurry"
    encoder = prompt[sampler["inputs"]["references"][0]]["inputs"]
    names = [prompt[encoder[name][0]]["inputs"]["image"] for name in ("images", "image_2")]
    (run_folder,) = (inputs / "flashface-run").iterdir()
    assert names == [f"flashface-run/{run_folder.name}/ref01.png", f"flashface-run/{run_folder.name}/ref02.png"]
    # The photos stay where the saved workflow finds them: in the input folder, in a folder of the run.
    assert [(inputs / name).read_bytes() for name in names] == [photo.read_bytes() for photo in photos]
    assert "image_3" not in encoder and list(kinds.values()).count("LoadImage") == 2  # the graph's third photo input: left empty
    texts = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "CLIPTextEncode"]
    assert sorted(texts) == ["a man on a boat", "blurry"]
    assert sum(node["type"] == "LoadImage" for node in workflow["nodes"]) == 2


def test_runner_names_every_missing_model_file(photos, tmp_path):
    """Only FlashFace in the models folder: the SD1.5 checkpoint and the detector are named, with their commands
    (from an API-format graph: the runner takes both formats)."""
    import folder_paths

    if folder_paths.get_full_path("checkpoints", catalog.SD15.filename):
        pytest.skip(f"the host's own models folder holds {catalog.SD15.filename}")
    models = tmp_path / "models"
    (models / "flashface").mkdir(parents=True)
    (models / "flashface" / model_folder.FLASHFACE_FILE).symlink_to(model_folder.golden_checkpoint())
    graph = ROOT / "workflows" / "api" / "flashface_from_photos.json"
    result = runner(str(graph), "--ref", str(photos[0]), "--prompt", "a man", "--out", str(tmp_path / "out"),
                    "--input-directory", str(tmp_path / "input"), "--extra-model-paths-config", str(models_yaml(tmp_path)), "--no-custom-nodes")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for part in (f"{catalog.SD15.filename} is not in", catalog.SD15.url, "python -m flashface_core.download --sd15`",
                 f"{catalog.DETECTOR.filename} is not in", catalog.DETECTOR.url, "python -m flashface_core.download --detector`"):
        assert part in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


BAD_INPUTS = ["missing photo", "not an image", "a folder as photo", "400-megapixel photo", "not json", "not UTF-8",
              "nested JSON", "a folder as graph", "not a graph", "no such graph", "bad option"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_status_2(case, tmp_path):
    photo, graph, more = FACES_DIR / "man_face" / "1.png", "from_photos", []
    if case == "missing photo":
        photo = tmp_path / "nowhere.png"
    elif case == "not an image":
        photo = tmp_path / "notes.png"
        photo.write_text("not a picture")
    elif case == "a folder as photo":
        photo = tmp_path
    elif case == "400-megapixel photo":  # a few KB: PIL refuses it (DecompressionBombError)
        photo = tmp_path / "huge.png"
        Image.new("1", (20000, 20000)).save(photo)
        assert photo.stat().st_size < 100_000
    elif case == "not UTF-8":
        graph = str(tmp_path / "graph.json")
        Path(graph).write_bytes(b'{"nodes": [], "links": [], "x": "\xff"}')
    elif case == "nested JSON":
        graph = str(tmp_path / "graph.json")
        Path(graph).write_text("[" * 100_000 + "]" * 100_000)
    elif case == "a folder as graph":
        graph = str(tmp_path)
    elif case == "bad option":
        more = ["--width", "63"]
    elif case == "not json":
        graph = str(tmp_path / "graph.json")
        Path(graph).write_text("{nodes: ")
    elif case == "not a graph":
        graph = str(tmp_path / "graph.json")
        Path(graph).write_text(json.dumps({"name": "settings", "values": [1, 2]}))
    else:
        graph = "no_such_graph"
    result = runner(graph, "--ref", str(photo), "--prompt", "a man", "--out", str(tmp_path / "out"),
                    "--input-directory", str(tmp_path / "input"), *more)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "input").exists()


def test_help_is_plain_text():
    result = runner("--help")
    assert result.returncode == 0 and "``" not in result.stdout, result.stdout
    for part in ("default: ComfyUI's output folder", "input/flashface-run/<run id>/ref01.png", "chained",
                 "transparent pixels cover the face"):
        assert part in " ".join(result.stdout.split()), part


def test_a_node_that_fails_gives_its_message_and_exit_status_1(models, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (16, 16), "gray").save(tiny)
    result = runner("drawn_to_real", "--ref", str(tiny), "--prompt", "a woman", "--out", str(tmp_path / "out"),
                    "--input-directory", str(tmp_path / "input"), "--extra-model-paths-config", str(models),
                    "--no-custom-nodes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "(FlashFaceEncodeReferenceFaces) failed: " in line and "16x16" in line, result.stderr
    assert not any((tmp_path / "input").rglob("*.png"))  # the run's photos are taken out again


def test_the_runner_holds_the_pack_once_as_comfyui_loads_it(models, photos, tmp_path):
    """The runner runs from the copy of the pack that ComfyUI imports to register its nodes, so there is
    one set of module state (the detector, the caches), as in the server."""
    args = ["from_photos", "--ref", str(photos[0]), "--prompt", "a man", "--steps", "1", "--width", "64",
            "--height", "64", "--out", str(tmp_path / "out"), "--input-directory", str(tmp_path / "input"),
            "--extra-model-paths-config", str(models), "--no-custom-nodes"]
    pack = str(ROOT).replace(".", "_x_")  # the module name ComfyUI gives a custom node folder
    script = ("import json, sys; import flashface_core.run as command; code = command.main(sys.argv[1:]); "
              f"print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in ('flashface_core', {pack!r}))]))")
    env = {**os.environ, "COMFYUI_PATH": str(HOST), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    code, modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert code == 0, result.stderr[-3000:]
    assert {m for m in modules if m.startswith("flashface_core")} == {"flashface_core", "flashface_core.run"}
    assert {f"{pack}.nodes", f"{pack}.flashface_core.tools.runner", f"{pack}.flashface_core.loader"} <= set(modules)


def test_a_load_image_feeding_two_reference_inputs_takes_both_photos(models, photos, tmp_path):
    """The graph's second photo input reads the first Load Image too: each --ref still lands (the second input
    gets a Load Image of its own), ComfyUI validates and runs it, and the log says what happened."""
    workflow = json.loads((ROOT / "workflows" / "flashface_from_photos.json").read_text())
    second = next(node for node in workflow["nodes"] if node.get("title") == "Reference photo 2")
    first = next(node for node in workflow["nodes"] if node.get("title") == "Reference photo 1")
    link = next(link for link in workflow["links"] if link[1] == second["id"])
    link[1] = first["id"]
    first["outputs"][0]["links"].append(link[0])
    workflow["nodes"].remove(second)
    (tmp_path / "graph.json").write_text(json.dumps(workflow))
    third = photos[0].parent / "face_3.png"
    result = runner(str(tmp_path / "graph.json"), "--ref", str(photos[0]), "--ref", str(photos[1]), "--ref", str(third),
                    "--steps", "1", "--width", "64", "--height", "64", "--out", str(tmp_path / "out"),
                    "--input-directory", str(tmp_path / "input"), "--extra-model-paths-config", str(models),
                    "--no-custom-nodes")
    assert result.returncode == 0, result.stdout + result.stderr
    (png,) = sorted((tmp_path / "out").glob("*.png"))
    with Image.open(png) as image:
        prompt = json.loads(image.info["prompt"])
    encoder = next(node for node in prompt.values() if node["class_type"] == "FlashFaceEncodeReferenceFaces")["inputs"]
    names = [prompt[encoder[name][0]]["inputs"]["image"] for name in ("images", "image_2", "image_3")]
    assert [name.rsplit("/", 1)[1] for name in names] == ["ref01.png", "ref02.png", "ref03.png"], names
    assert [(tmp_path / "input" / name).read_bytes() for name in names] == [p.read_bytes() for p in (*photos, third)]
    assert "ref02.png -> new node" in result.stderr, result.stderr


def test_runner_places_each_persons_photos_and_saves_identities(models, photos, tmp_path):
    """Two people: --ref reaches person 1's encoder, --person-ref 2 person 2's; then --save-identity writes the
    --ref photos as an identity, and refuses the same name again without --overwrite, before any work."""
    out, inputs = tmp_path / "out", tmp_path / "input"
    common = ("--out", str(out), "--input-directory", str(inputs), "--extra-model-paths-config", str(models),
              "--no-custom-nodes")
    result = runner("two_people", "--ref", str(photos[0]), "--person-ref", "2", str(photos[1]), "--steps", "2",
                    "--width", "64", "--height", "64", *common)
    assert result.returncode == 0, result.stdout + result.stderr
    (png,) = sorted(out.glob("*.png"))
    with Image.open(png) as image:
        prompt = json.loads(image.info["prompt"])
    people = {node["_meta"]["title"]: node for node in prompt.values() if node["class_type"] == "FlashFacePerson"}
    (run_folder,) = (inputs / "flashface-run").iterdir()
    for title, name in (("Person 1 (left)", "ref01.png"), ("Person 2 (right)", "person2_ref01.png")):
        encoder = prompt[people[title]["inputs"]["references"][0]]["inputs"]
        assert prompt[encoder["images"][0]]["inputs"]["image"] == f"flashface-run/{run_folder.name}/{name}", title
        assert "image_2" not in encoder

    identities = models.parent / "models" / "flashface_identities"
    result = runner("--save-identity", "alice", "--ref", str(photos[0]), "--ref", str(photos[1]), *common)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = identities / "alice.safetensors"
    assert saved.is_file() and f"saved identity {saved}" in result.stderr
    assert sorted(out.glob("*.png")) == [png]  # nothing sampled
    before = saved.read_bytes()
    result = runner("--save-identity", "alice", "--ref", str(photos[1]), *common)
    assert result.returncode == 2 and result.stderr.startswith("error: --save-identity: the identity alice exists"), result.stderr
    assert "--overwrite" in result.stderr and saved.read_bytes() == before


def test_runner_refines_the_face_of_a_photo_with_the_detail_graph(models, photos, tmp_path):
    """--photo is the photo whose face the detail graph regenerates (the shipped graph with the offline
    detector and small crops: the random RetinaFace finds no real face); only the face's square changes."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    graph = json.loads((ROOT / "workflows" / "api" / "flashface_detail_photo.json").read_text())
    detail = next(node for node in graph.values() if node["class_type"] == "FlashFaceFaceDetail")
    detail["inputs"].update(detector="centerface (offline)", crop_size=64, feather=8, face_selection="largest")
    path = tmp_path / "detail.json"
    path.write_text(json.dumps(graph))
    half_body = tmp_path / "half_body.png"  # a small face in a larger picture
    canvas = Image.new("RGB", (320, 400), (128, 128, 128))
    with Image.open(photos[1]) as face:
        canvas.paste(face.convert("RGB").resize((80, 96)), (120, 60))
    canvas.save(half_body)
    out, inputs = tmp_path / "out", tmp_path / "input"
    result = runner(str(path), "--ref", str(photos[0]), "--photo", str(half_body), "--steps", "2", "--out", str(out),
                    "--input-directory", str(inputs), "--extra-model-paths-config", str(models), "--no-custom-nodes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "photo: half_body.png -> node" in result.stderr
    (png,) = sorted(out.glob("FlashFace_detail*.png"))
    with Image.open(png) as saved:
        changed = np.any(np.asarray(saved.convert("RGB")) != np.asarray(canvas), axis=-1)
    rows, cols = np.nonzero(changed)
    assert changed.any() and 60 <= rows.mean() <= 160 and 120 <= cols.mean() <= 200  # around the face only
    assert not changed[250:].any() and not changed[:, :40].any()
