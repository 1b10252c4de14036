"""One encoder pass for conditions whose U-Net inputs are identical.

After reference guidance starts, every step evaluates [positive, negative, positive with
references]. The first and last have the same latent, text, timestep, mask channel and
ControlNet; the encoder holds no reference attention, so their encoder activations are
equal. This ``DIFFUSION_MODEL`` wrapper finds such chunks in a call, runs the encoder (with
ControlNet input residuals and input-block patches) on one copy of each, repeats the skip
activations, and runs the middle block and decoder on the whole batch as ComfyUI's
``UNetModel._forward`` does. Whenever anything differs, or the call holds something it does
not reproduce (other diffusion-model wrappers, class labels, video inputs), it runs
ComfyUI's own forward.

``_forward_shared`` is a copy of ComfyUI's forward. ComfyUI's forward is checked once (the
names it reads: patch points, options, keyword inputs) against the forward the copy was
written for; a ComfyUI whose forward reads other names, e.g. a new patch point, gets its
own forward, with one log line, instead of a copy that would skip what it added.
"""

import functools
import logging

import comfy.patcher_extension
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel, apply_control, forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..contract import get_speed

logger = logging.getLogger(__name__)

# The names ComfyUI 0.3.64's ``UNetModel._forward`` reads (its string constants, less the docstring).
FORWARD_NAMES = frozenset({
    "block", "emb_patch", "image_only_indicator", "input", "input_block_patch", "input_block_patch_after_skip",
    "middle", "must specify y if and only if the model is class-conditional", "num_video_frames",
    "original_shape", "output", "output_block_patch", "patches", "time_context", "transformer_index",
})


def forward_names(forward) -> frozenset[str]:
    """The string constants of a forward function's code, less its docstring."""
    code = forward.__code__
    return frozenset(c for c in code.co_consts if isinstance(c, str) and c != forward.__doc__)


@functools.cache
def copy_matches_comfyui() -> bool:
    """Whether this ComfyUI's U-Net forward reads what ``_forward_shared`` reproduces; logged once if not."""
    changed = forward_names(UNetModel._forward) ^ FORWARD_NAMES
    if changed:
        logger.warning(
            "FlashFace: this ComfyUI's U-Net forward differs from the one the shared-encoder speed lever copies "
            "(names %s); ComfyUI's own forward is used.", sorted(changed),
        )
    return not changed


def _chunks_equal(t: torch.Tensor, chunks: int) -> torch.Tensor:
    """[chunks, chunks] booleans (on t's device): whether chunk i of t equals chunk j."""
    flat = t.reshape(chunks, -1)
    return (flat[:, None] == flat[None, :]).all(-1)


def duplicate_chunks(x, timesteps, context, control, chunks: int) -> list[int] | None:
    """For each chunk of the batch, the first chunk with the same encoder inputs; None if all differ.

    Every input's chunks are compared on the device and read back once: one host sync per call."""
    if chunks < 2 or x.shape[0] % chunks:
        return None
    inputs = [x, timesteps, context] + [c for c in (control or {}).get("input", []) if c is not None]
    same = torch.stack([_chunks_equal(t, chunks) for t in inputs if t is not None]).all(0).tolist()
    first = list(range(chunks))
    for j in range(1, chunks):
        for i in range(j):
            if first[i] == i and same[i][j]:
                first[j] = i
                break
    return first if first != list(range(chunks)) else None


def _supported(unet, transformer_options: dict, kwargs: dict) -> bool:
    wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options)
    return (
        copy_matches_comfyui()
        and len(wrappers) == 1
        and unet.num_classes is None
        and not unet.predict_codebook_ids
        and unet.middle_block is not None
        and all(v is None for k, v in kwargs.items() if k in ("time_context", "image_only_indicator"))
    )


@torch.compiler.disable
def shared_chunks(unet, x, timesteps, context, y, control, transformer_options: dict, kwargs: dict) -> list[int] | None:
    """``duplicate_chunks`` where the lever is on and the call is one ``_forward_shared``
    reproduces. It reads the comparison back to the host, so under ``torch.compile`` it runs
    eagerly: one graph break, before the forward that follows is traced."""
    if not (get_speed(transformer_options).share_encoder and y is None and _supported(unet, transformer_options, kwargs)):
        return None
    return duplicate_chunks(x, timesteps, context, control, len(transformer_options.get("cond_or_uncond") or []))


def diffusion_model_with_shared_encoder(executor, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
    """DIFFUSION_MODEL wrapper: share the encoder between chunks with identical inputs."""
    unet = executor.class_obj
    first = shared_chunks(unet, x, timesteps, context, y, control, transformer_options, kwargs)
    if first is None:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    return _forward_shared(unet, x, timesteps, context, control, transformer_options, first)


def _forward_shared(unet, x, timesteps, context, control, transformer_options: dict, first: list[int]):
    chunks = len(first)
    rows = x.shape[0] // chunks
    kept = sorted(set(first))
    keep = torch.cat([torch.arange(c * rows, (c + 1) * rows, device=x.device) for c in kept])
    repeat = torch.cat([torch.arange(kept.index(f) * rows, (kept.index(f) + 1) * rows, device=x.device) for f in first])
    patches = transformer_options.get("patches", {})

    transformer_options["original_shape"] = list(x.shape)
    transformer_options["transformer_index"] = 0
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    for patch in patches.get("emb_patch", []):
        emb = patch(emb, unet.model_channels, transformer_options)

    # The encoder, on one copy of each distinct chunk; its options describe that smaller batch.
    encoder_options = {
        **transformer_options,
        "cond_or_uncond": [transformer_options["cond_or_uncond"][c] for c in kept],
        "original_shape": [len(keep)] + list(x.shape[1:]),
    }
    if "uuids" in transformer_options:
        encoder_options["uuids"] = [transformer_options["uuids"][c] for c in kept]
    encoder_control = None
    if control is not None:
        encoder_control = {"input": [None if c is None else c[keep] for c in control.get("input", [])]}
    h, encoder_emb, encoder_context = x[keep], emb[keep], context[keep]
    hs = []
    for index, module in enumerate(unet.input_blocks):
        encoder_options["block"] = ("input", index)
        h = forward_timestep_embed(module, h, encoder_emb, encoder_context, encoder_options)
        h = apply_control(h, encoder_control, "input")
        for patch in patches.get("input_block_patch", []):
            h = patch(h, encoder_options)
        hs.append(h[repeat])
        for patch in patches.get("input_block_patch_after_skip", []):
            h = patch(h, encoder_options)
    h = h[repeat]
    transformer_options["transformer_index"] = encoder_options["transformer_index"]

    # The middle block and decoder on the whole batch, as UNetModel._forward runs them.
    transformer_options["block"] = ("middle", 0)
    h = forward_timestep_embed(unet.middle_block, h, emb, context, transformer_options)
    h = apply_control(h, control, "middle")
    for index, module in enumerate(unet.output_blocks):
        transformer_options["block"] = ("output", index)
        hsp = apply_control(hs.pop(), control, "output")
        for patch in patches.get("output_block_patch", []):
            h, hsp = patch(h, hsp, transformer_options)
        h = torch.cat([h, hsp], dim=1)
        del hsp
        output_shape = hs[-1].shape if hs else None
        h = forward_timestep_embed(module, h, emb, context, transformer_options, output_shape)
    return unet.out(h.type(x.dtype))
