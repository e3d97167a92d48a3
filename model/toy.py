"""The course's toy network for watching gradients."""
import torch
from torch import nn


class ToyModel(nn.Module):
    """conv 3x3 (in -> 6, no padding), ReLU, conv 3x3 (6 -> out), ReLU, global average pool,
    Linear(out -> classes, no bias).

    Input (N, in_channels, H, W); output (N, classes) logits. `tmp` is never used in forward: the
    course's ToyModel builds it first, and building it draws random numbers for its initial weights,
    so with it (and only with it) every other layer starts from the course's weights after
    torch.manual_seed(0), and the printed gradient norms are the course's.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, classes: int = 2):
        super().__init__()
        self.tmp = nn.Conv2d(in_channels, 6, 3)  # unused, as in the course: see the docstring
        self.conv1, self.relu1 = nn.Conv2d(in_channels, 6, 3), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, out_channels, 3), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_channels, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))
