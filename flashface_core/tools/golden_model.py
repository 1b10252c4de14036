"""Running the golden checks: single U-Net evaluations of a golden set through ComfyUI.

Each evaluation goes through ComfyUI's own condition batching (``calc_cond_batch``), so
the condition indices, batching and FlashFace patches are exactly those of a sampler run.
"""

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import torch
from safetensors.torch import load_file

from ..contract import FACE_MASK_KEY, GuidanceSettings, with_condition_strengths
from ..guidance.sampling import sample
from ..guidance.schedules import TRAILING, trailing_sigmas
from ..injection.apply import apply_flashface
from ..loader import load_flashface
from ..model.face_position import FacePosition
from ..model.references import FlashFaceReferences
from ..model.timesteps import trailing_timesteps
from . import golden_sets
from .golden_sets import SETTINGS, TENSORS, relative_error

CHECKPOINT = "flashface_tiny.ckpt"


@dataclass
class GoldenSet:
    path: Path
    settings: dict
    tensors: dict

    @classmethod
    def load(cls, path: Path) -> "GoldenSet":
        return cls(path, json.loads((path / SETTINGS).read_text()), load_file(str(path / TENSORS)))

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT


def find_golden_sets(roots) -> list[Path]:
    """Every folder below ``roots`` holding a complete model golden set."""
    return golden_sets.find_golden_sets(roots, CHECKPOINT)


def with_golden_references(model, golden: GoldenSet, strength: float | None = None, face_mask=None):
    """A clone of a loaded golden model reading the set's references, as ApplyFlashFace makes it."""
    refs = FlashFaceReferences(model.model.latent_format.process_out(golden.tensors["ref_latents"]))
    if strength is None:
        strength = golden.settings["settings"]["feature_strength"]
    return apply_flashface(model, refs, [[golden.tensors["uncond"], {}]], strength, face_mask=face_mask)


@torch.no_grad()
def evaluate_conditions(model, x: torch.Tensor, timestep: int, contexts: list, strengths: list, face_mask: torch.Tensor) -> list:
    """The raw U-Net outputs (eps) for each condition at integer ``timestep``.

    Each of ``contexts`` is a text embedding or a CONDITIONING (to carry a ControlNet).
    ``x`` is the U-Net input as the official code feeds it; ComfyUI's sampler state is
    ``x * sqrt(1 + sigma^2)``.
    """
    comfy.model_management.load_models_gpu([model])
    base = model.model
    device = model.load_device
    sigma = base.model_sampling.sigma(torch.tensor([float(timestep)])).to(device)
    scale = (sigma**2 + 1).sqrt()
    x_sampler = (x.to(device) * scale).float()
    model_options = comfy.model_patcher.create_model_options_clone(model.model_options)
    conds = {}
    for index, context in enumerate(contexts):
        conditioning = context if isinstance(context, list) else [[context, {}]]
        mask = {FACE_MASK_KEY: FacePosition(mask=face_mask)}
        conds[str(index)] = comfy.sampler_helpers.convert_cond([[c, {**mask, **extra}] for c, extra in conditioning])
    comfy.sampler_helpers.prepare_model_patcher(model, conds, model_options)
    model_options = with_condition_strengths(model_options, strengths)
    conds = comfy.samplers.process_conds(base, x_sampler, conds, device)
    sigmas = sigma.expand(x.shape[0])
    model.pre_run()
    try:
        denoised = comfy.samplers.calc_cond_batch(base, [conds[str(i)] for i in range(len(contexts))], x_sampler, sigmas, model_options)
    finally:
        model.cleanup()
    return [((x_sampler - d) / sigma).float().cpu() for d in denoised]


