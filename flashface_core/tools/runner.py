"""Run a FlashFace graph without the browser, on the ComfyUI this pack finds.

    python -m flashface_core.run WORKFLOW --ref PHOTO [--ref PHOTO ...] --prompt TEXT
        [--negative TEXT] [--seed N] [--steps N] [--width W --height H] [--photo PHOTO] [--out DIR]

WORKFLOW is a graph file in the UI format (as the ComfyUI page saves it) or the API format,
or the name of a shipped graph (``from_photos`` for ``workflows/flashface_from_photos.json``).
The graph runs in this process with ComfyUI's own executor, exactly as the server would run
what the page queues, and its SaveImage nodes write PNGs into --out carrying the prompt and
the workflow, as in the page.

How the options land in the graph, always the same way:

* ``--ref``: the Load Image nodes whose image reaches a FlashFace Encode Reference Faces
  node, in the order the model reads them (the first encoder of a chain first, then each
  encoder's image inputs from the top). Photos beyond those nodes go to the encoders' free
  optional image inputs (image_2 ... image_8); with fewer photos than those nodes, the rest
  repeat the photos in order on required inputs and are disconnected on optional ones. More
  photos than image inputs is an error.
* ``--prompt`` / ``--negative``: the text of the CLIP Text Encode nodes that feed samplers'
  and guiders' ``positive`` / ``negative`` inputs (through any conditioning nodes between).
* ``--seed``: every ``seed`` and ``noise_seed`` input; ``--steps``: every ``steps`` input
  (samplers and schedulers); ``--width`` / ``--height``: every Empty Latent Image node's size.
  Left out: the graph's values.
* ``--photo``: the one other Load Image node (the photo whose face is regenerated in the
  face-inpainting graph). Other Load Image nodes read ComfyUI's input folder.

Exit status: 0 when every output was written; 2 for bad arguments, a file that is not a photo
or not a graph, a model file that is missing (with what to download) or a graph ComfyUI
refuses; 1 when a node fails while running (its message is printed).
"""

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from ..faces.choices import Detector
from ..model_files.catalog import DETECTOR, FLASHFACE, SD15
from . import host, workflow_api
from .host import PACK_ROOT

ENCODER = "FlashFaceEncodeReferenceFaces"
LOAD_IMAGE = "LoadImage"
TEXT_ENCODE = "CLIPTextEncode"
SEED_INPUTS = ("seed", "noise_seed")

log = logging.getLogger("flashface_core.run")


