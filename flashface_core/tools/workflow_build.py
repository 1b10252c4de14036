"""The shipped graphs in ``workflows/``, written from short descriptions in ComfyUI frontend 1.27's UI format.

    python -m flashface_core.tools.workflow_build     (then: python -m flashface_core.tools.workflow_api)

Each graph is a list of nodes (type, place, widget values by input name) and links; the
inputs, outputs and ``widgets_values`` are laid out from the node definitions as the frontend
lays them out (sockets first, then widgets; the seed's ``control_after_generate`` and Load
Image's upload button included), so the files load in the page as if saved from it. The tests
load every file into the real frontend and compare what it serializes with the file.
"""

import argparse
import json
import logging
import sys

from ..faces.choices import Detector
from . import workflow_api
from .workflow_api import WORKFLOWS_DIR

log = logging.getLogger(__name__)

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
FLASHFACE = "flashface.ckpt"
SUFFIX = "best quality, masterpiece, ultra-detailed, UHD 4K, photographic"
NEGATIVE = ("blurry, ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, extra limbs, "
            "disfigured, deformed, body out of frame, bad anatomy, watermark, signature, cut off, low contrast, "
            "underexposed, overexposed, bad art, beginner, amateur, distorted face")
# FlashFaceSampler's official settings (the demo's): steps, sampler, schedule, denoise, strength, text guidance,
# reference guidance, reference start (1 - step_to_launch / 1000 = 1 - 750 / 1000), early strength, CFG rescale.
OFFICIAL = {"seed": 0, "steps": 35, "sampler_name": "euler", "scheduler": "trailing", "denoise": 1.0, "strength": 1.2,
            "text_guidance": 7.5, "reference_guidance": 3.2, "reference_start": 0.25, "early_strength": 0.85,
            "cfg_rescale": 0.5}
AGE_CHANGE = {"strength": 0.9, "text_guidance": 8.5, "reference_guidance": 2.5}  # the demo's settings for age changes
BOX = {"face_x1": 0.3, "face_y1": 0.2, "face_x2": 0.6, "face_y2": 0.5}  # the official readme's suggestion
NO_BOX = {"face_x1": 0.0, "face_y1": 0.0, "face_x2": 0.0, "face_y2": 0.0}
ENCODER = {"detector": Detector.RETINAFACE.value, "face_choice": "largest", "face_index": 0, "no_face": "error", "threshold": 0.6,
           "fill_to_four": True, "straighten": "auto"}

MODELS_NOTE = (
    f"Models (python -m flashface_core.download [--sd15] fetches them): {FLASHFACE} in models/flashface, "
    f"{CHECKPOINT} (any SD1.5 checkpoint: its CLIP and VAE are used) in models/checkpoints, the official face "
    "detector retinaface_resnet50.pth in models/facedetection (or models/flashface)."
)
LIKENESS_NOTE = (
    "Likeness: the authors' first advice is a face box around where the face should be (face_x1..y2 as fractions of "
    "the image; all zeros = anywhere). More reference photos raise likeness too. Too high strength or reference "
    "guidance looks pasted: lower them."
)
LAUNCH_NOTE = (
    "reference_start is the official step_to_launch T as a share of the schedule: 1 - T/1000 (T = 750 -> 0.25). "
    "A later start (0.4 to 0.5) leaves the prompt more room for pose and layout."
)
AGE_NOTE = "For a prompt that contradicts the references (another age or gender): strength 0.9, text guidance 8.5, reference guidance 2.5."


