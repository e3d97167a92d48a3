"""The course's toy network for watching gradients."""
import torch
from torch import nn


class ToyModel(nn.Module):
    """conv 3x3 (in -> 6, no padding), ReLU, conv 3x3 (6 -> out), ReLU, global average pool,
    Linear(out -> classes, no bias).

    Input (N, in_channels, H, W); output (N, classes) logits.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, classes: int = 2):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(in_channels, 6, 3), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, out_channels, 3), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_channels, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))
