"""A real ComfyUI server with this pack, in a temporary folder, for the server and workflow tests.

``comfy_server`` (module-scoped fixture; import it into a test module) lays out a temporary
ComfyUI base: ``custom_nodes/ComfyUI-FlashFace`` (a link to this pack), a tiny test-only node
file (seeded CONDITIONING and a small random SD1.5-layout VAE, which no download provides),
``models/`` with every model file the shipped graphs name (``model_folder``: the golden tiny
FlashFace, a random SD1.5-layout checkpoint, the random golden RetinaFace), ``input/`` with
the photos the tests and graphs load as RGB PNGs, and an ``extra_model_paths.yaml``
registering the custom nodes and model folders.
It starts the host's ``main.py`` on a free 127.0.0.1 port and kills it at teardown. Nothing
is written into the ComfyUI installation (user folder, database and temp live in the
temporary folder, and no bytecode is written).

``Chromium`` drives headless Chromium through the DevTools protocol over a pipe (standard
library only; no driver, no port), to load workflows into the real frontend.
"""

import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import model_folder
from conftest import FACES_DIR, HOST, ROOT
from PIL import Image

PACK_DIR_NAME = "ComfyUI-FlashFace"
CHECKPOINT = model_folder.TINY_FILE
# Two reference photos (one face each), saved as RGB PNGs of at most PHOTO_SIZE pixels.
PHOTOS = {"man.png": "man_face/1.png", "woman.png": "woman_face/1.png"}
PHOTO_SIZE = 512
START_TIMEOUT = 90.0
PROMPT_TIMEOUT = 90.0

TEST_NODES = '''"""Test-only nodes for the FlashFace server tests: inputs that no download provides."""

import torch

import comfy.sd
from comfy.ldm.models.autoencoder import AutoencoderKL


class TestTinyConditioning:
    """A seeded random CLIP-L sized prompt embedding [1, 77, 768]."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def make(self, seed):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 77, 768, generator=generator), {}]],)


class TestTinyVAE:
    """A randomly initialised comfy.sd.VAE with the SD1.5 layout at 32 base channels."""

    CATEGORY = "testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
        generator = torch.Generator().manual_seed(0)
        shapes = AutoencoderKL(ddconfig=ddconfig, embed_dim=4).state_dict()
        state = {key: torch.randn(value.shape, generator=generator) * 0.05 for key, value in shapes.items()}
        return (comfy.sd.VAE(sd=state, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}}),)


NODE_CLASS_MAPPINGS = {"TestTinyConditioning": TestTinyConditioning, "TestTinyVAE": TestTinyVAE}
'''


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base(base: Path, cache: Path) -> dict:
    """Lay out the temporary ComfyUI folders; return the paths main.py is started with."""
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    (custom_nodes / PACK_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
    (custom_nodes / "flashface_test_nodes.py").write_text(TEST_NODES)

    model_folder.fill_models(base / "models", cache)

    paths = {name: base / name for name in ("input", "output", "temp", "user")}
    for path in paths.values():
        path.mkdir()
    if not FACES_DIR.is_dir():
        pytest.skip(f"no reference photos at {FACES_DIR}")
    for name, source in PHOTOS.items():
        with Image.open(FACES_DIR / source) as photo:
            rgb = photo.convert("RGB")
        rgb.thumbnail((PHOTO_SIZE, PHOTO_SIZE))
        rgb.save(paths["input"] / name)
    model_folder.fill_inputs(paths["input"])
    # A fresh user: skip the first-visit template browser, so the frontend shows no dialog of its own.
    settings = paths["user"] / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))

    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(
        "flashface_test:\n"
        f"  base_path: {base}\n"
        "  custom_nodes: custom_nodes\n"
        + "".join(f"  {folder}: models/{folder}\n" for folder in model_folder.FOLDERS)
    )
    paths["yaml"] = yaml
    return paths


class ComfyServer:
    """One ComfyUI server process on 127.0.0.1, with small JSON helpers for its API."""

    def __init__(self, base: Path, cache: Path):
        self.base = base
        self.cache = cache
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.output_dir = base / "output"
        self.process = None

    def start(self):
        paths = prepare_base(self.base, self.cache)
        command = [
            sys.executable, str(HOST / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--extra-model-paths-config", str(paths["yaml"]),
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
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.3)
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {START_TIMEOUT:g} s:\n{self.log()}")

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, data: dict, timeout: float = 10):
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def queue(self, prompt: dict) -> str:
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": "flashface-tests"})
        assert status == 200, f"/prompt refused the graph ({status}): {json.dumps(answer, indent=1)}"
        assert not answer.get("node_errors"), answer
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT) -> dict:
        """The prompt's /history entry once it finished (successfully or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            assert self.alive(), f"ComfyUI died running prompt {prompt_id}:\n{self.log()[-5000:]}"
            time.sleep(0.2)
        self.post("/interrupt", {})
        raise AssertionError(f"prompt {prompt_id} not done within {timeout:g} s:\n{self.log()[-5000:]}")

    def run(self, prompt: dict, timeout: float = PROMPT_TIMEOUT) -> dict:
        return self.wait(self.queue(prompt), timeout)


@pytest.fixture(scope="module", name="comfy_server")
def comfy_server_fixture(tmp_path_factory):
    """A started ComfyUI server with the pack (import this into a test module to use it)."""
    if HOST is None:
        pytest.skip("no ComfyUI host")
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"), tmp_path_factory.getbasetemp() / "model_cache")
    try:
        server.start()
        yield server
    finally:
        server.stop()


# Headless Chromium over the DevTools protocol


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """Headless Chromium driven with the DevTools protocol over ``--remote-debugging-pipe``.

    Messages are NUL-terminated JSON: the browser reads commands on fd 3 and writes answers
    on fd 4. One page target is attached in flat mode; every wait is bounded.
    """

    def __init__(self, executable: str, user_data_dir: Path, timeout: float = 30.0):
        self.timeout = timeout
        self.next_id = 0
        self.buffer = b""
        self.events = []
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()
        # bash puts the pipe ends on fds 3 and 4, where --remote-debugging-pipe expects them (dash
        # only redirects fds below 10).
        command = [
            shutil.which("bash") or "/bin/bash", "-c", f'exec "$@" 3<&{to_browser_read} 4>&{from_browser_write}',
            "chromium", executable,
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--no-default-browser-check", "--window-size=1600,1000",
            f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank",
        ]
        user_data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = user_data_dir / "chromium.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, pass_fds=(to_browser_read, from_browser_write),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.session = None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next((t["targetId"] for t in targets if t["type"] == "page"), None)
        if page is None:
            page = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, timeout: float | None = None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            if "method" in answer:
                self.events.append(answer)

    def evaluate(self, expression: str, timeout: float | None = None):
        """Run JavaScript in the page (awaiting a promise) and return its JSON value."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True,
                  "timeout": int(1000 * (timeout or self.timeout))}
        result = self.send("Runtime.evaluate", params, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if value := self.evaluate(expression, timeout=5):
                    return value
            except (RuntimeError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for: {expression}")

    def navigate(self, url: str):
        self.send("Page.navigate", {"url": url})

    def screenshot(self, path: Path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                errors.append(event["params"]["exceptionDetails"].get("exception", {}).get("description", ""))
        return errors

    def close(self):
        try:
            self.session = None
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for fd in (self.to_browser, self.from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