def unet_outputs(golden: GoldenSet, model) -> dict:
    """The three single-evaluation outputs the golden set describes."""
    t = golden.tensors
    settings = golden.settings["settings"]
    lam, lam_early = settings["feature_strength"], settings["feature_strength_before_ref_guidance"]
    x, mask = t["x"], t["mask"]
    outputs = {
        "out_3cond_t500": evaluate_conditions(model, x, 500, [t["cond"], t["cond"], t["uncond"]], [lam, 0.0, 0.0], mask),
        "out_2cond_t900": evaluate_conditions(model, x, 900, [t["cond"], t["uncond"]], [lam_early, lam_early], mask),
        "out_2cond_t900_strength0": evaluate_conditions(model, x, 900, [t["cond"], t["uncond"]], [0.0, 0.0], mask),
    }
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}


def golden_guidance(settings: dict) -> GuidanceSettings:
    """The guidance of a golden set's settings, as the sampler node would get it."""
    return GuidanceSettings(
        text_guidance=settings["text_guidance"], reference_guidance=settings["ref_guidance"],
        reference_start=1.0 - settings["ref_guidance_launch_t"] / 1000.0,
        early_strength=settings["feature_strength_before_ref_guidance"], cfg_rescale=settings["cfg_rescale"],
    )


@contextlib.contextmanager
def replayed_timesteps(model_sampling, sigmas: torch.Tensor, timesteps):
    """Within the block, ``model_sampling`` answers ``timesteps`` for exactly these ``sigmas``.

    Only for replaying a recorded official run at half times, where the official side came
    from its machine's MKL rounding (docs/timesteps.md) and no rule can know it; the pack's
    own rule answers every other sigma.
    """
    own = model_sampling.timestep
    pins = list(zip(sigmas.float().tolist(), timesteps))

    def timestep(sigma):
        t = own(sigma)
        for value, step in pins:
            t = torch.where(sigma == value, torch.full_like(t, float(step)), t)
        return t

    model_sampling.timestep = timestep
    try:
        yield
    finally:
        del model_sampling.timestep


def sample_z0(golden: GoldenSet, model, people=None) -> torch.Tensor:
    """The official sampling run through FlashFaceSampler's code path; scaled latents. ``people``
    (FlashFacePeople) replace the set's references and face mask, to run them through the people path."""
    t = golden.tensors
    settings = golden.settings["settings"]
    if settings.get("timesteps") != TRAILING or not settings.get("solver", "").startswith("ddim"):
        raise ValueError(f"{golden.path}: only the official DDIM run on trailing timesteps is reproduced.")
    if people is None:
        model = with_golden_references(model, golden, face_mask=t["mask"])
    else:
        model = apply_flashface(model, people, [[t["uncond"], {}]], settings["feature_strength"])
    noise = t["noise"]
    latent = {"samples": torch.zeros_like(noise)}
    # At exact half times the recorded run's side is its machine's MKL rounding (docs/timesteps.md):
    # replay those timesteps; every other timestep is the pack's own (tests/test_sampling.py checks them).
    steps = settings["steps"]
    halves = trailing_timesteps(steps).frac() == 0.5
    seen = [s for s, half in zip(golden.settings["unet_timesteps_seen_in_sampling"], halves.tolist()) if half]
    with replayed_timesteps(model.model.model_sampling, trailing_sigmas(model.model.model_sampling, steps)[:-1][halves], seen):
        result = sample(
            model, [[t["cond"], {}]], [[t["uncond"], {}]], latent, seed=0, steps=steps,
            sampler_name="euler", scheduler=TRAILING, denoise=1.0, guidance=golden_guidance(settings), noise=noise,
        )
    return model.model.process_latent_in(result["samples"].float())


def check(golden: GoldenSet) -> dict:
    """Relative error of every output this port reproduces."""
    model = load_flashface(golden.checkpoint, "fp32")
    outputs = unet_outputs(golden, with_golden_references(model, golden))
    outputs["sample_z0"] = sample_z0(golden, model)
    return {name: relative_error(value, golden.tensors[name]) for name, value in outputs.items()}
