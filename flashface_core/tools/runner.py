"""Run a FlashFace graph without the browser, on the ComfyUI this pack finds.

    python -m flashface_core.run WORKFLOW --ref PHOTO [--ref PHOTO ...] --prompt TEXT
        [--person-ref N PHOTO ...] [--negative TEXT] [--seed N] [--steps N] [--width W --height H]
        [--photo PHOTO] [--out DIR]
    python -m flashface_core.run --save-identity NAME --ref PHOTO [--ref PHOTO ...] [--overwrite]

WORKFLOW is a graph file in the UI format (as the ComfyUI page saves it) or the API format,
or the name of a shipped graph (from_photos for workflows/flashface_from_photos.json).
The graph runs in this process with ComfyUI's own executor, exactly as the server would run
what the page queues. Its Save Image nodes write PNGs into --out (default: ComfyUI's output
folder), never over an existing file, carrying the prompt and the UI graph that ran, so a PNG
dropped on the ComfyUI page queues the same graph again.

Where the photos go: --ref and --photo photos are copied into ComfyUI's input folder (or
--input-directory), in a new folder per run, input/flashface-run/<run id>/ref01.png ...
photo01.png, where the graph saved in the PNG finds them (removed again when the run fails).
Other Load Image nodes read their own image names in ComfyUI's input folder, as in the page;
a name outside that folder is refused.

How the options land in the graph, always the same way:

  --ref       the Load Image nodes whose image reaches a FlashFace Encode Reference Faces
              node, in the order the model reads them (the first encoder of a chain first,
              then each encoder's image inputs from the top). Photos beyond those nodes go to
              the encoders' free optional image inputs (image_2 ... image_8), then to new
              encoders chained after the last one (8 photos each): any number works. With
              fewer photos than those nodes, the rest repeat the photos in order on required
              inputs and are disconnected on optional ones. Without --ref, the graph's own
              image names are used when they are in the input folder. In a graph with
              FlashFace Person nodes (several people), --ref fills the first person's
              encoders only: those whose references reach the first Person node of the chain.
  --person-ref N PHOTO
              a photo of person N (2, 3, ...: the N-th FlashFace Person node, counting along
              the people chain), placed on the encoders feeding that Person node as --ref
              places the first person's; repeat for more photos, e.g. --person-ref 2 b1.jpg
              --person-ref 2 b2.jpg. --prompt sets every text that reaches the sampler,
              regional prompts too: edit those in the graph.
  --save-identity NAME
              encode the --ref photos and save them as the identity NAME, i.e.
              models/flashface_identities/NAME.safetensors (the first identities folder),
              for FlashFace Load Identity; nothing is sampled. It runs the Save Identity part
              of WORKFLOW (default: the shipped save_identity graph: its checkpoint's VAE and
              encoder settings). An existing NAME is refused unless --overwrite.
  --prompt, --negative
              the text of the CLIP Text Encode nodes that feed samplers' and guiders'
              positive / negative inputs (through any conditioning nodes between).
  --seed      every seed and noise_seed input; --steps: every steps input (samplers and
              schedulers); --width / --height: every Empty Latent Image node's size.
              Left out: the graph's values.
  --photo     the one other Load Image node: the photo whose faces the detail_photo graph
              refines (any photo), or whose face is regenerated in the face-inpainting
              graph, a PNG whose transparent pixels cover the face (Load Image takes the
              mask from the alpha channel, as the MaskEditor paints it).

Exit status: 0 when every output was written; 2 for bad arguments, a file that is not a photo
or not a graph, a model file that is missing (with what to download) or a graph ComfyUI
refuses; 1 when a node fails while running (its message is printed).
"""

import argparse
import asyncio
import itertools
import logging
import sys
import tempfile
import uuid
from pathlib import Path

from ..faces.choices import Detector
from ..model_files.catalog import DETECTOR, FLASHFACE, SD15
from . import host, run_options, workflow_api
from .host import PACK_ROOT
from .run_graph import RunError, find_workflow, read_graph, to_prompt
from .run_options import ENCODER, SEED_INPUTS, person_encoders, place_references, set_every, set_size, set_text
from .run_photos import Folders, RunInputs, check_graph_images, check_photo, claim
from .run_workflow import workflow_that_ran

__all__ = ["RunError", "main", "run"]

