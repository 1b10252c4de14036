"""Soak a real ComfyUI server with the pack: does its memory stay flat, and does /free empty the pack's cache?

    python bench/soak.py [-n 50] [--warmup 10] [--growth 0.10] [--timeout 300] [--keep]

Not part of CI (minutes of CPU). Starts ComfyUI (``$COMFYUI_PATH`` or ``~/ComfyUI``, on the
CPU) on a temporary base laid out as the tests lay theirs out (``tests/comfy_server.py``: the
golden tiny FlashFace, a random SD1.5-layout checkpoint, the random RetinaFace, small photos;
it needs the developers' ``../shared`` folder), plus a truncated checkpoint in
``models/flashface``, a file that is not an image and a 400-megapixel PNG "bomb" in ``input``,
and a probe node. It runs every good graph once (steps w1...: what a graph loads the first
time is then in place), then ``-n`` steps in turn: a good graph (the next of
``workflows/api/*.json`` at 64x64 and 2 steps, a new seed each time), a graph on the broken
checkpoint, a graph on a bad photo (not an image, the bomb, in turn), and ``POST /free``
(unload models and free memory).

After each step it prints the server process's resident memory (VmRSS) and the bytes the
pack's reference-pass caches hold in the server (the probe node returns
``flashface_core.speed.reference_cache.held_bytes()`` of the pack as ComfyUI loaded it, or
"n/a" where the pack has no such function): at the end of a good graph ("run B": more than 0,
or the probe could not see a leak) and in a prompt of its own afterwards ("cache B"), which
keeps the last good graph's MODEL alive in ComfyUI's node cache. The /free steps alternate
the page's "Unload models" (the MODEL stays in the node cache, unloaded) and "Free model and
node cache"; after each the cache must hold 0 bytes. At the end: RSS first, after ``--warmup`` steps,
last, and largest after those. Exit 1 if the RSS after the warm-up steps grows by more than
``--growth`` of what it was then, if the cache is not empty after a /free, if a good graph
fails or a bad one does not fail with a message, or if the server dies.
"""

import argparse
import itertools
import json
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# What the page's "Unload models" sends, and what it sends with "Free model and node cache".
FREES = ({"unload_models": True}, {"unload_models": True, "free_memory": True})
CORRUPT_CHECKPOINT = "flashface_corrupt.ckpt"
NOT_AN_IMAGE = "not_an_image.png"
BOMB = "bomb.png"
BOMB_SIZE = 20_000  # 400 megapixels: more than twice PIL's limit, so PIL refuses to open it
PROBE_FILE = "flashface_soak_probe.py"
PROBE_NODES = '''"""The soak's probe: the bytes the FlashFace reference-pass caches hold in this server."""

import sys

SUFFIX = ".flashface_core.speed.reference_cache"


class FlashFaceSoakProbe:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        # model: keeps a MODEL alive in ComfyUI's node cache between prompts; after: runs the probe at
        # the end of a graph (after its VAE Decode), while the graph's MODEL and its cache are alive.
        return {"required": {"nonce": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})},
                "optional": {"model": ("MODEL",), "after": ("IMAGE",)}}

    def probe(self, nonce, model=None, after=None):
        modules = [module for name, module in list(sys.modules.items()) if name.endswith(SUFFIX)]
        counts = [module.held_bytes() for module in modules if hasattr(module, "held_bytes")]
        return {"ui": {"held_bytes": [str(sum(counts)) if counts else "n/a"]}}


NODE_CLASS_MAPPINGS = {"FlashFaceSoakProbe": FlashFaceSoakProbe}
'''


