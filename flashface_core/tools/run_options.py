"""How the runner's options land in an API prompt (the rules are in the runner's --help)."""

from collections.abc import Iterator

from . import workflow_api
from .run_graph import RunError

ENCODER = "FlashFaceEncodeReferenceFaces"
PERSON = "FlashFacePerson"
SAVE_IDENTITY = "FlashFaceSaveIdentity"
LOAD_IMAGE = "LoadImage"
TEXT_ENCODE = "CLIPTextEncode"
SEED_INPUTS = ("seed", "noise_seed")
REFERENCES_OUTPUT = 0  # the encoder's references output slot


def link_of(prompt: dict, value) -> tuple[str, int] | None:
    """(origin id, slot) when an input value is a link to a node of the prompt."""
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and isinstance(value[1], int):
        return str(value[0]), value[1]
    return None


def _links(prompt: dict):
    """(target id, input name, origin id, origin slot) for every link of an API prompt."""
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            link = link_of(prompt, value)
            if link:
                yield node_id, name, *link


def encoders_in_order(prompt: dict, within=None) -> list[str]:
    """Encoder nodes (of ``within`` when given), each after the encoder whose references it extends."""
    encoders = [i for i, n in prompt.items() if n["class_type"] == ENCODER and (within is None or i in within)]
    ordered = []

    def visit(node_id, seen=()):
        if node_id in ordered or node_id in seen:
            return
        upstream = link_of(prompt, prompt[node_id]["inputs"].get("references"))
        if upstream and prompt[upstream[0]]["class_type"] == ENCODER:
            visit(upstream[0], (*seen, node_id))
        ordered.append(node_id)

    for node_id in sorted(encoders, key=workflow_api.id_order):
        visit(node_id)
    return ordered


def _image_inputs(definitions, class_type: str) -> list[workflow_api.InputDef]:
    return [i for i in definitions[class_type].inputs if i.type == "IMAGE"]


def _source_load_image(prompt: dict, value, seen=()) -> str | None:
    """The LoadImage node an IMAGE input comes from (directly or through single-image nodes)."""
    link = link_of(prompt, value)
    if link is None or link[0] in seen:
        return None
    node = prompt[link[0]]
    if node["class_type"] == LOAD_IMAGE:
        return link[0]
    images = [v for v in node["inputs"].values() if link_of(prompt, v)]
    return _source_load_image(prompt, images[0], (*seen, link[0])) if len(images) == 1 else None


def people_in_order(prompt: dict) -> list[str]:
    """FlashFace Person nodes, each after the person whose people output it extends (person 1 first)."""
    people = [i for i, n in prompt.items() if n["class_type"] == PERSON]

    def depth(node_id, seen=()):
        upstream = link_of(prompt, prompt[node_id]["inputs"].get("people"))
        if not upstream or upstream[0] in seen or prompt[upstream[0]]["class_type"] != PERSON:
            return 0
        return 1 + depth(upstream[0], (*seen, node_id))

    return sorted(people, key=lambda i: (depth(i), workflow_api.id_order(i)))


def encoders_feeding(prompt: dict, node_id: str) -> list[str]:
    """The encoder chain whose references reach ``node_id``'s references input (empty when they come from elsewhere)."""
    found, link = [], link_of(prompt, prompt[node_id]["inputs"].get("references"))
    while link and prompt[link[0]]["class_type"] == ENCODER and link[0] not in found:
        found.append(link[0])
        link = link_of(prompt, prompt[link[0]]["inputs"].get("references"))
    return found[::-1]


def person_encoders(prompt: dict, number: int, option: str) -> list[str]:
    """The encoders of person ``number`` (1 = the first FlashFace Person node of the chain); RunError when there are none."""
    people = people_in_order(prompt)
    if number > len(people):
        raise RunError(f"{option}: this graph has {len(people)} FlashFace Person node(s), so no person {number}.")
    person = people[number - 1]
    encoders = encoders_feeding(prompt, person)
    if not encoders:
        source = link_of(prompt, prompt[person]["inputs"].get("references"))
        origin = f"node {source[0]} ({prompt[source[0]]['class_type']})" if source else "nothing"
        raise RunError(f"{option}: person {number} (node {person}) gets references from {origin}, not from a FlashFace "
                       "Encode Reference Faces node: there are no photos to replace.")
    return encoders


def reference_slots(prompt: dict, definitions, encoders=None) -> list[tuple[str, str, str | None]]:
    """(encoder id, input name, LoadImage id or None for a free optional input), in reading order, of ``encoders``
    (default: every encoder)."""
    slots = []
    for encoder in encoders_in_order(prompt, encoders):
        inputs = prompt[encoder]["inputs"]
        for spec in _image_inputs(definitions, ENCODER):
            source = _source_load_image(prompt, inputs.get(spec.name))
            if source is not None or spec.name not in inputs:
                slots.append((encoder, spec.name, source))
    return slots