log = logging.getLogger("flashface_core.run")


def missing_model_files(prompt: dict) -> list[str]:
    """A message per missing model file of an API prompt (FlashFace, SD1.5 checkpoint, detector)."""
    from ..model_files import folders, messages  # ComfyUI's folder_paths: only once the host is set up

    found = []
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        message = None
        if kind == "LoadFlashFace" and isinstance(inputs.get("ckpt_name"), str):
            message = messages.check_in_folder(folders.FLASHFACE, inputs.get("ckpt_name"), FLASHFACE)
        elif kind == "CheckpointLoaderSimple" and isinstance(inputs.get("ckpt_name"), str):
            message = messages.check_in_folder("checkpoints", inputs.get("ckpt_name"), SD15)
        elif (kind == ENCODER and inputs.get("detector") == Detector.RETINAFACE
              and not folders.find_detector_weights(DETECTOR.filename)):
            message = messages.missing_detector_message()
        if message and message not in found:
            found.append(message)
    return found


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


def _load_model_paths(extra_configs: list[Path]):
    """As main.py, before the nodes load: ComfyUI's extra_model_paths.yaml, then the ones given."""
    host.import_comfyui()
    import utils.extra_config

    host_yaml = host.find_comfyui() / "extra_model_paths.yaml"
    for config in ([host_yaml] if host_yaml.is_file() else []) + extra_configs:
        utils.extra_config.load_extra_path_config(str(config))


def comfy_folders(args, work: Path) -> Folders:
    """ComfyUI's input folder (or --input-directory) and output folder (or --out), as the server uses them."""
    import folder_paths

    if args.input_directory:
        folder_paths.set_input_directory(str(Path(args.input_directory).expanduser().resolve()))
    out = Path(args.out).expanduser() if args.out else Path(folder_paths.get_output_directory())
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: a file, not a folder for the PNGs.")
    return Folders(input=Path(folder_paths.get_input_directory()).resolve(), output=out.resolve(), temp=work / "temp")


def _new_ids(prompt: dict, workflow: dict | None) -> itertools.count:
    """Ids for added nodes, above every id of the prompt and of the UI graph (its notes and reroutes too)."""
    ids = [int(i) for i in prompt if i.isdigit()]
    if workflow is not None:
        ids += [n["id"] for n in workflow["nodes"] if isinstance(n["id"], int)]
        ids.append(workflow.get("last_node_id") if isinstance(workflow.get("last_node_id"), int) else 0)
    return itertools.count(max(ids, default=0) + 1)


def photos_given(prompt: dict, inputs: RunInputs) -> set[str]:
    """The Load Image nodes that read a photo this run copied in (--ref, --person-ref, --photo)."""
    return {i for i, n in prompt.items() if n["class_type"] == run_options.LOAD_IMAGE
            and isinstance(n["inputs"].get("image"), str) and n["inputs"]["image"] in inputs.photos}


def map_options(args, prompt: dict, definitions, photos: list[Path], photo: Path | None, inputs: RunInputs,
                new_ids) -> tuple[list[str], set[str]]:
    """Put the options into the prompt; return the log lines and the Load Image nodes given a photo."""
    plan = []
    people = run_options.people_in_order(prompt)
    if photos:
        first = person_encoders(prompt, 1, "--ref") if people else None
        plan += place_references(prompt, definitions, [inputs.name("ref", i + 1, p) for i, p in enumerate(photos)], new_ids,
                                 first)
    for number, person_photos in sorted(_person_photos(args).items()):
        option = f"--person-ref {number}"
        if not people:
            raise RunError(f"{option}: this graph has no FlashFace Person node; give the photos of its one person with --ref.")
        names = [inputs.name(f"person{number}_ref", i + 1, p) for i, p in enumerate(person_photos)]
        plan += [f"person {number} {line}" for line in
                 place_references(prompt, definitions, names, new_ids, person_encoders(prompt, number, option), option)]
    given = photos_given(prompt, inputs)
    if photo is not None:
        others = run_options.other_load_images(prompt, definitions)
        if len(others) != 1:
            raise RunError(f"--photo needs exactly one Load Image node besides the references; this graph has {len(others)}.")
        prompt[others[0]]["inputs"]["image"] = inputs.name("photo", 1, photo)
        given.add(others[0])
        plan.append(f"photo: {photo.name} -> node {others[0]}")
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
    return plan, given


