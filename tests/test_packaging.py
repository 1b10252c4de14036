"""Packaging: the licence, the Registry metadata, requirements that never touch torch, and what ships."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from comfyui_flashface.flashface_core.model_files import catalog

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_licence_file_is_the_mit_licence_pyproject_names():
    assert PROJECT["license"] == {"file": "LICENSE"}
    text = (ROOT / PROJECT["license"]["file"]).read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def test_registry_fields():
    # docs.comfy.org/registry/specifications: the node id and version rules, and the fields comfy-cli reads.
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert PROJECT["description"]
    assert set(PROJECT["urls"]) >= {"Repository", "Issues", "Documentation"}
    assert COMFY["PublisherId"] and COMFY["DisplayName"]
    repository = PROJECT["urls"]["Repository"]
    assert PROJECT["urls"]["Issues"] == repository + "/issues"
    # The icon is this repository's own file, served from its main branch.
    owner_repo = repository.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert COMFY["Icon"].startswith(prefix) and (ROOT / COMFY["Icon"].removeprefix(prefix)).is_file()


def test_registry_models_are_the_downloaders_files():
    listed = {(model["location"], model["model_url"]) for model in COMFY["Models"]}
    assert listed == {(f"/{file.folder}/{file.filename}", file.url) for file in catalog.FILES}


def test_requirements_are_pyprojects_dependencies_and_never_torch():
    assert _requirements() == PROJECT["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in _requirements()}
    assert not names & {"torch", "torchvision", "torchaudio", "xformers", "onnxruntime", "onnxruntime-gpu", "insightface"}
    # Already among ComfyUI's own requirements (transformers brings huggingface_hub): a no-op there.
    assert names <= {"safetensors", "numpy", "pillow", "huggingface-hub"}


def test_tests_and_ci_files_stay_out_of_the_registry_archive():
    patterns = [line.strip() for line in (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:  # gitwildmatch, for the plain names and folders used here
        return any(path.startswith(p) if p.endswith("/") else path == p for p in patterns)

    try:  # comfy-cli archives the git-tracked files, so that is the list to check
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        tracked = []
    if not tracked:
        pytest.skip("not a git checkout: no tracked files to check")
    for path in tracked:
        development = path.startswith(("tests/", ".ci/", ".github/")) or path == "requirements-test.txt"
        assert ignored(path) == development, path
