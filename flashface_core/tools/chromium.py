"""Headless Chromium driven over the DevTools protocol, to open ComfyUI's real frontend.

Standard library only: no driver and no port; the browser talks on a pipe. The tests load
graphs into the page with it, and ``python -m flashface_core.tools.screenshots`` takes the
pictures of the shipped graphs.
"""

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in EXECUTABLES:
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """Headless Chromium driven with the DevTools protocol over ``--remote-debugging-pipe``.

    Messages are NUL-terminated JSON: the browser reads commands on fd 3 and writes answers
    on fd 4. One page target is attached in flat mode; every wait is bounded.
    """

    def __init__(self, executable: str, user_data_dir: Path, timeout: float = 30.0, window: tuple = (1600, 1000)):
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
            "--disable-dev-shm-usage", "--no-default-browser-check", f"--window-size={window[0]},{window[1]}",
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

    def set_viewport(self, width: int, height: int):
        """Draw the page at exactly ``width`` x ``height`` CSS pixels (scale 1), whatever the window."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def screenshot(self, path: Path | None = None, image_format: str = "png", quality: int | None = None) -> bytes:
        """The page as drawn now, as ``image_format`` (png, jpeg or webp) bytes; written to ``path`` if given."""
        params = {"format": image_format}
        if quality is not None:
            params["quality"] = quality
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
