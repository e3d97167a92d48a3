"""The course's data pipeline, as the course writes it: a Dataset that opens each photo in __getitem__, the
transforms in a transforms.Compose, and a DataLoader. Edit `train_transform` and train with it:

    python train_rmb.py --pipeline course                   # training batches from this file
    python train_rmb.py --pipeline course --data-dir data/RMB_data

train_rmb.py's own path (`tools.training.batches`) decodes every photo once and applies the same
transforms to a whole batch at once on the device, several times faster; both give a batch the same
distribution (tests/test_batches.py), and for the same random choices the same pixels but for the resize:
this pipeline resizes each photo with Resize((32, 32)), the fast path once at decoding (a JPEG at a reduced
scale first, see `tools.data.decode`). Validation and test use the decoded images in both.
"""
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from tools.cli.errors import UserError
from tools.data.decode import open_rgb


def train_transform(mean, std) -> transforms.Compose:
    """The course's training transforms: change them here (add ColorJitter, drop RandomGrayscale, ...)."""
    return transforms.Compose([
        transforms.Resize((32, 32)),
        transforms.RandomCrop(32, padding=4),
        transforms.RandomGrayscale(p=0.8),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def valid_transform(mean, std) -> transforms.Compose:
    """The course's validation transforms: no randomness."""
    return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize(mean, std)])


class CourseDataset(Dataset):
    """The course's RMBDataset: (path, label) pairs; each item opens its photo, converts it to RGB and
    applies `transform`. Returns (image tensor, label).

    Where the course calls `convert("RGB")`, this uses the fast path's `open_rgb`, so that every mode PIL
    reads becomes the same pixels in both pipelines (convert clips a 16-bit PNG to 255: white). `decoded`
    (uint8, (N, 3, 32, 32), in the order of `samples`): the run's decoded copies; a photo gone or damaged
    since the run began is then trained from its copy, with one warning, as the fast path would."""

    def __init__(self, samples: list[tuple[str, int]], transform=None, decoded: torch.Tensor | None = None):
        self.data_info = list(samples)
        self.transform = transform
        self.decoded = decoded

    def __getitem__(self, index: int):
        path, label = self.data_info[index]
        try:
            img = open_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            if self.decoded is None:
                raise UserError(f"cannot read {path} ({getattr(err, 'strerror', None) or err}): restore it or "
                                "remove it from the data") from None
            warnings.warn(f"{path} cannot be read any more ({getattr(err, 'strerror', None) or err}): the course "
                          "pipeline trains on the copy decoded when the run began")
            img = Image.fromarray(self.decoded[index].cpu().permute(1, 2, 0).numpy())
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __len__(self) -> int:
        return len(self.data_info)


class TxtIndexDataset(CourseDataset):
    """The course's Dataset over a txt index: each line of `index_file` is "<image path> <class index>",
    the path relative to the index file's folder (as `python -m tools.rmb_dataset DIR --out OUT --index`
    writes them) or absolute. A line that is not two fields, or whose label is not an integer, is a
    UserError naming the file and the line."""

    def __init__(self, index_file: Path, transform=None):
        index_file = Path(index_file)
        samples = []
        try:
            text = index_file.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read the txt index {index_file} ({getattr(err, 'strerror', None) or err})") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            path, _, label = line.rstrip().rpartition(" ")
            if not path or not label.lstrip("-").isdigit():
                raise UserError(f"{index_file} line {number}: {line!r} is not '<image path> <class index>'")
            samples.append((str(index_file.parent / path), int(label)))
        super().__init__(samples, transform)


class CourseLoader(DataLoader):
    """A DataLoader over CourseDataset, shuffled by its own generator (saved in checkpoints, so a resumed
    run draws the same order); the transforms draw from torch's global generator, which checkpoints keep
    too."""

    def __init__(self, samples, transform, batch_size: int, seed: int, decoded: torch.Tensor | None = None):
        super().__init__(CourseDataset(samples, transform, decoded), batch_size=batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(seed))

    def held(self) -> str:
        """For the run's first lines: where the training images come from."""
        return f"training batches from the course's Dataset and DataLoader (each photo opened every step; " \
               f"transforms in {Path(__file__).relative_to(Path(__file__).parents[2])})"


def course_train_loader(data: dict, batch_size: int, seed: int) -> CourseLoader:
    """The train split of `load_splits`' data, read the course's way, with `train_transform`. One process
    only (UserError under torchrun: the course's loader has no sampler to shard the data)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise UserError("--pipeline course runs on one process: leave it out under torchrun")
    train = data["train"]
    return CourseLoader(train.samples, train_transform(data["mean"], data["std"]), batch_size, seed, train.images)
