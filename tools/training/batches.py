"""Batches of decoded images kept as one tensor on the training device, augmented a whole batch at once.

The shape airbench uses for small images: the data set is one uint8 tensor (N, 3, 32, 32), on the
device when it fits; each epoch draws its random choices up front, and each step takes its batch's
crops in one gather from that tensor and maps them to floats, so that no per-image Python, no
collation and no host-to-device copy stand between two steps:

    RandomCrop(32, padding=4)  per-image offsets into the zero-padded images (`crop_starts`, `crop_windows`)
    RandomGrayscale(p=0.8)     a per-image coin picking the image's grayscale twin, made once
    ToTensor, Normalize        one affine map (`normalize`)

The twins: grayscale is a per-pixel map that leaves black black, so the grayscale of a crop is the
crop of the grayscale of the padded image; the training split is held with each image's grayscale
beside it (twice the memory), and the coin only chooses which of the two the batch's gather takes.

Each transform has the distribution of torchvision's per-image one, pixel for pixel where the random
choices are fixed (tests/test_batches.py checks the offsets' and the coins' frequencies and every
batch image against torchvision's functional ops). The random numbers come from the batches' own
generator, whose state every checkpoint keeps, drawn batch by batch in the order a crop then a
grayscale of the batch would draw them (the offsets, then the coins): the batches are those of the
per-batch transforms of before, and runs (and checkpoints saved at an epoch's end) made before go on
bit for bit. The shuffle of an epoch is drawn from seed + epoch (as DistributedSampler does) and,
under torchrun, each rank takes its own shard of it.
"""
import math

import torch

from tools.training import distributed

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


def random_offsets(n: int, padding: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomCrop's (top, left) for n images, each uniform over 0..2 * padding, as torchvision draws
    them; on the generator's device."""
    top, left = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=generator.device)
    return top, left


def window_of(padded: torch.Tensor, size: int) -> torch.Tensor:
    """The flat indices, within one image of `padded` (N, C, H', W'), of a size x size window at its top
    left, every channel: (1, C, size * size), the fixed pattern every crop adds its first pixel's index to."""
    _, channels, height, width = padded.shape
    rows = torch.arange(size, device=padded.device)[:, None] * width + torch.arange(size, device=padded.device)
    return (torch.arange(channels, device=padded.device)[:, None] * height * width + rows.view(1, -1))[None]


