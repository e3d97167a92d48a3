"""The course's ResNet for small images: a ResNet-18 adapted to 3x32x32 inputs (CIFAR-10's size, and ours).

Against torchvision's resnet18 (made for 224x224): a 3x3 stride-1 first conv and no max pool, so a 32x32
image keeps its detail into the first stage (7x7 stride 2 and a pool would leave 8x8 of it).
"""
import torch
from torch import nn

from model.init import init_weights


class BasicBlock(nn.Module):
    """conv3x3 BN ReLU conv3x3 BN, plus the input (through a 1x1 conv and BN where the shape changes),
    then ReLU. ReLUs are modules of their own, so that hooks (dead units, feature maps) see each one."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1, self.relu1 = nn.BatchNorm2d(planes), nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(planes), nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """conv3x3(3->64) BN ReLU -> 4 stages of 2 BasicBlocks (64, 128, 256, 512 channels; the last three
    halve the size: 32 -> 16 -> 8 -> 4) -> global average pool -> fc(512 -> classes).

    Input (N, 3, 32, 32); output (N, classes) logits. 11.2 million parameters."""

    picture_layers = ("conv1", "relu1", "layer1", "layer2", "layer3", "layer4")  # the stem and each stage's output
    gradcam_layer = "layer4"  # the last stage's output: its block and its shortcut together

    def __init__(self, classes: int = 10, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1, self.relu1 = nn.BatchNorm2d(width), nn.ReLU()
        planes = [width, 2 * width, 4 * width, 8 * width]
        self.layer1 = self._stage(width, planes[0], stride=1)
        self.layer2 = self._stage(planes[0], planes[1], stride=2)
        self.layer3 = self._stage(planes[1], planes[2], stride=2)
        self.layer4 = self._stage(planes[2], planes[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[3], classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))          # (N, 64, 32, 32)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512, 4, 4)
        return self.fc(self.pool(x).flatten(1))

    def initialize_weights(self, scheme: str = "course") -> "ResNet18":
        """`course`: the course's ResNet keeps PyTorch's own init (its BatchNorm layers keep the scale in
        check); any other scheme as for every model (model.init.init_weights)."""
        return init_weights(self, "default" if scheme == "course" else scheme)