def _person_photos(args) -> dict[int, list[Path]]:
    """--person-ref photos by person number (checked in main: 2 or more), in the order given."""
    found = {}
    for number, photo in getattr(args, "person_ref", None) or []:
        found.setdefault(int(number), []).append(Path(photo))
    return found


def save_identity_prompt(prompt: dict, name: str, overwrite: bool) -> tuple[dict, str]:
    """Only what the graph's one Save Identity node needs (no sampling), saving as ``name``; and that node's id."""
    savers = [i for i, node in prompt.items() if node["class_type"] == run_options.SAVE_IDENTITY]
    if len(savers) != 1:
        raise RunError(f"--save-identity needs a graph with one FlashFace Save Identity node; this one has {len(savers)} "
                       "(leave WORKFLOW out to use the shipped save_identity graph).")
    needed, stack = set(), [savers[0]]
    while stack:
        node_id = stack.pop()
        if node_id not in needed:
            needed.add(node_id)
            stack += [link[0] for value in prompt[node_id]["inputs"].values() if (link := run_options.link_of(prompt, value))]
    kept = {i: node for i, node in prompt.items() if i in needed}
    kept[savers[0]]["inputs"].update(name=name, overwrite=overwrite)
    return kept, savers[0]


def _check_identity_name(name: str, overwrite: bool) -> str:
    """The file identity ``name`` goes to; RunError before any work for a bad name or an existing one without --overwrite."""
    from ..identities.library import identity_path  # ComfyUI's folder_paths: only once the host is set up

    try:
        path = identity_path(name)
    except ValueError as error:
        raise RunError(f"--save-identity: {error}") from None
    if Path(path).exists() and not overwrite:
        raise RunError(f"--save-identity: the identity {Path(path).stem} exists ({path}); choose another name, or add "
                       "--overwrite to replace it.")
    return path


def run(args) -> list[Path]:
    workflow_path = find_workflow(args.workflow or ("save_identity" if args.save_identity else ""))
    graph = read_graph(workflow_path)
    photos = [check_photo(p) for p in args.ref]
    for number, person_photos in _person_photos(args).items():
        for path in person_photos:
            check_photo(str(path))
    photo = check_photo(args.photo) if args.photo else None
    extra_configs = [Path(p).expanduser() for p in args.extra_model_paths_config]
    for config in extra_configs:
        if not config.is_file():
            raise RunError(f"{config}: no such extra model paths file.")

    _load_model_paths(extra_configs)
    host.load_nodes(other_custom_nodes=not args.no_custom_nodes)
    import execution
    import folder_paths

    definitions = workflow_api.definitions_from_host()
    prompt = to_prompt(graph, definitions, workflow_path)
    workflow = graph if workflow_api.is_ui_graph(graph) else None
    identity = None
    if args.save_identity is not None:
        identity = _check_identity_name(args.save_identity, args.overwrite)
        prompt, _ = save_identity_prompt(prompt, args.save_identity, args.overwrite)
        workflow = None  # no PNG carries it

    with tempfile.TemporaryDirectory(prefix="flashface-run-") as work_dir:
        work = Path(work_dir)
        folders = comfy_folders(args, work)
        inputs = RunInputs(folders.input)
        plan, given = map_options(args, prompt, definitions, photos, photo, inputs, _new_ids(prompt, workflow))
        outside = check_graph_images(prompt, folders, given, run_options.reference_load_images(prompt, definitions),
                                     run_options.other_load_images(prompt, definitions))
        for line in plan:
            log.info("%s", line)
        missing = missing_model_files(prompt)
        if missing:
            raise RunError("\n".join(missing))
        saved_workflow = workflow_that_ran(workflow, prompt, definitions) if workflow is not None else None

        # The run saves into a folder of its own, whose images then move into the output folder under free
        # names: two runs into one folder never overwrite each other's (ComfyUI's counter only counts).
        staging = work / "output"
        for path in outside:  # " [output]" images, read where the run's Save Image nodes write
            target = staging / path.relative_to(folders.output)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        (work / "temp").mkdir()
        folder_paths.set_temp_directory(str(work / "temp"))
        folder_paths.set_output_directory(str(staging))
        staging.mkdir(exist_ok=True)

        if inputs.photos:
            inputs.create()
            log.info("photos: %s", inputs.folder)
        try:
            images = _execute(execution, prompt, saved_workflow)
        except BaseException:
            inputs.remove()
            raise
        if identity is not None:
            inputs.remove()  # the photos are in the identity now; no graph refers to them
            log.info("saved identity %s", identity)
        try:
            return [claim(staging / image.get("subfolder", "") / image["filename"], folders.output / image.get("subfolder", ""))
                    for image in images]
        except OSError as error:
            raise RunError(f"cannot write into {folders.output} ({error.strerror or error}).") from None


