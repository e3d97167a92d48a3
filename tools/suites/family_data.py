"""Data for the wider labelled suite, made here in a fraction of a second (nothing downloaded): tabular
features, small images and token sequences, each with a class that the data really carries.

    splits = make_splits("tabular", seed=0)      # {'train': (x, y), 'valid': (x, y), 'classes': 4}

Options: `imbalance` (a class 100x rarer than the other, overlapping it), `raw` (features or pixels at
their natural scale, not normalised).
"""
import math

import torch

TRAIN, VALID = 768, 256       # examples per split
CLASSES = 4
FEATURES, RARE = 16, 4        # tabular: dense features, and features that are 0 in 99.5% of the rows
IMAGE = 16                    # images: 3 x 16 x 16
VOCAB, LENGTH = 32, 12        # tokens: ids 0..31, sequences of 12


def tabular(n: int, generator: torch.Generator, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, FEATURES + RARE) rows: the class's center plus noise, and rare, heavy-tailed features (0 in 99.5%
    of the rows, up to about 30 when standardised: a tabular data set's sparse counts)."""
    dense = centers[labels] + torch.randn(n, FEATURES, generator=generator)
    rare = (torch.rand(n, RARE, generator=generator) < 0.005) * torch.rand(n, RARE, generator=generator) * 50
    return torch.cat([dense, rare], 1)


def images(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, IMAGE, IMAGE) images, mean ~0, std ~1: class 0 horizontal stripes, 1 vertical, 2 diagonal,
    3 a checkerboard, each at a random phase and colour, under noise."""
    n = len(labels)
    grid = torch.arange(IMAGE, dtype=torch.float32)
    y, x = grid.view(1, -1, 1), grid.view(1, 1, -1)
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    waves = [torch.sin(y * 1.2 + phase), torch.sin(x * 1.2 + phase), torch.sin((x + y) * 0.9 + phase),
             torch.sin(x * 1.2 + phase) * torch.sin(y * 1.2)]
    pattern = torch.stack([w.expand(n, IMAGE, IMAGE) for w in waves], 1)[torch.arange(n), labels.long() % len(waves)]  # (n, IMAGE, IMAGE)
    colour = 0.5 + torch.rand(n, 3, 1, 1, generator=generator)
    return pattern.unsqueeze(1) * colour * 0.6 + 1.0 * torch.randn(n, 3, IMAGE, IMAGE, generator=generator)


def tokens(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(n, LENGTH) token ids: filler ids from CLASSES + 1 up, and the class's key id (class + 1) at a random
    position: the model must find it wherever it is."""
    n = len(labels)
    ids = torch.randint(CLASSES + 1, VOCAB, (n, LENGTH), generator=generator)
    where = torch.randint(0, LENGTH, (n,), generator=generator)
    ids[torch.arange(n), where] = labels + 1
    return ids


def make_splits(kind: str, seed: int = 0, imbalance: bool = False, raw: bool = False) -> dict:
    """{'train': (inputs, labels), 'valid': (inputs, labels), 'classes': count} for `kind` in 'tabular',
    'images', 'tokens'. With `imbalance` (tabular): two classes, 1000:10 in train and 200:20 in valid,
    the rare one close to the common one. With `raw`: tabular features scaled by up to 1000 and offset,
    images as 0-255 values."""
    generator = torch.Generator().manual_seed(seed)
    classes = 2 if imbalance else CLASSES
    if imbalance:
        counts = {"train": (1000, 10), "valid": (200, 20)}
        labels = {s: torch.cat([torch.zeros(a, dtype=torch.long), torch.ones(b, dtype=torch.long)])
                  for s, (a, b) in counts.items()}
    else:
        labels = {s: torch.randint(0, classes, (n,), generator=generator) for s, n in (("train", TRAIN), ("valid", VALID))}
    if kind == "tabular":
        centers = torch.randn(classes, FEATURES, generator=generator) * (0.15 if imbalance else 0.35)
        data = {s: tabular(len(y), generator, centers, y) for s, y in labels.items()}
        if raw:  # incomes, ages, counts: each column at its own scale
            scale = 10 ** torch.linspace(0, 3, FEATURES + RARE)
            data = {s: x * scale + 5 * scale for s, x in data.items()}
        else:    # standardised with the train split's statistics (what StandardScaler does)
            mean, std = data["train"].mean(0), data["train"].std(0)
            std = torch.where(std > 0, std, torch.ones_like(std))  # a rare column with no value in train
            data = {s: (x - mean) / std for s, x in data.items()}
    elif kind == "images":
        data = {s: images(y, generator) for s, y in labels.items()}
        if raw:
            data = {s: (x * 50 + 128).clamp(0, 255).round() for s, x in data.items()}
    elif kind == "tokens":
        data = {s: tokens(y, generator) for s, y in labels.items()}
    else:
        raise ValueError(f"make_splits: kind is 'tabular', 'images' or 'tokens', not {kind!r}")
    return {"train": (data["train"], labels["train"]), "valid": (data["valid"], labels["valid"]), "classes": classes}
