"""Small networks of four families, the kinds of models users bring to the monitor: an MLP for tabular
data, a CNN with batch norm, a residual net, and an embedding-and-attention model for token sequences.
The wider labelled suite (`tools/suites/user_loops.py`) trains each on data made in a fraction of a second."""
import torch
from torch import nn


class TabularMLP(nn.Module):
    """Input (N, features) -> (N, outputs): two hidden ReLU layers (`dropout` after each)."""

    def __init__(self, features: int, outputs: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BatchNormCNN(nn.Module):
    """Input (N, 3, H, W) -> (N, outputs): two conv-BN-ReLU blocks, then a classifier with dropout
    (`classifier.2` is its ReLU, where a high learning rate leaves dead units in healthy nets)."""

    def __init__(self, outputs: int, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(32, 64), nn.Dropout(dropout), nn.ReLU(), nn.Linear(64, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN layers and the input added back (a 1x1 conv when the shape
    changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Input (N, 3, H, W) -> (N, outputs): a stem, two residual stages, global pooling and `fc`."""

    def __init__(self, outputs: int, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))))


class TinyTransformer(nn.Module):
    """Input (N, length) token ids -> (N, outputs): an embedding with learned positions, one transformer
    encoder layer (self-attention and a feed-forward block), mean over the positions, and `head`."""

    def __init__(self, vocab: int, length: int, outputs: int, width: int = 32, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(1, length, width))
        self.encoder = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True)
        self.head = nn.Linear(width, outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position).mean(1))
