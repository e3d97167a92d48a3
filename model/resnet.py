"""ResNets for small images (3x32x32: CIFAR-10's size, and ours): ResNet-18 adapted to them, and the
course's smaller ResNet.

Against torchvision's resnet18 (made for 224x224), both have a 3x3 stride-1 first conv and no max pool, so
a 32x32 image keeps its detail into the first stage (7x7 stride 2 and a pool would leave 8x8 of it).
`ResNet18` keeps ResNet-18's four stages of 64-512 channels (11.2 M parameters); `CourseResNet` is the
course's variant: the last stage dropped and 16/32/64 channels (0.18 M parameters).
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


class ResNet(nn.Module):
    """conv3x3(3->widths[0]) BN ReLU -> a stage of 2 BasicBlocks per width (every stage after the first
    halves the size) -> global average pool -> fc(widths[-1] -> classes). Stages are layer1, layer2, ...

    Input (N, 3, 32, 32); output (N, classes) logits."""

    def __init__(self, classes: int = 10, widths: tuple = (64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1, self.relu1 = nn.BatchNorm2d(widths[0]), nn.ReLU()
        stages = [f"layer{i}" for i in range(1, len(widths) + 1)]
        for i, (name, planes) in enumerate(zip(stages, widths)):
            setattr(self, name, self._stage(widths[max(i - 1, 0)], planes, stride=1 if i == 0 else 2))
        self.stages = stages
        self.picture_layers = ("conv1", "relu1", *stages)  # the stem and each stage's output
        self.gradcam_layer = stages[-1]  # the last stage's output: its block and its shortcut together
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))          # (N, widths[0], 32, 32)
        for name in self.stages:
            x = getattr(self, name)(x)                      # ResNet-18's last: (N, 512, 4, 4)
        return self.fc(self.pool(x).flatten(1))

    def initialize_weights(self, scheme: str = "course") -> "ResNet":
        """`course`: the course's ResNet keeps PyTorch's own init (its BatchNorm layers keep the scale in
        check); any other scheme as for every model (model.init.init_weights)."""
        return init_weights(self, "default" if scheme == "course" else scheme)


class ResNet18(ResNet):
    """ResNet-18 for 32x32: 4 stages of 64, 128, 256, 512 channels (32 -> 16 -> 8 -> 4), fc(512 -> classes).
    11.2 million parameters."""

    def __init__(self, classes: int = 10):
        super().__init__(classes, (64, 128, 256, 512))


class CourseResNet(ResNet):
    """The course's ResNet: ResNet-18's blocks with its last stage dropped and 16, 32, 64 channels
    (32 -> 16 -> 8), fc(64 -> classes). 0.18 million parameters."""

    def __init__(self, classes: int = 10):
        super().__init__(classes, (16, 32, 64))
