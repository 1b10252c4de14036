"""Helpers the sampling, speed and model tests share: small models, files and one sampler call."""

import torch

LATENT = (1, 4, 8, 8)
GUIDANCE = dict(text_guidance=7.5, reference_guidance=3.2, reference_start=0.25, early_strength=0.85, cfg_rescale=0.5)


def run_sampler(model, inputs, latent=None, seed=0, steps=3, sampler_name="euler", scheduler="trailing", denoise=1.0,
                box=(0.0, 0.0, 0.0, 0.0), face_mask=None, **overrides):
    from comfyui_flashface.nodes.sampler import FlashFaceSampler

    latent = latent if latent is not None else {"samples": torch.zeros(LATENT)}
    args = {**GUIDANCE, **overrides}
    face_box = dict(zip(("face_x1", "face_y1", "face_x2", "face_y2"), box))
    (out,) = FlashFaceSampler.execute(
        model=model, references=inputs["references"], positive=inputs["positive"], negative=inputs["negative"],
        latent_image=latent, seed=seed, steps=steps, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
        strength=1.2, face_mask=face_mask, **face_box, **args,
    ).result
    return out["samples"]


def lora_file(tmp_path, rank=4):
    """Random low-rank weights in the SD1.5 (kohya) LoRA format, sized for the tiny model."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    layers = {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (128, 128),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (128, 768),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (32, 32),
    }
    tensors = {}
    for name, (out_features, in_features) in layers.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_features) * 0.3
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank) * 0.3
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    path = tmp_path / "tiny_face_lora.safetensors"
    save_file(tensors, str(path))
    return path


def plain_sd15_model():
    """A small plain SD1.5-layout model, to show FlashFace leaves other models alone."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15({
        "model_channels": 32, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1, 1, 1, 1],
        "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
        "adm_in_channels": None, "use_temporal_attention": False, "use_spatial_transformer": True, "legacy": False,
        "use_temporal_resblock": False, "image_size": 32, "use_checkpoint": False,
    })
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device())


@torch.no_grad()
def plain_eval(patcher):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    device = patcher.load_device
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(2)).to(device)
    return patcher.model.apply_model(x, torch.tensor([1.0], device=device), c_crossattn=context)


def apply_random_controlnet(flashface, positive, negative):
    """``positive`` and ``negative`` with a random ControlNet applied by ControlNetApplyAdvanced."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops
    import nodes

    config = {**flashface.model.model_config.unet_config, "in_channels": 4, "hint_channels": 3}
    control_model = comfy.cldm.cldm.ControlNet(**config, device="cpu", operations=comfy.ops.disable_weight_init)
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in control_model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.05)
    control = comfy.controlnet.ControlNet(control_model, load_device=torch.device("cpu"))
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)


def all_off(**levers):
    """Speed settings with every lever off but the ones named."""
    from comfyui_flashface.flashface_core.contract import SpeedSettings

    return SpeedSettings(**{"cache_reference_pass": False, "share_encoder": False, "merged_attention": False,
                          "prefetch_reference_pass": False, **levers})


def tiny_vae(seed=0, dtype=None):
    """A real comfy.sd.VAE with the SD1.5 layout at 32 base channels, randomly initialised from ``seed``."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    generator = torch.Generator().manual_seed(seed)
    shapes = AutoencoderKL(ddconfig=ddconfig, embed_dim=4).state_dict()
    state = {key: torch.randn(value.shape, generator=generator) * 0.05 for key, value in shapes.items()}
    return comfy.sd.VAE(sd=state, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}}, dtype=dtype)
