"""A real ComfyUI server with this pack, on a base folder of its own, for tests, pictures and soaks.

``make_base`` lays out the folders a server needs in one base folder: ``custom_nodes/`` with a
link to this pack (and any extra node files given), ``models/<folder>`` for the model folders
named, ``input``, ``output``, ``temp``, ``user`` (with frontend settings: no first-visit
dialog), and an ``extra_model_paths.yaml`` registering the custom nodes and model folders.
``ComfyServer`` starts the host's ``main.py`` on a free 127.0.0.1 port on that base and stops
it; nothing is written into the ComfyUI installation (user folder, database and temp live in
the base, and no bytecode is written). Standard library only.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .host import PACK_ROOT, find_comfyui

PACK_DIR_NAME = "ComfyUI-FlashFace"
START_TIMEOUT = 90.0
PROMPT_TIMEOUT = 90.0
CLIENT_ID = "flashface-tools"
# A fresh user: skip the first-visit template browser, so the frontend shows no dialog of its own.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_paths(base: Path) -> dict:
    """The folders and files of a base laid out by ``make_base``, by name."""
    paths = {name: base / name for name in ("custom_nodes", "models", "input", "output", "temp", "user")}
    paths["yaml"] = base / "extra_model_paths.yaml"
    return paths


def make_base(base: Path, model_folders=(), node_files: dict | None = None, settings: dict | None = None) -> dict:
    """Lay out a ComfyUI base in ``base`` (see the module docstring); return ``base_paths(base)``."""
    paths = base_paths(base)
    paths["custom_nodes"].mkdir(parents=True)
    (paths["custom_nodes"] / PACK_DIR_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    for name, text in (node_files or {}).items():
        (paths["custom_nodes"] / name).write_text(text)
    for folder in model_folders:
        (paths["models"] / folder).mkdir(parents=True, exist_ok=True)
    for name in ("input", "output", "temp", "user"):
        paths[name].mkdir(exist_ok=True)
    user_settings = paths["user"] / "default" / "comfy.settings.json"
    user_settings.parent.mkdir(parents=True)
    user_settings.write_text(json.dumps({**QUIET_SETTINGS, **(settings or {})}))
    paths["yaml"].write_text(
        "flashface_base:\n"
        f"  base_path: {base}\n"
        "  custom_nodes: custom_nodes\n"
        + "".join(f"  {folder}: models/{folder}\n" for folder in model_folders)
    )
    return paths


class ComfyServer:
    """One ComfyUI server process on 127.0.0.1 on a base from ``make_base``, with small JSON helpers for its API."""

    def __init__(self, base: Path, host: Path | None = None, extra_args=("--cpu",)):
        self.base = Path(base)
        self.host = host or find_comfyui()
        if self.host is None:
            raise RuntimeError("ComfyUI was not found: set COMFYUI_PATH to your ComfyUI folder.")
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.output_dir = self.base / "output"
        self.process = None

    def start(self, timeout: float = START_TIMEOUT):
        paths = base_paths(self.base)
        command = [
            sys.executable, str(self.host / "main.py"), *self.extra_args, "--listen", "127.0.0.1",
            "--port", str(self.port), "--extra-model-paths-config", str(paths["yaml"]),
            "--input-directory", str(paths["input"]), "--output-directory", str(paths["output"]),
            "--temp-directory", str(paths["temp"]), "--user-directory", str(paths["user"]),
            "--database-url", f"sqlite:///{paths['user'] / 'comfyui.db'}",
            "--disable-auto-launch", "--disable-api-nodes",
        ]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("COMFYUI_PATH", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.base, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {timeout:g} s:\n{self.log()}")

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, data: dict, timeout: float = 10):
        """(HTTP status, JSON answer or None) of a JSON POST; error statuses are returned, not raised."""
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; raise with ComfyUI's answer if it is refused."""
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": CLIENT_ID})
        if status != 200 or answer.get("node_errors"):
            raise RuntimeError(f"/prompt refused the graph ({status}): {json.dumps(answer, indent=1)}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT) -> dict:
        """The prompt's /history entry once it finished (successfully or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died running prompt {prompt_id}:\n{self.log()[-5000:]}")
            time.sleep(0.2)
        self.post("/interrupt", {})
        raise TimeoutError(f"prompt {prompt_id} not done within {timeout:g} s:\n{self.log()[-5000:]}")

    def run(self, prompt: dict, timeout: float = PROMPT_TIMEOUT) -> dict:
        return self.wait(self.queue(prompt), timeout)