def _new_load_image(prompt: dict, new_ids: Iterator[int], photo: str, number: int) -> str:
    node_id = str(next(new_ids))
    prompt[node_id] = {"inputs": {"image": photo}, "class_type": LOAD_IMAGE, "_meta": {"title": f"Reference photo {number}"}}
    return node_id


def _chain_encoder(prompt: dict, definitions, new_ids: Iterator[int], last: str) -> str:
    """A new encoder extending encoder ``last``'s references, with its settings and VAE; what read the last one's
    references reads the new one's."""
    images = {spec.name for spec in _image_inputs(definitions, ENCODER)}
    node_id = str(next(new_ids))
    for entry in prompt.values():
        for name, value in entry["inputs"].items():
            if link_of(prompt, value) == (last, REFERENCES_OUTPUT):
                entry["inputs"][name] = [node_id, REFERENCES_OUTPUT]
    inputs = {name: value for name, value in prompt[last]["inputs"].items() if name not in images and name != "references"}
    title = definitions[ENCODER].display_name + " (more references)"
    prompt[node_id] = {"inputs": {**inputs, "references": [last, REFERENCES_OUTPUT]}, "class_type": ENCODER,
                       "_meta": {"title": title}}
    return node_id


def place_references(prompt: dict, definitions, photos: list[str], new_ids: Iterator[int], encoders=None,
                     option: str = "--ref") -> list[str]:
    """Point the reference Load Image nodes at ``photos`` (names in the input folder); return a summary.

    The graph's own reference Load Image nodes take the photos first, in reading order (a node feeding
    two inputs keeps the first photo; the second input gets a new node); photos left over go to free
    optional image inputs, then to new encoders chained after the last one (new Load Image nodes);
    graph Load Image nodes left over repeat the photos on required inputs and are disconnected on
    optional ones. ``new_ids`` gives the ids of added nodes; ``encoders`` limits all this to one person's
    encoder chain (default: every encoder).
    """
    encoders = encoders_in_order(prompt, encoders)
    slots = reference_slots(prompt, definitions, encoders)
    linked = [slot for slot in slots if slot[2] is not None]
    free = [slot for slot in slots if slot[2] is None]
    if not linked:
        raise RunError(f"This graph has no Load Image node feeding a FlashFace Encode Reference Faces node: {option} has nowhere to go.")
    lines, given, numbers = [], {}, {photo: index + 1 for index, photo in reversed(list(enumerate(photos)))}
    queue = list(photos)
    for encoder, name, source in linked:
        if queue:
            photo = queue.pop(0)
        elif definitions[ENCODER].input(name).required:
            photo = photos[(len(lines) - len(photos)) % len(photos)]
        else:
            prompt[encoder]["inputs"].pop(name, None)
            if source not in given and not any(origin == source for _, _, origin, _ in _links(prompt)):
                del prompt[source]
            continue
        if given.get(source, photo) != photo:  # this Load Image already holds another photo
            source = _new_load_image(prompt, new_ids, photo, numbers[photo])
            prompt[encoder]["inputs"][name] = [source, 0]
            lines.append(f"reference: {photo} -> new node {source} -> {encoder}.{name}")
            continue
        given[source] = photo
        prompt[source]["inputs"]["image"] = photo
        lines.append(f"reference: {photo} -> node {source} -> {encoder}.{name}")
    while queue:
        if not free:
            encoder = _chain_encoder(prompt, definitions, new_ids, encoders[-1])
            encoders.append(encoder)
            free = [(encoder, spec.name, None) for spec in _image_inputs(definitions, ENCODER)]
            lines.append(f"more references: new encoder node {encoder} after node {prompt[encoder]['inputs']['references'][0]}")
        (encoder, name, _), photo = free.pop(0), queue.pop(0)
        source = _new_load_image(prompt, new_ids, photo, numbers[photo])
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
                link = link_of(prompt, value)
                if link and input_name in (which, "conditioning", "conditioning_1", "conditioning_2", "conditioning_to", "conditioning_from"):
                    stack.append(link[0])
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


def reference_load_images(prompt: dict, definitions) -> list[str]:
    return list(dict.fromkeys(source for _, _, source in reference_slots(prompt, definitions) if source))


def other_load_images(prompt: dict, definitions) -> list[str]:
    references = set(reference_load_images(prompt, definitions))
    return sorted((i for i, n in prompt.items() if n["class_type"] == LOAD_IMAGE and i not in references), key=workflow_api.id_order)


def mask_is_used(prompt: dict, node_id: str) -> bool:
    """Whether another node reads a Load Image node's MASK output (slot 1: from the photo's alpha channel)."""
    return any(origin == node_id and slot == 1 for _, _, origin, slot in _links(prompt))