def crop_starts(padded: torch.Tensor, which: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Where each crop begins in `padded` (N, C, H', W') flattened: in image `which`, at (top, left)."""
    _, channels, height, width = padded.shape
    return which * (channels * height * width) + top * width + left


def crop_windows(padded: torch.Tensor, starts: torch.Tensor, window: torch.Tensor, size: int) -> torch.Tensor:
    """The windows of `padded` (N, C, H', W') that begin at `starts` (B,): flat indices into padded (see
    `crop_starts`), `window` the pattern of `window_of`. One gather (take) from the whole tensor:
    (B, C, size, size)."""
    return padded.view(-1).take(window + starts.view(-1, 1, 1)).view(-1, padded.shape[1], size, size)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) of every image of a uint8 batch (B, C, H, W): each image zero-padded,
    then cut at its own offset."""
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top, left = (t.to(images.device) for t in random_offsets(len(images), padding, generator))
    starts = crop_starts(padded, torch.arange(len(images), device=images.device), top, left)
    return crop_windows(padded, starts, window_of(padded, images.shape[2]), images.shape[2])


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale(num_output_channels=3) of a uint8 batch: the luminance, truncated
    to uint8 as torchvision does, in all three channels."""
    r, g, b = images.unbind(dim=1)
    luma = r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).to(images.dtype)
    return luma[:, None].expand_as(images)


def grayscale_coins(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """RandomGrayscale(p)'s choice for n images: True (grayscale) with probability p each."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """ToTensor then Normalize(mean, std) of a uint8 batch: (x / 255 - mean) / std, as float32.
    mean, std: (1, C, 1, 1) float tensors on the batch's device."""
    return images.float().div_(255).sub_(mean).div_(std)  # in place after the first: no more allocations


class DeviceBatches:
    """An iterable of (normalised images, labels) batches over a data set held as one tensor.

    dataset: an RMBDataset (its `images`, uint8 (N, 3, 32, 32), and `targets`); moved to `device`.
    augment and shuffle: the training split's (the course's random crop and grayscale, a new order
    each epoch); without them, the images in order, as they are (valid, test). Under torchrun each
    rank gets its own part: training, the shards of DistributedSampler (padded to equal length); else
    every rank-th image, each image on exactly one rank, so that sums over the ranks count it once.
    `generator` (on the device): the augmentation's random numbers, saved in checkpoints. A split too big
    for the GPU (`fits_on`) stays in the host's pinned memory and each batch is copied over, the same
    batches in the same order (there each epoch waits once for its random choices to reach the host).
    """

    def __init__(self, dataset, batch_size: int, mean, std, device: torch.device, seed: int = 0,
                 augment: bool = False, shard: tuple[int, int] | None = None):
        images = dataset.images
        if augment:  # padded once for RandomCrop (a step only gathers its windows), grayscale twins after them
            padded = torch.nn.functional.pad(images, (CROP_PADDING,) * 4)
            images = torch.cat([padded, grayscale(padded)])
        self.device, self.nbytes = device, images.numel() * images.element_size()
        self.on_device = fits_on(device, self.nbytes)
        self.images = images.to(device) if self.on_device else images.pin_memory() if device.type == "cuda" else images
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.int64).to(device)
        self.batch_size, self.augment, self.seed, self.size = batch_size, augment, seed, dataset.images.shape[2]
        self.window = window_of(self.images, self.size) if augment else None  # a crop's pixels, from its first
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
        order, size = self.order().to(self.images.device), self.batch_size
        targets = self.targets[order.to(self.targets.device)]
        if not self.augment:  # valid, test: in order, gathered once
            images = self.images[order]
            for start in range(0, len(order), size):
                yield normalize(images[start:start + size].to(self.device), self.mean, self.std), targets[start:start + size]
            return
        # the epoch's random choices, drawn batch by batch as a crop then a grayscale of each batch draws them
        # (its offsets, then its coins); then where each image's crop begins, in the image or its grayscale twin
        draws = [(*random_offsets(len(batch), CROP_PADDING, self.generator),
                  grayscale_coins(len(batch), GRAYSCALE_P, self.generator)) for batch in order.split(size)]
        top, left, gray = (torch.cat(column).to(self.images.device) for column in zip(*draws))
        starts = crop_starts(self.images, order + len(self.targets) * gray, top, left)
        for start in range(0, len(order), size):  # a step: one gather of its crops, the affine map
            batch = crop_windows(self.images, starts[start:start + size], self.window, self.size)
            yield normalize(batch.to(self.device, non_blocking=True), self.mean, self.std), targets[start:start + size]

    def held(self) -> str:
        """Where the images are and their size, for the run's first lines: '1.5 MB of uint8 images (with
        their grayscale twins) on cpu'."""
        what = "uint8 images (with their grayscale twins)" if self.augment else "uint8 images"
        return f"{self.nbytes / 2**20:.1f} MB of {what} on {self.device if self.on_device else 'the host (pinned)'}"


def training_batches(data: dict, batch_size: int, device: torch.device, seed: int, pipeline: str = "fast"):
    """The train split of `load_splits`' data, shuffled and augmented a batch at once on the device; with
    pipeline 'course', read the course's way instead (`tools.data.course_pipeline`: its Dataset, the
    transforms a learner edits, a DataLoader)."""
    if pipeline == "course":  # imported here: the fast path trains without importing torchvision
        from tools.data.course_pipeline import course_train_loader

        return course_train_loader(data, batch_size, seed)
    return DeviceBatches(data["train"], batch_size, data["mean"], data["std"], device, seed, augment=True)


def eval_batches(data: dict, split: str, device: torch.device) -> DeviceBatches:
    """A split of `load_splits`' data (or any {'mean', 'std', split: data set}), in order, as it is."""
    return DeviceBatches(data[split], EVAL_BATCH_SIZE, data["mean"], data["std"], device)
