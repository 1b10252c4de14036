"""The FlashFace model as a native ComfyUI model.

``FlashFaceModel`` is a ComfyUI ``BaseModel`` whose ``diffusion_model`` is ComfyUI's own
SD1.5 ``UNetModel`` (5 input channels) and which also owns the reference U-Net's blocks and
the reference-attention layers, so ComfyUI's model management loads, offloads, casts and
LoRA-patches them together. The injection that ties them together lives in
``flashface_core/injection/``.
"""

import comfy.conds
import comfy.model_base
import comfy.supported_models
import comfy.utils
import torch
from comfy.ldm.modules.attention import CrossAttention, SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..contract import FACE_MASK_KEY, REFERENCES_KEY, REGIONS_KEY
from .checkpoint import CheckpointError
from .key_layout import PACK_PREFIXES, reference_attention_name
from .timesteps import OfficialTimestepSampling

# Every GroupNorm of the official U-Nets; ComfyUI builds ResBlocks and `out` with 1e-5.
GROUP_NORM_EPS = 1e-6


class FlashFaceConfig(comfy.supported_models.SD15):
    """SD1.5 with a 5-channel main U-Net that is *not* an inpainting model.

    ComfyUI treats any SD1.5 U-Net with more than 4 input channels as inpainting and feeds
    it a mask and a masked image of its own; FlashFace's fifth channel is the face-position
    mask, supplied by ``FlashFaceModel.concat_cond``.
    """

    def inpaint_model(self):
        return False

    def get_model(self, state_dict, prefix="", device=None):
        return FlashFaceModel(self, device=device)


class ReferenceUNet(torch.nn.Module):
    """The reference U-Net's encoder and decoder blocks (its time embedding and middle block
    are the main U-Net's, as in the released model)."""

    def __init__(self, unet_config: dict, device, operations):
        super().__init__()
        unet = UNetModel(**{**unet_config, "in_channels": 4}, device=device, operations=operations)
        self.input_blocks = unet.input_blocks
        self.output_blocks = unet.output_blocks


def reference_attention_layers(unet: UNetModel, device, operations, dtype) -> torch.nn.ModuleDict:
    """One reference attention per transformer block of the middle block and the decoder."""
    layers = {}
    blocks = [(("middle", 0), unet.middle_block)] + [(("output", i), b) for i, b in enumerate(unet.output_blocks)]
    for block, module in blocks:
        for child in module:
            if not isinstance(child, SpatialTransformer):
                continue
            for index, transformer in enumerate(child.transformer_blocks):
                attn1 = transformer.attn1
                layers[reference_attention_name(block, index)] = CrossAttention(
                    query_dim=attn1.to_q.in_features,
                    heads=attn1.heads,
                    dim_head=attn1.dim_head,
                    attn_precision=attn1.attn_precision,
                    dtype=dtype,
                    device=device,
                    operations=operations,
                )
    return torch.nn.ModuleDict(layers)


class FlashFaceModel(comfy.model_base.BaseModel):
    def __init__(self, model_config: FlashFaceConfig, device=None):
        chosen = {}

        def main_unet(**kwargs):  # keeps the operations BaseModel picks (custom, fp8, manual cast)
            chosen["operations"] = kwargs["operations"]
            return UNetModel(**kwargs)

        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=main_unet)
        self.model_sampling = OfficialTimestepSampling(model_config)
        self.memory_usage_factor_conds = (REFERENCES_KEY,)
        unet_config = model_config.unet_config
        operations = chosen["operations"]
        self.reference_unet = ReferenceUNet(unet_config, device, operations)
        self.reference_attention = reference_attention_layers(self.diffusion_model, device, operations, unet_config.get("dtype"))
        for module in self.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.eps = GROUP_NORM_EPS

    def concat_cond(self, **kwargs):
        """The face-position mask channel (zeros, i.e. no constraint, unless a cond carries one)."""
        noise = kwargs["noise"]
        position = kwargs.get(FACE_MASK_KEY)
        if position is None:
            return torch.zeros_like(noise[:, :1])
        mask = position.latent_mask(noise.shape[-2], noise.shape[-1])
        return comfy.utils.resize_to_batch_size(mask[:, None], noise.shape[0]).to(noise)

    def extra_conds(self, **kwargs):
        """ComfyUI's conditions, and the people's region weights: shaped like the noise, so an
        area condition's crop and the batch reach them as they reach the mask channel."""
        out = super().extra_conds(**kwargs)
        regions = kwargs.get(REGIONS_KEY)
        if regions is not None:
            out[REGIONS_KEY] = comfy.conds.CONDNoiseShape(regions)
        return out

    def extra_conds_shapes(self, **kwargs):
        """The reference pass as extra tokens for ``memory_required``: its activations at the
        references' size, and as many again for the keys and values it leaves for the main pass
        (every person's)."""
        out = super().extra_conds_shapes(**kwargs)
        people = kwargs.get(REFERENCES_KEY)
        if people:
            latents = [references.model_latents() for references in people]
            tokens = sum(l.shape[0] * l.shape[2] * l.shape[3] for l in latents)
            out[REFERENCES_KEY] = [1, latents[0].shape[1], 2 * tokens]
        return out

    def load_model_weights(self, sd, unet_prefix=""):
        """Load every tensor of a pack-layout state dict; anything missing or extra is an error."""
        try:
            missing, unexpected = self.load_state_dict(sd, strict=False, assign=False)
        except RuntimeError as error:  # shapes that do not fit the architecture read from the file
            raise CheckpointError(
                f"The checkpoint's tensor shapes do not fit one FlashFace-SD1.5 model ({str(error).splitlines()[-1].strip()}); "
                f"download or convert it again."
            ) from None
        missing = [k for k in missing if k.startswith(PACK_PREFIXES)]
        if missing or unexpected:
            raise CheckpointError(
                "The checkpoint does not fit the FlashFace-SD1.5 architecture "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); download or convert it again."
            )
        return self