def bomb_png() -> bytes:
    """A valid 1-bit PNG header of BOMB_SIZE x BOMB_SIZE pixels with a few bytes of data (PIL checks the size on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", BOMB_SIZE, BOMB_SIZE, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def prepare(base: Path, cache: Path):
    """The tests' base folder, with the bad files and the probe node."""
    import comfy_server as test_server  # tests/comfy_server.py

    paths = test_server.prepare_base(base, cache)
    golden = (paths["models"] / "flashface" / test_server.CHECKPOINT).resolve()
    with open(golden, "rb") as source:
        (paths["models"] / "flashface" / CORRUPT_CHECKPOINT).write_bytes(source.read(golden.stat().st_size // 2))
    (paths["input"] / NOT_AN_IMAGE).write_text("this is not a picture\n")
    (paths["input"] / BOMB).write_bytes(bomb_png())
    (paths["custom_nodes"] / PROBE_FILE).write_text(PROBE_NODES)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def error_message(entry: dict) -> str:
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    return f"{errors[0]['node_type']}: {errors[0]['exception_message'].strip().splitlines()[0]}" if errors else ""


class Soak:
    def __init__(self, server, timeout: float):
        self.server = server
        self.timeout = timeout
        self.probes = itertools.count(1)

    def held(self, loader: tuple[str, dict] | None = None) -> str:
        """The probe's answer: the pack's cache bytes in the server, or "n/a". With ``loader`` (a
        LoadFlashFace node of the last graph, as it ran), the probe holds on to that node's MODEL,
        which ComfyUI then keeps in its node cache instead of dropping it for the new prompt."""
        probe = {"class_type": "FlashFaceSoakProbe", "inputs": {"nonce": next(self.probes)}}
        prompt = {"probe": probe}
        if loader is not None:
            node_id, node = loader
            prompt[node_id] = node
            probe["inputs"]["model"] = [node_id, 0]
        entry = self.server.run(prompt, timeout=self.timeout)
        return entry["outputs"]["probe"]["held_bytes"][0]

    def prompt(self, prompt: dict) -> tuple[str, str, str]:
        """(status, message, cache bytes at the end of the graph) of one prompt: refused at /prompt,
        or ComfyUI's history status; a probe runs after the graph's VAE Decode."""
        decoders = [node_id for node_id, node in prompt.items() if node["class_type"] == "VAEDecode"]
        prompt = {**prompt, "probe": {"class_type": "FlashFaceSoakProbe",
                                      "inputs": {"nonce": next(self.probes), "after": [decoders[0], 0]}}}
        status, answer = self.server.post("/prompt", {"prompt": prompt, "client_id": "flashface-soak"})
        if status != 200 or answer.get("node_errors"):
            return "refused", json.dumps(answer.get("node_errors") or answer)[:200], "-"
        entry = self.server.wait(answer["prompt_id"], timeout=self.timeout)
        during = entry["outputs"].get("probe", {}).get("held_bytes", ["-"])[0]
        return entry["status"]["status_str"], error_message(entry), during

    def free(self, payload: dict, loader) -> tuple[str, str]:
        status, _ = self.server.post("/free", payload)
        # The worker takes the flags between two prompts: a first probe may run before them; the next one after.
        self.held(loader)
        return ("done" if status == 200 else f"HTTP {status}"), ""


def steps(count: int):
    """(label, kind, the graph, what to change in it) of each step: every good graph once to warm up (w1...),
    so that what a graph loads the first time is in place before memory is watched, then the soak (1...)."""
    from test_workflows import API_FILES

    yield from ((f"w{number}", "good", path, None) for number, path in enumerate(API_FILES, start=1))
    graphs = itertools.cycle(API_FILES)
    photos = itertools.cycle([NOT_AN_IMAGE, BOMB])
    kinds = itertools.cycle(["good", "free", "bad file", "bad photo"])  # /free right after a good graph: its MODEL is kept
    for number in range(1, count + 1):
        kind = next(kinds)
        if kind == "good":
            yield str(number), kind, next(graphs), None
        elif kind == "bad file":
            yield str(number), kind, API_FILES[0], ("LoadFlashFace", "ckpt_name", CORRUPT_CHECKPOINT)
        elif kind == "bad photo":
            yield str(number), kind, API_FILES[0], ("LoadImage", "image", next(photos))
        else:
            yield str(number), kind, None, None


def graph(path: Path, seed: int, change) -> dict:
    from test_workflows import shrink

    prompt = shrink(json.loads(path.read_text()), seed=seed)
    if change:
        class_type, name, value = change
        node = next(node for node in prompt.values() if node["class_type"] == class_type)
        node["inputs"][name] = value
    return prompt


def loader_of(prompt: dict) -> tuple[str, dict]:
    return next((node_id, node) for node_id, node in prompt.items() if node["class_type"] == "LoadFlashFace")


def soak(server, args) -> int:
    runner = Soak(server, args.timeout)
    rows, problems, loader, frees = [], [], None, itertools.cycle(FREES)
    print(f"{'step':>4}  {'kind':<9} {'graph':<34} {'status':<8} {'RSS MB':>8} {'run B':>10} {'cache B':>10} {'s':>6}  message")
    for seed, (label, kind, path, change) in enumerate(steps(args.n), start=1):
        started = time.monotonic()
        during, name = "-", path.stem if path else ""
        if kind == "free":
            payload = next(frees)
            name = "+".join(payload)
            status, message = runner.free(payload, loader)
        else:
            prompt = graph(path, seed=seed, change=change)
            status, message, during = runner.prompt(prompt)
            loader = loader_of(prompt) if kind == "good" else None
        held = runner.held(loader)
        rows.append({"label": label, "kind": kind, "rss": rss_mb(server.process.pid), "held": held})
        if change:
            name += f" ({change[2]})"
        print(f"{label:>4}  {kind:<9} {name[:34]:<34} {status:<8} {rows[-1]['rss']:>8.1f} {during:>10} {held:>10} "
              f"{time.monotonic() - started:>6.1f}  {message[:120]}", flush=True)
        if kind == "good" and status != "success":
            problems.append(f"step {label}: the good graph {name} ended '{status}': {message}")
        if kind == "good" and during == "0":
            problems.append(f"step {label}: the reference caches held nothing at the end of {name}: the probe sees no cache")
        if kind in ("bad file", "bad photo") and (status != "error" or not message):
            problems.append(f"step {label}: the {kind} ({name}) ended '{status}' without a message")
        if kind == "free" and held not in ("0", "n/a"):
            problems.append(f"step {label}: the reference caches hold {held} bytes after /free ({name})")
    return summary(rows, problems, args)


def summary(rows: list, problems: list, args) -> int:
    soak_rows = [row for row in rows if not row["label"].startswith("w")]
    warmup = min(args.warmup, len(soak_rows) // 2)
    baseline = soak_rows[warmup - 1]["rss"] if warmup else rows[0]["rss"]
    largest = max(row["rss"] for row in soak_rows[warmup:])
    print(f"\nRSS (MB): first {rows[0]['rss']:.1f}, after step {warmup} {baseline:.1f}, last {rows[-1]['rss']:.1f}, "
          f"largest after step {warmup} {largest:.1f} (+{100 * (largest / baseline - 1):.1f} %, "
          f"limit +{100 * args.growth:.0f} %)")
    frees = [row["held"] for row in soak_rows if row["kind"] == "free"]
    if frees and all(held == "n/a" for held in frees):
        print("cache after /free: n/a (this pack has no reference_cache.held_bytes())")
    else:
        print(f"cache after /free (bytes): {', '.join(frees) or 'no /free step'}")
    if largest > baseline * (1 + args.growth):
        problems.append(f"the server's memory grew from {baseline:.1f} MB to {largest:.1f} MB after step {warmup}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.split("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50, help="steps to run (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="soak steps before the memory baseline (default 10)")
    parser.add_argument("--growth", type=float, default=0.10,
                        help="largest allowed RSS growth after the warm-up, as a share (default 0.10)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one prompt may take (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary base folder (the server log is in it)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")

    import pytest  # tests/comfy_server.py reports missing test data as a pytest skip
    from flashface_core.tools import comfy_server

    work = Path(tempfile.mkdtemp(prefix="flashface-soak-"))
    try:
        prepare(work / "comfyui", work / "model_cache")
    except pytest.skip.Exception as missing:
        print(f"error: {missing.msg}", file=sys.stderr)
        return 2
    server = comfy_server.ComfyServer(work / "comfyui")
    try:
        server.start()
        print(f"ComfyUI {server.url}, pid {server.process.pid}, base {work / 'comfyui'}")
        return soak(server, args)
    except (RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
