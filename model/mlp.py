"""A deep stack of equal Linear layers: the init lab's network and the vanishing-gradient scenario."""
import torch
from torch import nn

ACTIVATIONS = {"none": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """`depth` x (Linear(width, width) then `activation`), all the same shape.

    Input (N, width); output (N, width). Layers are `layers.0`, `layers.1`, ...; activations are
    modules, so forward hooks see each one's output.
    """

    def __init__(self, depth: int, width: int, activation: str = "none", bias: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=bias) for _ in range(depth))
        self.activations = nn.ModuleList(ACTIVATIONS[activation]() for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, activation in zip(self.layers, self.activations):
            x = activation(layer(x))
        return x


def mlp_classifier(depth: int, width: int, activation: str, classes: int = 2) -> nn.Sequential:
    """`depth` Linear layers in all: depth - 1 hidden ones with `activation`, then a head to `classes`."""
    return nn.Sequential(MLP(depth - 1, width, activation, bias=True), nn.Linear(width, classes))