class RunError(Exception):
    """Something the user can fix; the message says what, and the command exits with ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- reading the inputs

def find_workflow(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (name, f"{name}.json", f"flashface_{name}", f"flashface_{name}.json"):
        shipped = PACK_ROOT / "workflows" / candidate
        if shipped.is_file():
            return shipped
    shipped = ", ".join(p.stem.removeprefix("flashface_") for p in sorted((PACK_ROOT / "workflows").glob("*.json")))
    raise RunError(f"{name}: no such file, and no shipped graph of that name (shipped: {shipped}).")


def read_graph(path: Path) -> dict:
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is not a ComfyUI graph: it is not JSON ({error}).") from None
    if workflow_api.is_ui_graph(graph) or workflow_api.is_api_graph(graph):
        return graph
    raise RunError(f"{path} is not a ComfyUI graph: save it from the ComfyUI page (Workflow > Save or Export (API)).")


def check_photo(path_text: str) -> Path:
    from PIL import Image, UnidentifiedImageError

    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RunError(f"{path_text}: no such photo.")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise RunError(f"{path_text} is not an image ComfyUI can read ({error}).") from None
    return path.resolve()


# ---------------------------------------------------------------- mapping the options onto the graph

def _links(prompt: dict):
    """(target id, input name, origin id, origin slot) for every link of an API prompt."""
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                yield node_id, name, str(value[0]), value[1]


def _encoders_in_order(prompt: dict) -> list[str]:
    """Encoder nodes, each after the encoder whose references it extends."""
    encoders = [i for i, n in prompt.items() if n["class_type"] == ENCODER]
    ordered = []

    def visit(node_id, seen=()):
        if node_id in ordered or node_id in seen:
            return
        upstream = prompt[node_id]["inputs"].get("references")
        if isinstance(upstream, list) and str(upstream[0]) in prompt and prompt[str(upstream[0])]["class_type"] == ENCODER:
            visit(str(upstream[0]), (*seen, node_id))
        ordered.append(node_id)

    for node_id in sorted(encoders, key=_node_order):
        visit(node_id)
    return ordered


def _node_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _image_inputs(definitions, class_type: str) -> list[workflow_api.InputDef]:
    return [i for i in definitions[class_type].inputs if i.type == "IMAGE"]


def _source_load_image(prompt: dict, value, seen=()) -> str | None:
    """The LoadImage node an IMAGE input comes from (directly or through single-image nodes)."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    origin = str(value[0])
    if origin not in prompt or origin in seen:
        return None
    node = prompt[origin]
    if node["class_type"] == LOAD_IMAGE:
        return origin
    images = [v for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return _source_load_image(prompt, images[0], (*seen, origin)) if len(images) == 1 else None


def reference_slots(prompt: dict, definitions) -> list[tuple[str, str, str | None]]:
    """(encoder id, input name, LoadImage id or None for a free optional input), in reading order."""
    slots = []
    for encoder in _encoders_in_order(prompt):
        inputs = prompt[encoder]["inputs"]
        for spec in _image_inputs(definitions, ENCODER):
            source = _source_load_image(prompt, inputs.get(spec.name))
            if source is not None or spec.name not in inputs:
                slots.append((encoder, spec.name, source))
    return slots


def place_references(prompt: dict, definitions, photos: list[str]) -> list[str]:
    """Point the reference Load Image nodes at ``photos`` (names in the input folder); return a summary.

    The graph's own reference Load Image nodes take the photos first, in reading order; photos
    left over go to free optional image inputs (new Load Image nodes); graph Load Image nodes
    left over repeat the photos on required inputs and are disconnected on optional ones.
    """
    slots = reference_slots(prompt, definitions)
    linked = [slot for slot in slots if slot[2] is not None]
    free = [slot for slot in slots if slot[2] is None]
    if not linked:
        raise RunError("This graph has no Load Image node feeding a FlashFace Encode Reference Faces node: --ref has nowhere to go.")
    if len(photos) > len(slots):
        raise RunError(f"This graph takes at most {len(slots)} reference photos; {len(photos)} were given. "
                       "Use the many-references graph (workflows/flashface_many_references.json) for more.")
    lines = []
    next_id = max((int(i) for i in prompt if i.isdigit()), default=0) + 1
    queue = list(photos)
    for encoder, name, source in linked:
        if queue:
            photo = queue.pop(0)
        elif definitions[ENCODER].input(name).required:
            photo = photos[(len(lines) - len(photos)) % len(photos)]
        else:
            prompt[encoder]["inputs"].pop(name, None)
            if not any(origin == source for _, _, origin, _ in _links(prompt)):
                del prompt[source]
            continue
        prompt[source]["inputs"]["image"] = photo
        lines.append(f"reference: {photo} -> node {source} -> {encoder}.{name}")
    for (encoder, name, _), photo in zip(free, queue):
        source, next_id = str(next_id), next_id + 1
        prompt[source] = {"inputs": {"image": photo}, "class_type": LOAD_IMAGE, "_meta": {"title": f"Reference ({photo})"}}
        prompt[encoder]["inputs"][name] = [source, 0]
        lines.append(f"reference: {photo} -> new node {source} -> {encoder}.{name}")
    return lines


def _text_encoders_feeding(prompt: dict, which: str) -> list[str]:
    """CLIPTextEncode nodes whose conditioning reaches an input named ``which`` of another node."""
    found = []
    for target, name, origin, _ in _links(prompt):
        if name != which:
            continue
        stack, seen = [origin], set()
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            node = prompt[node_id]
            if node["class_type"] == TEXT_ENCODE:
                if node_id not in found:
                    found.append(node_id)
                continue
            # Conditioning nodes in between (ControlNet apply, combine, ...): follow their conditioning inputs.
            for input_name, value in node["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and input_name in (which, "conditioning", "conditioning_1", "conditioning_2", "conditioning_to", "conditioning_from"):
                    stack.append(str(value[0]))
    return found


def set_text(prompt: dict, which: str, text: str) -> list[str]:
    encoders = _text_encoders_feeding(prompt, which)
    if not encoders:
        raise RunError(f"This graph has no CLIP Text Encode node feeding a '{which}' input: --{'prompt' if which == 'positive' else 'negative'} has nowhere to go.")
    for node_id in encoders:
        prompt[node_id]["inputs"]["text"] = text
    return [f"{which} prompt -> node {', '.join(encoders)}"]


def set_every(prompt: dict, names: tuple[str, ...], value, option: str) -> list[str]:
    targets = [(i, name) for i, node in prompt.items() for name in names
               if name in node["inputs"] and not isinstance(node["inputs"][name], list)]
    if not targets:
        raise RunError(f"This graph has no {' or '.join(names)} input: {option} has nowhere to go.")
    for node_id, name in targets:
        prompt[node_id]["inputs"][name] = value
    return [f"{option} {value} -> " + ", ".join(f"node {i}.{n}" for i, n in targets)]


def set_size(prompt: dict, name: str, value: int) -> list[str]:
    latents = [i for i, node in prompt.items() if node["class_type"] == "EmptyLatentImage"]
    if not latents:
        raise RunError(f"This graph has no Empty Latent Image node: --{name} has nowhere to go (its size comes from a photo).")
    for node_id in latents:
        prompt[node_id]["inputs"][name] = value
    return [f"--{name} {value} -> node {', '.join(latents)}"]


def other_load_images(prompt: dict, definitions) -> list[str]:
    references = {source for _, _, source in reference_slots(prompt, definitions) if source}
    return sorted((i for i, n in prompt.items() if n["class_type"] == LOAD_IMAGE and i not in references), key=_node_order)


def missing_model_files(prompt: dict) -> list[str]:
    """A message per missing model file of an API prompt (FlashFace, SD1.5 checkpoint, detector)."""
    from ..model_files import folders, messages  # ComfyUI's folder_paths: only once the host is set up

    found = []
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        message = None
        if kind == "LoadFlashFace" and not isinstance(inputs.get("ckpt_name"), list):
            message = messages.check_in_folder(folders.FLASHFACE, inputs.get("ckpt_name"), FLASHFACE)
        elif kind == "CheckpointLoaderSimple" and not isinstance(inputs.get("ckpt_name"), list):
            message = messages.check_in_folder("checkpoints", inputs.get("ckpt_name"), SD15)
        elif (kind == ENCODER and inputs.get("detector") == Detector.RETINAFACE
              and not folders.find_detector_weights(DETECTOR.filename)):
            message = messages.missing_detector_message()
        if message and message not in found:
            found.append(message)
    return found


# ---------------------------------------------------------------- running

class _Server:
    """What ComfyUI's executor needs of its server when there is no web page to tell."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def _progress_hook():
    """A console progress bar per node that reports steps (samplers), as ComfyUI's server does for the page."""
    import comfy.utils
    from comfy_execution.utils import get_executing_context
    from tqdm import tqdm

    bars = {}

    def hook(value, total, preview_image=None, prompt_id=None, node_id=None):
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        context = get_executing_context()
        node_id = node_id or (context.node_id if context else "?")
        bar = bars.get(node_id)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = bars[node_id] = tqdm(total=total, desc=f"node {node_id}", unit="step", leave=True)
        bar.update(value - bar.n)
        if value >= total:
            bar.close()

    comfy.utils.PROGRESS_BAR_ENABLED = False  # k-diffusion's own bars would print a second bar
    comfy.utils.set_progress_bar_global_hook(hook)


def _load_model_paths(extra_configs: list[Path]):
    """As main.py, before the nodes load: ComfyUI's extra_model_paths.yaml, then the ones given."""
    host.import_comfyui()
    import utils.extra_config

    host_yaml = host.find_comfyui() / "extra_model_paths.yaml"
    for config in ([host_yaml] if host_yaml.is_file() else []) + extra_configs:
        utils.extra_config.load_extra_path_config(str(config))


def _setup_folders(work: Path, out_dir: Path):
    import folder_paths

    comfy_input = Path(folder_paths.get_input_directory())
    (work / "input").mkdir()
    (work / "temp").mkdir()
    out_dir.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_temp_directory(str(work / "temp"))
    folder_paths.set_output_directory(str(out_dir.resolve()))
    return comfy_input


def _stage_photo(source: Path, input_dir: Path, index: int, prefix: str) -> str:
    name = f"{prefix}{index:02d}_{source.name}"
    shutil.copyfile(source, input_dir / name)
    return name


def _validation_messages(error, node_errors, prompt) -> list[str]:
    lines = []
    for node_id, entry in (node_errors or {}).items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title", entry.get("class_type"))
        for reason in entry["errors"]:
            details = reason.get("details", "")
            if reason.get("type") == "custom_validation_failed" and " - " in details:
                details = details.split(" - ", 1)[1]
            lines.append(f"node {node_id} ({title}): {reason['message']}: {details}")
    if not lines and error:
        lines.append(f"{error.get('message')}: {error.get('details')}")
    return lines


def run(args) -> list[Path]:
    workflow_path = find_workflow(args.workflow)
    graph = read_graph(workflow_path)
    photos = [check_photo(p) for p in args.ref]
    photo = check_photo(args.photo) if args.photo else None
    extra_configs = [Path(p).expanduser() for p in args.extra_model_paths_config]
    for config in extra_configs:
        if not config.is_file():
            raise RunError(f"{config}: no such extra model paths file.")

    _load_model_paths(extra_configs)
    host.load_nodes(other_custom_nodes=not args.no_custom_nodes)
    import execution

    definitions = workflow_api.definitions_from_host()
    try:
        workflow = graph if workflow_api.is_ui_graph(graph) else None
        prompt = workflow_api.to_api(graph, definitions) if workflow is not None else json.loads(json.dumps(graph))
    except workflow_api.GraphError as error:
        raise RunError(f"{workflow_path}: {error}") from None
    unknown = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in definitions})
    if unknown:
        raise RunError(f"{workflow_path}: this ComfyUI has no node type {', '.join(unknown)}: install the custom nodes "
                       "that provide it (--verbose shows the ones that failed to load).")

    with tempfile.TemporaryDirectory(prefix="flashface-run-") as work_dir:
        work = Path(work_dir)
        comfy_input = _setup_folders(work, Path(args.out))
        input_dir = work / "input"
        plan = []
        if photos:
            plan += place_references(prompt, definitions, [_stage_photo(p, input_dir, i + 1, "ref") for i, p in enumerate(photos)])
        others = other_load_images(prompt, definitions)
        if photo is not None:
            if len(others) != 1:
                raise RunError(f"--photo needs exactly one Load Image node besides the references; this graph has {len(others)}.")
            prompt[others[0]]["inputs"]["image"] = _stage_photo(photo, input_dir, 1, "photo")
            plan.append(f"photo: {photo.name} -> node {others[0]}")
        else:
            for node_id in others:  # as in the page: they read ComfyUI's input folder
                name = prompt[node_id]["inputs"].get("image")
                if isinstance(name, str) and (comfy_input / name).is_file():
                    (input_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(comfy_input / name, input_dir / name)
        if args.prompt is not None:
            plan += set_text(prompt, "positive", args.prompt)
        if args.negative is not None:
            plan += set_text(prompt, "negative", args.negative)
        if args.seed is not None:
            plan += set_every(prompt, SEED_INPUTS, args.seed, "--seed")
        if args.steps is not None:
            plan += set_every(prompt, ("steps",), args.steps, "--steps")
        for option, value in (("width", args.width), ("height", args.height)):
            if value is not None:
                plan += set_size(prompt, option, value)
        for line in plan:
            log.info("%s", line)

        missing = missing_model_files(prompt)
        if missing:
            raise RunError("\n".join(missing))

        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid or node_errors:  # ComfyUI would still run the outputs that passed; the runner runs all or none
            raise RunError("ComfyUI refused the graph:\n" + "\n".join(_validation_messages(error, node_errors, prompt)))

        _progress_hook()
        executor = execution.PromptExecutor(_Server())
        extra = {"extra_pnginfo": {"workflow": _workflow_with(workflow, prompt, definitions)}} if workflow else {}
        executor.execute(prompt, prompt_id, extra, outputs)
        if not executor.success:
            failure = next((data for event, data in executor.status_messages if event == "execution_error"), {})
            raise RunError(f"node {failure.get('node_id')} ({failure.get('node_type')}) failed: "
                           f"{failure.get('exception_message', '').strip()} (--verbose shows ComfyUI's log)", code=1)
        saved = []
        out_dir = Path(args.out).resolve()
        for node_output in executor.history_result["outputs"].values():
            for image in node_output.get("images", []):
                if image.get("type") == "output":
                    saved.append(out_dir / image.get("subfolder", "") / image["filename"])
        return saved


def _workflow_with(workflow: dict, prompt: dict, definitions) -> dict:
    """The UI graph with the values the runner set and the reference inputs it left empty, so the PNG
    reopens in the page as it ran (photos it added beyond the graph's Load Image nodes are in the prompt only)."""
    workflow = json.loads(json.dumps(workflow))
    dropped = [n for n in workflow["nodes"] if n["type"] == LOAD_IMAGE and n.get("mode", 0) == 0 and str(n["id"]) not in prompt]
    kept_links = []
    for link in workflow["links"]:
        target = prompt.get(str(link[3]))
        node = next(n for n in workflow["nodes"] if n["id"] == link[3])
        emptied = (target is not None and target["class_type"] == ENCODER
                   and node["inputs"][link[4]]["name"] not in target["inputs"])
        if link[1] in {n["id"] for n in dropped} or emptied:
            node["inputs"][link[4]]["link"] = None
            for origin in workflow["nodes"]:
                for output in origin.get("outputs") or []:
                    if output.get("links") and link[0] in output["links"]:
                        output["links"] = [i for i in output["links"] if i != link[0]] or None
            continue
        kept_links.append(link)
    workflow["links"] = kept_links
    workflow["nodes"] = [n for n in workflow["nodes"] if n not in dropped]
    for node in workflow["nodes"]:
        entry = prompt.get(str(node["id"]))
        values = node.get("widgets_values")
        if entry is None or not isinstance(values, list) or node["type"] not in definitions:
            continue
        for name, value in entry["inputs"].items():
            index = workflow_api.widget_index(node, definitions[node["type"]], name)
            if index is not None and index < len(values) and not isinstance(value, list):
                values[index] = value
    return workflow


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashface_core.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", help="graph file (UI or API format) or a shipped graph's name, e.g. from_photos")
    parser.add_argument("--ref", action="append", default=[], metavar="PHOTO", help="a reference photo (repeat for more)")
    parser.add_argument("--prompt", help="the positive prompt")
    parser.add_argument("--negative", help="the negative prompt (default: the graph's)")
    parser.add_argument("--seed", type=int, help="the seed (default: the graph's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the graph's)")
    parser.add_argument("--width", type=int, help="image width, a multiple of 8 (default: the graph's)")
    parser.add_argument("--height", type=int, help="image height, a multiple of 8 (default: the graph's)")
    parser.add_argument("--photo", help="the photo to change, for graphs with one Load Image besides the references")
    parser.add_argument("--out", default="output", help="folder for the PNGs (default: ./output)")
    parser.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML",
                        help="another extra_model_paths.yaml, as ComfyUI's option of that name")
    parser.add_argument("--no-custom-nodes", action="store_true", help="load only ComfyUI's nodes and this pack")
    parser.add_argument("--verbose", action="store_true", help="show ComfyUI's own log")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and (value < 64 or value % 8):
            parser.error(f"--{name} must be a multiple of 8, at least 64")

    # ComfyUI's own log (start-up, tracebacks of failing nodes) only with --verbose; this pack's always.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, format="%(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger(str(PACK_ROOT).replace(".", "_x_")).setLevel(logging.INFO)
    try:
        for path in run(args):
            log.info("saved %s", path)
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
