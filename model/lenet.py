"""LeNet-5 for 3x32x32 images, as in the course."""
import torch
from torch import nn

from model.init import init_weights


class LeNet(nn.Module):
    """conv(3->6, 5x5) ReLU pool2 -> conv(6->16, 5x5) ReLU pool2 -> 400 -> 120 -> 84 -> classes.

    Input (N, 3, 32, 32); output (N, classes) logits. `dropout`: the probability of the dropout before fc2
    and fc3 (0: none). ReLU and pooling are modules, not functions, so that
    forward hooks (activation statistics, feature maps, Grad-CAM) see exactly what `forward` computes.
    """

    def __init__(self, classes: int = 2, dropout: float = 0.0):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.fc1, self.relu3 = nn.Linear(16 * 5 * 5, 120), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3 = nn.Linear(84, classes)
        # the course's regularisation lesson: dropout before each of the last two layers (none by default)
        self.drop = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))  # (N, 6, 14, 14)
        x = self.pool2(self.relu2(self.conv2(x)))  # (N, 16, 5, 5)
        x = x.flatten(1)                           # (N, 400)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(self.drop(x) if self.drop else x))
        return self.fc3(self.drop(x) if self.drop else x)

    def initialize_weights(self, scheme: str = "course") -> "LeNet":
        """The course's scheme by default (conv xavier_normal_, linear normal_(0, 0.1), biases 0)."""
        return init_weights(self, scheme)
