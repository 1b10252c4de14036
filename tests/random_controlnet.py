"""A randomly initialised ControlNet sized for the tiny golden model, applied by the stock node."""

import torch


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