def _execute(execution, prompt: dict, workflow: dict | None) -> list[dict]:
    """Validate and run the prompt as the server would; return its saved images' entries."""
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid or node_errors:  # ComfyUI would still run the outputs that passed; the runner runs all or none
        raise RunError("ComfyUI refused the graph:\n" + "\n".join(_validation_messages(error, node_errors, prompt)))

    _progress_hook()
    executor = execution.PromptExecutor(_Server())
    extra = {"extra_pnginfo": {"workflow": workflow}} if workflow else {}
    executor.execute(prompt, prompt_id, extra, outputs)
    if not executor.success:
        failure = next((data for event, data in executor.status_messages if event == "execution_error"), {})
        raise RunError(f"node {failure.get('node_id')} ({failure.get('node_type')}) failed: "
                       f"{failure.get('exception_message', '').strip()} (--verbose shows ComfyUI's log)", code=1)
    return [image for node_output in executor.history_result["outputs"].values()
            for image in node_output.get("images", []) if image.get("type") == "output"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (python -m flashface_core.run --help shows the options)\n")


def main(argv=None) -> int:
    parser = _Parser(prog="python -m flashface_core.run", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", nargs="?", help="graph file (UI or API format) or a shipped graph's name, e.g. "
                        "from_photos or two_people (left out only with --save-identity)")
    parser.add_argument("--ref", action="append", default=[], metavar="PHOTO",
                        help="a reference photo (of the first person in a graph of several people; repeat for more)")
    parser.add_argument("--person-ref", action="append", nargs=2, default=[], metavar=("N", "PHOTO"),
                        help="a reference photo of person N = 2, 3, ... (the N-th FlashFace Person node; repeat for more)")
    parser.add_argument("--save-identity", metavar="NAME",
                        help="save the --ref photos as the identity NAME in models/flashface_identities (no sampling)")
    parser.add_argument("--overwrite", action="store_true", help="with --save-identity: replace an identity of that name")
    parser.add_argument("--prompt", help="the positive prompt")
    parser.add_argument("--negative", help="the negative prompt (default: the graph's)")
    parser.add_argument("--seed", type=int, help="the seed (default: the graph's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the graph's)")
    parser.add_argument("--width", type=int, help="image width, a multiple of 8 (default: the graph's)")
    parser.add_argument("--height", type=int, help="image height, a multiple of 8 (default: the graph's)")
    parser.add_argument("--photo", help="the photo to change, for graphs with one Load Image besides the references")
    parser.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: ComfyUI's output folder)")
    parser.add_argument("--input-directory", metavar="DIR",
                        help="ComfyUI's input folder, as ComfyUI's option of that name (default: ComfyUI's)")
    parser.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML",
                        help="another extra_model_paths.yaml, as ComfyUI's option of that name")
    parser.add_argument("--no-custom-nodes", action="store_true", help="load only ComfyUI's nodes and this pack")
    parser.add_argument("--verbose", action="store_true", help="show ComfyUI's own log")
    args = parser.parse_args(argv)
    if args.workflow is None and args.save_identity is None:
        parser.error("the WORKFLOW to run is missing")
    for number, _ in args.person_ref:
        if not number.isdigit() or int(number) < 2:
            parser.error(f"--person-ref N PHOTO: N is the person's number, 2 or more (--ref gives person 1), not '{number}'")
    if args.save_identity is not None:
        if not args.ref:
            parser.error("--save-identity needs the person's photos: --ref PHOTO (repeat for more)")
        if args.person_ref or args.photo or args.prompt is not None:
            parser.error("--save-identity saves one person from --ref photos; --person-ref, --photo and --prompt do not apply")
    elif args.overwrite:
        parser.error("--overwrite goes with --save-identity")
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
