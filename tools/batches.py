"""Batches of decoded images kept as one tensor on the training device, augmented a whole batch at once.

The shape airbench uses for small images: the data set is one uint8 tensor (N, 3, 32, 32), on the
device when it fits; each step takes a batch by index and applies the course's random transforms to
all of it at once, so that no per-image Python, no collation and no host-to-device copy stand
between two steps:

    RandomCrop(32, padding=4)  per-image offsets into the zero-padded images, one gather (`random_crop`)
    RandomGrayscale(p=0.8)     a per-image coin, the luminance blended in where it fell (`random_grayscale`)
    ToTensor, Normalize        one fused affine map (`normalize`)

Each has the distribution of torchvision's per-image transform (tests/test_batches.py checks the
offsets' and the coins' frequencies, and the pixels against torchvision's functional ops). The random
numbers come from the batches' own generator, whose state every checkpoint keeps. The shuffle of an
epoch is drawn from seed + epoch (as DistributedSampler does) and, under torchrun, each rank takes
its own shard of it.
"""
import math

import torch

from tools import distributed

CROP_PADDING = 4            # RandomCrop(32, padding=4)
EVAL_BATCH_SIZE = 256       # images per evaluation batch: no gradients, so as large as memory likes
GRAYSCALE_P = 0.8           # RandomGrayscale(p=0.8)
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
DEVICE_SHARE = 0.5          # a split goes to a GPU when it takes at most half of its free memory


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of images may live on `device`: always on a CPU; on a GPU, within DEVICE_SHARE of
    its free memory (the rest is the model's and the activations')."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) of every image of a uint8 batch (B, C, H, W): each image zero-padded,
    then cut at its own offset (top, left), each uniform over 0..2 * padding, as torchvision draws it."""
    return crop_padded(torch.nn.functional.pad(images, (padding,) * 4), padding, generator)


def crop_padded(padded: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """`random_crop` of a batch already zero-padded by `padding` (B, C, H + 2p, W + 2p): one gather of
    each image's window, its flat indices the window's first pixel plus a fixed pattern."""
    b, c, padded_h, padded_w = padded.shape
    h, w = padded_h - 2 * padding, padded_w - 2 * padding
    top, left = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=generator.device).to(padded.device)
    window = (torch.arange(h, device=padded.device)[:, None] * padded_w + torch.arange(w, device=padded.device)).view(1, 1, -1)
    index = (window + (top * padded_w + left).view(b, 1, 1)).expand(b, c, -1)
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale(num_output_channels=3) of a uint8 batch: the luminance, truncated
    to uint8 as torchvision does, in all three channels."""
    r, g, b = images.unbind(dim=1)
    luma = r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).to(images.dtype)
    return luma[:, None].expand_as(images)


def random_grayscale(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """RandomGrayscale(p) of every image of a uint8 batch: each image grayscale with probability p."""
    coin = torch.rand(images.shape[0], generator=generator, device=generator.device).to(images.device) < p
    return torch.where(coin[:, None, None, None], grayscale(images), images)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """ToTensor then Normalize(mean, std) of a uint8 batch: (x / 255 - mean) / std, as float32.
    mean, std: (1, C, 1, 1) float tensors on the batch's device."""
    return (images.float() / 255 - mean) / std


class DeviceBatches:
    """An iterable of (normalised images, labels) batches over a data set held as one tensor.

    dataset: an RMBDataset (its `images`, uint8 (N, 3, 32, 32), and `targets`); moved to `device`.
    augment and shuffle: the training split's (the course's random crop and grayscale, a new order
    each epoch); without them, the images in order, as they are (valid, test). Under torchrun each
    rank gets its own part: training, the shards of DistributedSampler (padded to equal length); else
    every rank-th image, each image on exactly one rank, so that sums over the ranks count it once.
    `generator` (on the device): the augmentation's random numbers, saved in checkpoints. A split too big
    for the GPU (`fits_on`) stays in the host's pinned memory and each batch is copied over, the same
    batches in the same order.
    """

    def __init__(self, dataset, batch_size: int, mean, std, device: torch.device, seed: int = 0,
                 augment: bool = False, shard: tuple[int, int] | None = None):
        # training: padded once for RandomCrop, so that a step only gathers its windows
        images = torch.nn.functional.pad(dataset.images, (CROP_PADDING,) * 4) if augment else dataset.images
        self.device, self.nbytes = device, images.numel() * images.element_size()
        self.on_device = fits_on(device, self.nbytes)
        self.images = images.to(device) if self.on_device else images.pin_memory() if device.type == "cuda" else images
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.int64).to(device)
        self.batch_size, self.augment, self.seed = batch_size, augment, seed
        # on the device once: a step copies nothing from the host
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.epoch = 0
        if shard is None:  # (rank, world size): torchrun's, or one process
            shard = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed.enabled() \
                else (0, 1)
        self.rank, self.world = shard

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (a new shuffle every epoch, the same on every rank)."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This rank's indices for the current epoch."""
        n = len(self.targets)
        if not self.augment:
            return torch.arange(self.rank, n, self.world)
        shuffle = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's: seed + epoch
        indices = torch.randperm(n, generator=shuffle)
        per_rank = math.ceil(n / self.world)
        indices = torch.cat([indices, indices[:per_rank * self.world - n]])  # padded to equal shards
        return indices[self.rank::self.world]

    def __len__(self) -> int:
        """Batches in an epoch (on this rank)."""
        n = len(self.targets)
        per_rank = math.ceil(n / self.world) if self.augment else len(range(self.rank, n, self.world))
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        order = self.order()
        # the epoch's images in its order, gathered once: each batch is then a slice, not a gather
        images, targets = self.images[order.to(self.images.device)], self.targets[order.to(self.targets.device)]
        for start in range(0, len(order), self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device, non_blocking=True)  # a no-op on the device
            if self.augment:
                batch = random_grayscale(crop_padded(batch, CROP_PADDING, self.generator), GRAYSCALE_P, self.generator)
            yield normalize(batch, self.mean, self.std), targets[start:start + self.batch_size]


    def held(self) -> str:
        """Where the images are and their size, for the run's first lines: '2.1 MB of images on cuda:0'."""
        return f"{self.nbytes / 2**20:.1f} MB of uint8 images on {self.device if self.on_device else 'the host (pinned)'}"


def training_batches(data: dict, batch_size: int, device: torch.device, seed: int) -> DeviceBatches:
    """The train split of `load_splits`' data, shuffled and augmented a batch at once."""
    return DeviceBatches(data["train"], batch_size, data["mean"], data["std"], device, seed, augment=True)


def eval_batches(data: dict, split: str, device: torch.device) -> DeviceBatches:
    """A split of `load_splits`' data (or any {'mean', 'std', split: data set}), in order, as it is."""
    return DeviceBatches(data[split], EVAL_BATCH_SIZE, data["mean"], data["std"], device)
