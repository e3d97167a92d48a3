"""Grad-CAM: where in the image a conv net looked to decide (Selvaraju et al., 2017)."""
import torch
from torch import nn
from torch.nn import functional as F

from tools.monitor.hooks import hooks


def last_conv(model: nn.Module) -> nn.Module:
    """Grad-CAM's target layer: the one the model names (`gradcam_layer`, e.g. a ResNet's last stage,
    whose output is the sum of its block and the shortcut), else its last nn.Conv2d."""
    if getattr(model, "gradcam_layer", None):
        return model.get_submodule(model.gradcam_layer)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a model with at least one nn.Conv2d layer")
    return convs[-1]


def gradcam(model: nn.Module, layer: nn.Module, image: torch.Tensor, target: int | None = None):
    """Grad-CAM of one image: (cam (H, W) in [0, 1], target class, class probabilities (classes,)).

    image: (3, H, W), normalised as the model expects. target: the class to explain, by default the
    predicted one. The layer's output is caught with a forward hook and its gradient with a tensor hook;
    channel weights are the spatial mean of the gradients; cam = ReLU(weighted sum of the channels),
    upsampled to (H, W) and scaled to [0, 1]. The hooks are removed before returning.
    """
    if not any(m is layer for m in model.modules()):
        raise ValueError("gradcam: `layer` must be a module of `model`")
    captured = {}

    def keep_output(_module, _inputs, output):
        captured["activation"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradient", grad))

    was_training = model.training
    model.eval()
    try:
        with hooks([layer.register_forward_hook(keep_output)]), torch.enable_grad():
            x = image.unsqueeze(0).requires_grad_(True)  # a leaf that needs grad: the graph reaches the layer
            logits = model(x)
            probs = logits.softmax(1)[0].detach()
            target = int(logits.argmax(1)) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
    finally:
        model.train(was_training)
    activation, gradient = captured["activation"].detach()[0], captured["gradient"][0]  # (C, h, w)
    weights = gradient.mean(dim=(1, 2))                                                 # (C,)
    cam = F.relu((weights[:, None, None] * activation).sum(0))                           # (h, w)
    cam = F.interpolate(cam[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    cam = cam / cam.max() if cam.max() > 0 else cam
    model.zero_grad(set_to_none=True)
    return cam, target, probs