class Graph:
    """Nodes and links of one UI graph, laid out from node definitions."""

    def __init__(self, definitions):
        self.definitions = definitions
        self.nodes = []
        self.links = []

    def add(self, kind: str, pos, size, values: dict | None = None, title: str | None = None, mode: int = 0) -> int:
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": kind, "pos": list(pos), "size": list(size), "flags": {}, "order": 0,
                "mode": mode, "inputs": [], "outputs": []}
        if kind == "Note":
            node.update(properties={}, widgets_values=[values["text"]], color="#432", bgcolor="#653")
            self.nodes.append(node)
            return node_id
        definition = self.definitions[kind]
        sockets, widgets, widget_values = [], [], []
        for spec in definition.inputs:
            entry = {"localized_name": spec.name, "name": spec.name, **({} if spec.required else {"shape": 7})}
            if spec.is_widget:
                widgets.append({**entry, "type": spec.type, "widget": {"name": spec.name}, "link": None})
                value = (values or {}).get(spec.name, spec.options.get("default"))
                if value is None:
                    raise ValueError(f"{kind}.{spec.name} needs a value")
                widget_values.append(value)
                if spec.widget_count == 2:
                    if spec.type == "COMBO":  # the upload button after Load Image's file
                        widgets.append({"localized_name": "choose file to upload", "name": "upload", "type": "IMAGEUPLOAD",
                                        "widget": {"name": "upload"}, "link": None})
                        widget_values.append("image")
                    else:
                        widget_values.append("randomize")
            else:
                sockets.append({**entry, "type": spec.type, "link": None})
        node["inputs"] = sockets + widgets
        node["outputs"] = [{"localized_name": name, "name": name, "type": kind_, "links": None}
                           for name, kind_ in self._outputs(kind)]
        if title:
            node["title"] = title
        node["properties"] = {"Node name for S&R": kind}
        if widget_values:
            node["widgets_values"] = widget_values
        self.nodes.append(node)
        return node_id

    @staticmethod
    def _outputs(kind: str):
        import nodes

        cls = nodes.NODE_CLASS_MAPPINGS[kind]
        types = [t if type(t) is str else getattr(t, "value", str(t)) for t in cls.RETURN_TYPES]
        names = list(getattr(cls, "RETURN_NAMES", None) or types)
        return list(zip(names, types))

    def link(self, origin: int, output: int, target: int, input_name: str):
        link_id = len(self.links) + 1
        source, sink = self.nodes[origin - 1], self.nodes[target - 1]
        slot = next(i for i, entry in enumerate(sink["inputs"]) if entry["name"] == input_name)
        kind = source["outputs"][output]["type"]
        source["outputs"][output]["links"] = (source["outputs"][output]["links"] or []) + [link_id]
        sink["inputs"][slot]["link"] = link_id
        self.links.append([link_id, origin, output, target, slot, kind])

    def serialize(self) -> dict:
        order = self._execution_order()
        for node in self.nodes:
            node["order"] = order[node["id"]]
        return {"id": "00000000-0000-0000-0000-000000000000", "revision": 0, "last_node_id": len(self.nodes),
                "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.62, "offset": [30, 30]}}, "version": 0.4}

    def _execution_order(self) -> dict:
        upstream = {node["id"]: {link[1] for link in self.links if link[3] == node["id"]} for node in self.nodes}
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = [i for i in sorted(upstream) if i not in done and upstream[i] <= done]
            for node_id in ready:
                order[node_id] = len(order)
                done.add(node_id)
        return order


# ---------------------------------------------------------------- shared parts

def _models(graph: Graph, x=800):
    checkpoint = graph.add("CheckpointLoaderSimple", (x, 0), (380, 100), {"ckpt_name": CHECKPOINT},
                           title="SD1.5 checkpoint (CLIP and VAE)")
    flashface = graph.add("LoadFlashFace", (x, 150), (380, 100), {"ckpt_name": FLASHFACE, "weight_dtype": "default"})
    return checkpoint, flashface


def _prompts(graph: Graph, checkpoint: int, positive_text: str, x=800, y=300):
    positive = graph.add("CLIPTextEncode", (x, y), (400, 200), {"text": positive_text}, title="Positive prompt")
    negative = graph.add("CLIPTextEncode", (x, y + 240), (400, 200), {"text": NEGATIVE}, title="Negative prompt")
    graph.link(checkpoint, 1, positive, "clip")
    graph.link(checkpoint, 1, negative, "clip")
    return positive, negative


def _references(graph: Graph, checkpoint: int, photos: list[str], encoder_values=None, y=0, title="Reference photo"):
    """Load Image nodes for ``photos`` into one encoder (images, image_2, ...), and a preview of the crops."""
    loaders = [graph.add("LoadImage", (0, y + 380 * i), (320, 340), {"image": name}, title=f"{title} {i + 1}")
               for i, name in enumerate(photos)]
    encoder = graph.add("FlashFaceEncodeReferenceFaces", (370, y), (380, 470), {**ENCODER, **(encoder_values or {})})
    graph.link(checkpoint, 2, encoder, "vae")
    for index, loader in enumerate(loaders):
        graph.link(loader, 0, encoder, "images" if index == 0 else f"image_{index + 1}")
    preview = graph.add("PreviewImage", (370, y + 520), (380, 340), title="Aligned face crops (what FlashFace sees)")
    graph.link(encoder, 1, preview, "images")
    return encoder


def _decode(graph: Graph, latent_node: int, checkpoint: int, x=1750) -> int:
    decode = graph.add("VAEDecode", (x, 0), (200, 50))
    graph.link(latent_node, 0, decode, "samples")
    graph.link(checkpoint, 2, decode, "vae")
    return decode


def _masked_latent(graph: Graph, checkpoint: int, pixels: tuple[int, int], mask: tuple[int, int], pos) -> int:
    """VAE Encode of the ``pixels`` output (node, slot) with the ``mask`` output as its noise mask."""
    encode = graph.add("VAEEncode", pos, (200, 50))
    graph.link(*pixels, encode, "pixels")
    graph.link(checkpoint, 2, encode, "vae")
    masked = graph.add("SetLatentNoiseMask", (pos[0], pos[1] + 90), (200, 50))
    graph.link(encode, 0, masked, "samples")
    graph.link(*mask, masked, "mask")
    return masked


def _decode_and_save(graph: Graph, latent_node: int, checkpoint: int, prefix: str, x=1750):
    decode = _decode(graph, latent_node, checkpoint, x)
    save = graph.add("SaveImage", (x, 100), (500, 560), {"filename_prefix": prefix})
    graph.link(decode, 0, save, "images")
    return decode


def _sampler(graph: Graph, flashface, references, positive, negative, latent, values, x=1300, title=None, references_output=0):
    sampler = graph.add("FlashFaceSampler", (x, 0), (380, 620), {**OFFICIAL, **values}, title=title)
    for node, output, name in ((flashface, 0, "model"), (references, references_output, "references"), (positive, 0, "positive"),
                               (negative, 0, "negative"), (latent, 0, "latent_image")):
        graph.link(node, output, sampler, name)
    return sampler


def _note(graph: Graph, pos, size, *paragraphs):
    graph.add("Note", pos, size, {"text": "\n\n".join(paragraphs)})


# ---------------------------------------------------------------- the graphs

def from_photos(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png", "face_3.png"])
    positive, negative = _prompts(graph, checkpoint, f"A handsome young man, with long brown hair, on the street in the night, soft light, {SUFFIX}")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    sampler = _sampler(graph, flashface, references, positive, negative, latent, BOX)
    _decode_and_save(graph, sampler, checkpoint, "FlashFace")
    _note(graph, (1300, 680), (420, 420), MODELS_NOTE,
          "Photos to image with the official settings (35 steps, euler + trailing = the official DDIM, strength 1.2, "
          "text guidance 7.5, reference guidance 3.2). One to eight photos of one person, any sizes: images, "
          "image_2 ... image_8 of the Encode node; fill_to_four repeats them up to four as the demo does.",
          LIKENESS_NOTE, LAUNCH_NOTE, AGE_NOTE)


def stock_ksampler(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png", "face_3.png"])
    positive, negative = _prompts(graph, checkpoint, f"A handsome young man, with long brown hair, on the street in the night, soft light, {SUFFIX}")
    lora = graph.add("LoraLoaderModelOnly", (1300, 0), (380, 100), {"lora_name": "your_sd15_lora.safetensors", "strength_model": 0.8},
                     title="SD1.5 LoRA (bypassed: Ctrl+B to use it)", mode=workflow_api.BYPASSED)
    graph.link(flashface, 0, lora, "model")
    apply = graph.add("ApplyFlashFace", (1300, 150), (380, 200), {"strength": 1.2, **BOX})
    graph.link(lora, 0, apply, "model")
    graph.link(references, 0, apply, "references")
    graph.link(negative, 0, apply, "negative")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    ksampler = graph.add("KSampler", (1300, 400), (380, 270), {"seed": 0, "steps": 35, "cfg": 7.5, "sampler_name": "euler",
                                                                "scheduler": "simple", "denoise": 1.0})
    for node, name in ((apply, "model"), (positive, "positive"), (negative, "negative"), (latent, "latent_image")):
        graph.link(node, 0, ksampler, name)
    _decode_and_save(graph, ksampler, checkpoint, "FlashFace")
    _note(graph, (1300, 720), (420, 400), MODELS_NOTE,
          "Apply FlashFace gives the model the reference faces, so stock samplers (KSampler, KSamplerAdvanced, "
          "SamplerCustomAdvanced) and other model patches work with it. Its strength applies on every step and "
          "condition with plain CFG: for FlashFace's separate reference guidance use the FlashFace Sampler or Guider. "
          "KSampler: euler with the 'simple' schedule starts at the last timestep like the official trailing schedule. "
          "There is no reference_start here (the official demo's step_to_launch T = 750, i.e. reference_start 0.25 "
          "in the FlashFace Sampler): the strength applies from the first step; 1.0 to 1.2 suits most prompts.",
          LIKENESS_NOTE, "LoRA: un-bypass the LoRA node (select it, Ctrl+B) and pick an SD1.5 LoRA.")


def face_inpaint(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png"])
    positive, negative = _prompts(graph, checkpoint, f"photo of a man, detailed face, natural skin, {SUFFIX}")
    photo = graph.add("LoadImage", (800, 800), (400, 420), {"image": "photo.png"},
                      title="Photo to change (paint the face in the MaskEditor)")
    masked = _masked_latent(graph, checkpoint, (photo, 0), (photo, 1), (800, 1260))
    sampler = _sampler(graph, flashface, references, positive, negative, masked, {"denoise": 0.8, **NO_BOX})
    graph.link(photo, 1, sampler, "face_mask")
    decode = _decode(graph, sampler, checkpoint)
    composite = graph.add("ImageCompositeMasked", (1750, 100), (320, 150), {"x": 0, "y": 0, "resize_source": False},
                          title="Keep the photo outside the mask")
    graph.link(photo, 0, composite, "destination")
    graph.link(decode, 0, composite, "source")
    graph.link(photo, 1, composite, "mask")
    save = graph.add("SaveImage", (1750, 300), (500, 560), {"filename_prefix": "FlashFace_inpaint"})
    graph.link(composite, 0, save, "images")
    _note(graph, (1300, 680), (420, 380), MODELS_NOTE,
          "Face inpainting: load the photo, right-click it > Open in MaskEditor and paint over the face (or load a PNG "
          "whose transparent pixels cover the face). Only the masked part is regenerated, and the mask tells FlashFace "
          "where the face goes. Denoise 0.8 keeps pose and lighting; raise it to change more, lower it to stay closer "
          "to the photo.", LAUNCH_NOTE, AGE_NOTE)


def age_change(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png", "face_3.png"])
    positive, negative = _prompts(graph, checkpoint, f"An 80 year old man with white hair and a wrinkled face, portrait, soft light, {SUFFIX}")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    sampler = _sampler(graph, flashface, references, positive, negative, latent, {**AGE_CHANGE, **BOX})
    _decode_and_save(graph, sampler, checkpoint, "FlashFace_age")
    _note(graph, (1300, 680), (420, 400), MODELS_NOTE,
          "Age or gender change: the demo's settings for prompts that contradict the references: strength 0.9, text "
          "guidance 8.5, reference guidance 2.5 (official 1.2, 7.5, 3.2). Say the age in the prompt ('a 5 year old "
          "boy', 'an 80 year old man'); vague prompts drift to middle age. Still too close to the photos: lower "
          "reference guidance (2.0) or start it later (reference_start 0.4). Lost the person: raise them back.",
          LIKENESS_NOTE, LAUNCH_NOTE)


def many_references(graph: Graph):
    checkpoint, flashface = _models(graph)
    photos = [f"face_{i}.png" for i in range(1, 9)]
    references = _references(graph, checkpoint, photos)
    positive, negative = _prompts(graph, checkpoint, f"A woman in a red dress at a garden party, smiling, {SUFFIX}")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    sampler = _sampler(graph, flashface, references, positive, negative, latent, BOX)
    _decode_and_save(graph, sampler, checkpoint, "FlashFace_many")
    _note(graph, (1300, 680), (420, 400), MODELS_NOTE,
          "Many references: eight photos of one person into one Encode node (images, image_2 ... image_8; each input "
          "may also be a batch, for more). More photos, with different poses, light and expressions, raise likeness "
          "(the paper's finding); each adds work to every step. Photos without a face stop the run: set no_face to "
          "'skip image' to leave them out instead.", LIKENESS_NOTE, LAUNCH_NOTE)


def drawn_to_real(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["character.png"], {"detector": Detector.PRE_CROPPED.value}, title="Character face crop")
    positive, negative = _prompts(graph, checkpoint, f"A photo of a real young woman, natural skin, street photo, daylight, {SUFFIX}")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    sampler = _sampler(graph, flashface, references, positive, negative, latent, BOX)
    _decode_and_save(graph, sampler, checkpoint, "FlashFace_real")
    _note(graph, (1300, 680), (420, 420), MODELS_NOTE,
          "Drawn or virtual character to a real person (the paper's third application). Face detectors miss drawn "
          f"faces, so the reference goes in pre-cropped: detector '{Detector.PRE_CROPPED}', and the image is a tight crop of "
          "the face (chin to hairline, eyes level), which is only resized and padded to 224x224. Say 'a photo of a "
          "real ...' in the prompt. The result looks drawn: lower strength (1.0) and reference guidance (2.5); "
          "it loses the character: raise them.", LIKENESS_NOTE, LAUNCH_NOTE)


def custom_advanced(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png", "face_3.png"])
    positive, negative = _prompts(graph, checkpoint, f"A handsome young man, with long brown hair, on the street in the night, soft light, {SUFFIX}")
    apply = graph.add("ApplyFlashFace", (1300, 0), (380, 200), {"strength": 1.2, **BOX})
    graph.link(flashface, 0, apply, "model")
    graph.link(references, 0, apply, "references")
    graph.link(negative, 0, apply, "negative")
    guider = graph.add("FlashFaceGuider", (1300, 250), (380, 200), {key: OFFICIAL[key] for key in (
        "text_guidance", "reference_guidance", "reference_start", "early_strength", "cfg_rescale")})
    for node, name in ((apply, "model"), (positive, "positive"), (negative, "negative")):
        graph.link(node, 0, guider, name)
    scheduler = graph.add("FlashFaceScheduler", (1300, 500), (380, 130), {"scheduler": "trailing", "steps": 35, "denoise": 1.0})
    graph.link(apply, 0, scheduler, "model")
    noise = graph.add("RandomNoise", (1300, 680), (380, 82), {"noise_seed": 0})
    sampler_select = graph.add("KSamplerSelect", (1300, 800), (380, 60), {"sampler_name": "euler"})
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    sample = graph.add("SamplerCustomAdvanced", (1750, 700), (300, 330))
    for node, name in ((noise, "noise"), (guider, "guider"), (sampler_select, "sampler"), (scheduler, "sigmas"),
                       (latent, "latent_image")):
        graph.link(node, 0, sample, name)
    _decode_and_save(graph, sample, checkpoint, "FlashFace_custom")
    _note(graph, (800, 960), (420, 420), MODELS_NOTE,
          "SamplerCustomAdvanced with FlashFace: Apply FlashFace puts the faces on the model (its strength is the "
          "feature strength once reference guidance runs), the FlashFace Guider adds the separate text and reference "
          "guidance, the FlashFace Scheduler gives the official 'trailing' schedule, and euler on it is the official "
          "DDIM: the same image as the FlashFace Sampler with the same seed. Swap in other samplers, noise or "
          "sigmas nodes freely.", LIKENESS_NOTE, LAUNCH_NOTE, AGE_NOTE)


# Two people: face boxes left and right (their default regions split the image between them), and each person's
# prompt on the same half as their region.
LEFT_FACE = {"face_x1": 0.1, "face_y1": 0.25, "face_x2": 0.4, "face_y2": 0.55}
RIGHT_FACE = {"face_x1": 0.6, "face_y1": 0.25, "face_x2": 0.9, "face_y2": 0.55}
DEFAULT_REGION = {"region_x1": 0.0, "region_y1": 0.0, "region_x2": 0.0, "region_y2": 0.0}
IDENTITY_NAME = "person"
PEOPLE_NOTE = (
    "Two people, each from their own photos: each Encode node feeds one FlashFace Person node, chained (people -> "
    "people) into the sampler. Each person's face box (face_x1..y2, fractions of the image) says where their face "
    "goes; with the region values at 0 a person's region is the part of the image closer to their face box than to "
    "the other's (here the left and right halves). Image tokens in a person's region read only that person's "
    "references, so the faces do not blend. To move people: change their face boxes, or give region_x1..y2 (or "
    "a region_mask) on the Person nodes, and keep the regional prompts' areas (Conditioning Set Area) on the same "
    "parts. strength_scale on a Person node scales that person's feature strength alone."
)
THIRD_PERSON_NOTE = (
    "A third person: one more set of Load Image nodes and an Encode node into one more FlashFace Person node "
    "(people from the second Person node, its own face box), connected to the sampler in place of the second; and one "
    "more Conditioning Set Area with its prompt, combined into the positive prompt. Move the face boxes (e.g. thirds "
    "of the width) and the areas to match. Memory grows with people x reference photos; faces set close together "
    "share the boundary between their regions."
)


def _regional_prompt(graph: Graph, checkpoint: int, text: str, area: dict, pos, title: str) -> int:
    prompt = graph.add("CLIPTextEncode", pos, (400, 160), {"text": text}, title=title)
    graph.link(checkpoint, 1, prompt, "clip")
    placed = graph.add("ConditioningSetAreaPercentage", (pos[0] + 430, pos[1]), (320, 170), {**area, "strength": 1.0})
    graph.link(prompt, 0, placed, "conditioning")
    return placed


def _combine(graph: Graph, first: int, second: int, pos) -> int:
    combined = graph.add("ConditioningCombine", pos, (260, 50))
    graph.link(first, 0, combined, "conditioning_1")
    graph.link(second, 0, combined, "conditioning_2")
    return combined


def two_people(graph: Graph):
    checkpoint, flashface = _models(graph, x=1200)
    first = _references(graph, checkpoint, ["face_1.png", "face_2.png"], title="Person 1 photo")
    second = _references(graph, checkpoint, ["face_3.png", "face_4.png"], y=900, title="Person 2 photo")
    person_1 = graph.add("FlashFacePerson", (800, 0), (340, 420), {**DEFAULT_REGION, **LEFT_FACE, "strength_scale": 1.0},
                         title="Person 1 (left)")
    graph.link(first, 0, person_1, "references")
    person_2 = graph.add("FlashFacePerson", (800, 900), (340, 420), {**DEFAULT_REGION, **RIGHT_FACE, "strength_scale": 1.0},
                         title="Person 2 (right)")
    graph.link(second, 0, person_2, "references")
    graph.link(person_1, 0, person_2, "people")
    base, negative = _prompts(graph, checkpoint, f"Two people standing side by side in a park, daylight, {SUFFIX}", x=1200)
    left = _regional_prompt(graph, checkpoint, "a bearded man", {"width": 0.5, "height": 1.0, "x": 0.0, "y": 0.0},
                            (1200, 800), "Person 1's prompt (left half)")
    right = _regional_prompt(graph, checkpoint, "a woman in red", {"width": 0.5, "height": 1.0, "x": 0.5, "y": 0.0},
                             (1200, 1000), "Person 2's prompt (right half)")
    positive = _combine(graph, _combine(graph, base, left, (1630, 1220)), right, (1630, 1300))
    latent = graph.add("EmptyLatentImage", (1200, 1220), (320, 110), {"width": 960, "height": 640, "batch_size": 1})
    sampler = _sampler(graph, flashface, person_2, positive, negative, latent, NO_BOX, x=2000)
    _decode_and_save(graph, sampler, checkpoint, "FlashFace_two_people", x=2450)
    _note(graph, (2000, 680), (440, 560), MODELS_NOTE, PEOPLE_NOTE, THIRD_PERSON_NOTE,
          "The sampler's own face box stays at 0: the Person nodes hold the face boxes. " + LAUNCH_NOTE)


def _identity_portrait(graph: Graph, checkpoint: int, flashface: int, references: int, prefix: str):
    """The identity graphs' picture: one prompt, a square latent, the sampler and the save."""
    positive, negative = _prompts(graph, checkpoint, f"A handsome young man, with long brown hair, on the street in the night, soft light, {SUFFIX}")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 768, "batch_size": 1})
    sampler = _sampler(graph, flashface, references, positive, negative, latent, BOX)
    _decode_and_save(graph, sampler, checkpoint, prefix)


def save_identity(graph: Graph):
    checkpoint, flashface = _models(graph)
    encoder = _references(graph, checkpoint, ["face_1.png", "face_2.png", "face_3.png"])
    saver = graph.add("FlashFaceSaveIdentity", (370, 900), (380, 110), {"name": IDENTITY_NAME, "overwrite": False})
    graph.link(encoder, 0, saver, "references")
    _identity_portrait(graph, checkpoint, flashface, saver, "FlashFace")
    _note(graph, (1300, 680), (420, 420), MODELS_NOTE,
          f"Saving an identity: FlashFace Save Identity writes the encoded photos (aligned crops, their latents, the "
          f"detector and VAE that made them) to models/flashface_identities/{IDENTITY_NAME}.safetensors, then passes "
          "them on, so this graph also makes an image. Change name for another person; an existing name stops the "
          "graph unless overwrite is on. Load it in any graph with FlashFace Load Identity (the "
          "flashface_saved_identity graph), without the photos or the detector; refresh the page to see a new name.",
          LIKENESS_NOTE, LAUNCH_NOTE)


def saved_identity(graph: Graph):
    checkpoint, flashface = _models(graph)
    loader = graph.add("FlashFaceLoadIdentity", (370, 0), (380, 110), {"identity": f"{IDENTITY_NAME}.safetensors"})
    graph.link(checkpoint, 2, loader, "vae")
    preview = graph.add("PreviewImage", (370, 160), (380, 340), title="Saved face crops")
    graph.link(loader, 1, preview, "images")
    _identity_portrait(graph, checkpoint, flashface, loader, "FlashFace_identity")
    _note(graph, (1300, 680), (420, 420), MODELS_NOTE,
          f"A saved identity in place of photos: FlashFace Load Identity reads models/flashface_identities/"
          f"{IDENTITY_NAME}.safetensors (made by FlashFace Save Identity, the flashface_save_identity graph, or "
          "python -m flashface_core.run --save-identity NAME --ref PHOTO ...) and gives the same references as the "
          "photos it came from: the same image with the same seed. With another VAE than the one that saved it, the "
          "saved crops are encoded again with it. For several people, connect it to a FlashFace Person node's "
          "references as an Encode node's.", LIKENESS_NOTE, LAUNCH_NOTE)


# The detail pass: FlashFace Crop Faces' settings (its defaults) and the detail sampler's.
CROP = {"detector": Detector.RETINAFACE.value, "threshold": 0.6, "face_selection": "all above min_face_size", "face_index": 0,
        "min_face_size": 32, "context_factor": 3.0, "crop_size": 768, "mask_grow": 1.5, "feather": 64,
        "no_face": "keep the image"}
DETAIL_DENOISE = 0.45
HALF_BODY_FACE = {"face_x1": 0.4, "face_y1": 0.1, "face_x2": 0.6, "face_y2": 0.25}  # a small face, as half-body pictures hold it
DETAIL_PROMPT = f"close-up photo of a man's face, detailed skin, sharp eyes, {SUFFIX}"
DETAIL_NOTE = (
    "Face detail pass: FlashFace makes faces at its own scale (about a third of a 768 px picture); in half-body, "
    "full-body and group pictures small faces come out blurred and less alike. FlashFace Crop Faces finds each face "
    "(faces of at least min_face_size pixels), cuts a square of context_factor x the face around it (3: the face is a "
    "third of the crop, where FlashFace puts faces; larger keeps more hair and shoulders), enlarges it to crop_size "
    "(768), and gives a feathered mask (the face box grown by mask_grow, a soft edge of feather pixels). The crops "
    "are sampled again with the same references at denoise 0.45 (0.35 to 0.5: sharper and closer to the "
    "references, same pose and expression; higher redraws more) under that mask as noise mask, and FlashFace Stitch "
    "Faces puts them back: pixels outside the mask stay exactly as they were. The crop node's references output "
    "holds each crop's face position, so the detail sampler's face box stays at 0. Use it when the face is small in "
    "the picture (under about a quarter of its side); a face that is already large gains little. With several "
    "people, connect the people chain to the crop node: each face gets the references of the person whose region "
    "holds it."
)


def detail(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png", "face_3.png"])
    positive, negative = _prompts(graph, checkpoint, f"Half-body photo of a handsome young man with long brown hair, in a "
                                                     f"denim jacket, standing in a city street, daylight, {SUFFIX}")
    latent = graph.add("EmptyLatentImage", (800, 800), (320, 110), {"width": 768, "height": 1024, "batch_size": 1})
    sampler = _sampler(graph, flashface, references, positive, negative, latent, HALF_BODY_FACE)
    decode = _decode(graph, sampler, checkpoint)
    preview = graph.add("PreviewImage", (1750, 100), (400, 500), title="Before the detail pass")
    graph.link(decode, 0, preview, "images")
    crop = graph.add("FlashFaceCropFaces", (2200, 0), (380, 400), CROP)
    graph.link(decode, 0, crop, "image")
    graph.link(references, 0, crop, "references")
    face_prompt = graph.add("CLIPTextEncode", (2200, 450), (400, 160), {"text": DETAIL_PROMPT}, title="Face prompt")
    graph.link(checkpoint, 1, face_prompt, "clip")
    masked = _masked_latent(graph, checkpoint, (crop, 0), (crop, 3), (2200, 660))
    again = _sampler(graph, flashface, crop, face_prompt, negative, masked, {"denoise": DETAIL_DENOISE, **NO_BOX}, x=2650,
                     title="FlashFace Sampler (the faces)", references_output=1)
    decode_faces = _decode(graph, again, checkpoint, x=3100)
    stitch = graph.add("FlashFaceStitchFaces", (3100, 100), (300, 80))
    graph.link(decode, 0, stitch, "image")
    graph.link(decode_faces, 0, stitch, "crops")
    graph.link(crop, 4, stitch, "stitch")
    save = graph.add("SaveImage", (3100, 250), (450, 600), {"filename_prefix": "FlashFace_detail"})
    graph.link(stitch, 0, save, "images")
    _note(graph, (2650, 680), (420, 600), MODELS_NOTE, DETAIL_NOTE,
          "The first sampler's face box (face_x1..y2) puts the face small and high, as in a half-body picture. "
          + LAUNCH_NOTE)


def detail_photo(graph: Graph):
    checkpoint, flashface = _models(graph)
    references = _references(graph, checkpoint, ["face_1.png", "face_2.png"])
    positive, negative = _prompts(graph, checkpoint, DETAIL_PROMPT)
    photo = graph.add("LoadImage", (800, 800), (400, 420), {"image": "photo.png"}, title="Photo whose face to refine")
    detail_node = graph.add("FlashFaceFaceDetail", (1300, 0), (380, 900),
                            {**{k: OFFICIAL[k] for k in ("seed", "steps", "sampler_name", "scheduler", "strength",
                                                         "text_guidance", "reference_guidance", "reference_start",
                                                         "early_strength", "cfg_rescale")},
                             "denoise": DETAIL_DENOISE, **CROP})
    for node, output, name in ((flashface, 0, "model"), (references, 0, "references"), (positive, 0, "positive"),
                               (negative, 0, "negative"), (checkpoint, 2, "vae"), (photo, 0, "image")):
        graph.link(node, output, detail_node, name)
    save = graph.add("SaveImage", (1750, 0), (500, 560), {"filename_prefix": "FlashFace_detail"})
    graph.link(detail_node, 0, save, "images")
    preview = graph.add("PreviewImage", (1750, 620), (400, 400), title="Regenerated face crops")
    graph.link(detail_node, 1, preview, "images")
    _note(graph, (1300, 950), (420, 560), MODELS_NOTE,
          "Refining the face of an existing photo (or any picture) with FlashFace Face Detail: Crop Faces, the "
          "FlashFace Sampler on the crops and Stitch Faces in one node, the same image as those nodes give with the "
          "same seed (the flashface_detail graph shows them one by one). Each face is cut with context, regenerated "
          "at FlashFace's scale with the references and pasted back through a feathered mask. " + DETAIL_NOTE,
          "There is no face box to set: each crop's face position comes from the detector. " + LAUNCH_NOTE)


GRAPHS = {
    "flashface_from_photos": from_photos,
    "flashface_stock_ksampler": stock_ksampler,
    "flashface_face_inpaint": face_inpaint,
    "flashface_age_change": age_change,
    "flashface_many_references": many_references,
    "flashface_drawn_to_real": drawn_to_real,
    "flashface_sampler_custom_advanced": custom_advanced,
    "flashface_two_people": two_people,
    "flashface_save_identity": save_identity,
    "flashface_saved_identity": saved_identity,
    "flashface_detail": detail,
    "flashface_detail_photo": detail_photo,
}


def build(definitions) -> dict[str, dict]:
    graphs = {}
    for name, describe in GRAPHS.items():
        graph = Graph(definitions)
        describe(graph)
        graphs[name] = graph.serialize()
    return graphs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashface_core.tools.workflow_build", description=(
        "Write the shipped UI graphs workflows/*.json from their descriptions (then run "
        "python -m flashface_core.tools.workflow_api for workflows/api/)."))
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # ComfyUI's start-up log stays quiet
    log.setLevel(logging.INFO)
    from . import host

    host.load_nodes(other_custom_nodes=False)
    stale = []
    for name, workflow in build(workflow_api.definitions_from_host()).items():
        path = WORKFLOWS_DIR / f"{name}.json"
        text = json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
            log.error("%s differs from its description: run python -m flashface_core.tools.workflow_build", path)
            continue
        path.write_text(text)
        log.info("wrote %s", path)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
