"""The RMB banknote data set (or any <dir>/<class>/<image> folder): finding the classes, the seeded
80/10/10 split, decoding every image once (`tools.data.decode`), the course's Dataset and transforms.

    data = load_splits(Path("data/RMB_data"))   # {"classes", "train", "valid", "test", "mean", "std"}
"""
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tools.cli.errors import UserError
from tools.data.checks import missing_classes
from tools.data.decode import IMAGE_SIZE, decode_all

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Image files we recognise but cannot read: skipped with a warning. Anything else (.DS_Store, Thumbs.db,
# a README) is not an image and is ignored without noise.
UNSUPPORTED_IMAGE_EXTENSIONS = (".tif", ".tiff", ".heic", ".heif", ".avif", ".svg", ".ico", ".psd", ".jp2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
VALID_NAMES = ("valid", "val", "validation")  # what a split folder's validation part may be called
SPLIT_SEED = 0  # fixed, so that every run on one folder is validated and tested on the same images


def listing(folder: Path) -> list[Path]:
    """The entries of a folder, hidden ones (.DS_Store, .git, ._photo.jpg) left out; UserError when
    the folder cannot be read."""
    try:
        return [p for p in Path(folder).iterdir() if not p.name.startswith(".")]
    except PermissionError:
        raise UserError(f"cannot read folder {folder} (permission denied): give yourself read access "
                        f"(chmod -R u+rX {folder})") from None


def find_classes(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of `folder`: class index = position in this list."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist: pass a folder laid out as <folder>/<class>/<image>")
    classes = sorted(d.name for d in listing(folder) if d.is_dir())
    if not classes:
        raise UserError(f"{folder} has no class sub-folders: put images in {folder}/<class>/<image>")
    if len(classes) < 2:
        raise UserError(f"{folder} has one class folder ({classes[0]}); a classifier needs at least two")
    return classes


def list_samples(folder: Path, classes: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image under folder/<class>/, sorted; and files skipped as unsupported.

    Raises UserError when a class folder holds no image.
    """
    samples, unsupported = [], []
    for index, name in enumerate(classes):
        class_dir = Path(folder) / name
        files = sorted(files_under(class_dir)) if class_dir.is_dir() else []
        images = [str(p) for p in files if p.suffix.lower() in IMG_EXTENSIONS]
        unsupported += [str(p) for p in files if p.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS]
        if not images:
            raise UserError(f"class folder {class_dir} has no images ({', '.join(IMG_EXTENSIONS)}): "
                            "add some or remove the folder")
        samples += [(path, index) for path in images]
    return samples, unsupported


def files_under(folder: Path) -> list[Path]:
    """Every file below `folder`, in sub-folders too; hidden files and hidden folders are skipped."""
    files = []
    for entry in listing(folder):
        if entry.is_dir():
            files += files_under(entry)
        elif entry.is_file():
            files.append(entry)
    return files


def split_samples(samples: list[tuple[str, int]], seed: int = SPLIT_SEED) -> dict[str, list[tuple[str, int]]]:
    """Split per class into train/valid/test (80/10/10), deterministic for a seed, no sample in two splits.

    Every class with at least 2 images gets one valid image, with at least 3 one test image.
    """
    rng = random.Random(seed)
    splits = {name: [] for name in SPLIT_FRACTIONS}
    for label in sorted({label for _, label in samples}):
        members = sorted(s for s in samples if s[1] == label)
        rng.shuffle(members)
        n = len(members)
        n_valid = max(round(n * SPLIT_FRACTIONS["valid"]), 1 if n >= 2 else 0)
        n_test = max(round(n * SPLIT_FRACTIONS["test"]), 1 if n >= 3 else 0)
        splits["valid"] += members[:n_valid]
        splits["test"] += members[n_valid:n_valid + n_test]
        splits["train"] += members[n_valid + n_test:]
    return splits


def find_splits(data_dir: Path, seed: int = SPLIT_SEED) -> tuple[list[str], dict, list[str]]:
    """Classes, {'train', 'valid', 'test'} -> [(path, label)], and unsupported files, for a data folder.

    A folder with train/ and valid/ (or val/, validation/), optionally test/, is used as it is; a folder
    with only some of them is refused (UserError); any other folder of <class>/<image> is split 80/10/10
    with `split_samples`. 'test' is an empty list when there is none.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "does not exist"
        raise UserError(f"data folder {data_dir} {what}: pass a folder laid out as <folder>/<class>/<image>")
    split_dirs = [n for n in ("train", *VALID_NAMES, "test") if (data_dir / n).is_dir()]
    valid_dir = next((data_dir / n for n in VALID_NAMES if (data_dir / n).is_dir()), None)
    if split_dirs and ("train" not in split_dirs or valid_dir is None):
        missing = "train/" if "train" not in split_dirs else "valid/ (or val/, validation/)"
        raise UserError(f"{data_dir} has {', '.join(d + '/' for d in split_dirs)} but no {missing}: a split "
                        "folder needs train/ and valid/ (test/ is optional); or lay it out as <folder>/<class>/<image>")
    if split_dirs:
        classes = find_classes(data_dir / "train")
        splits, unsupported = {}, []
        for name, folder in (("train", data_dir / "train"), ("valid", valid_dir), ("test", data_dir / "test")):
            present = [c for c in classes if (folder / c).is_dir()]
            extra = set(find_classes(folder) if folder.is_dir() else []) - set(classes)
            if extra:
                raise UserError(f"{folder} has classes {sorted(extra)} that {data_dir / 'train'} lacks")
            if not folder.is_dir():
                splits[name] = []
                continue
            found, skipped = list_samples(folder, present)
            splits[name] = [(path, classes.index(present[label])) for path, label in found]
            unsupported += skipped
    else:
        classes = find_classes(data_dir)
        samples, unsupported = list_samples(data_dir, classes)
        splits = split_samples(samples, seed)
    if not splits["valid"]:
        raise UserError(f"{data_dir}: the split leaves the valid set empty; add images (at least 2 per class)")
    return classes, splits, unsupported


class RMBDataset(Dataset):
    """Images from <data_dir>/<class>/<image>, decoded and resized to 32x32 once, kept in memory.

    Class index = position of the folder name in sorted order (RMB: '1' -> 0, '100' -> 1).
    `transform` gets a uint8 tensor (3, 32, 32) and should return the model's input; item = (x, label).
    """

    def __init__(self, data_dir=None, transform=None, *, samples=None, classes=None,
                 size: int = IMAGE_SIZE, cache_dir=None, strict: bool = False, decoded: dict | None = None):
        if samples is None:
            classes = find_classes(data_dir)
            samples, unsupported = list_samples(data_dir, classes)
        else:
            unsupported = []
        if decoded is None:
            images, unreadable = decode_all([p for p, _ in samples], size, cache_dir, strict)
        else:  # decoded already (path -> tensor, None when unreadable), e.g. every split at once
            images = [decoded.get(p) for p, _ in samples]
            unreadable = [p for (p, _), img in zip(samples, images) if img is None]
        kept = [(s, img) for s, img in zip(samples, images) if img is not None]
        self.classes = list(classes)
        self.samples = [s for s, _ in kept]
        self.images = torch.stack([img for _, img in kept]) if kept else torch.empty(0, 3, size, size,
                                                                                    dtype=torch.uint8)
        self.targets = [label for _, label in self.samples]
        self.skipped = unsupported + unreadable
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.targets[index]


class Normalized:
    """ToTensor then Normalize(mean, std) of one uint8 image (3, H, W), without torchvision (whose
    import costs about a second): (x / 255 - mean) / std."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() / 255 - self.mean) / self.std


def build_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The course's train and eval transforms with torchvision, for uint8 tensors already resized to
    32x32: what tools.training.batches does a batch at once, and what the comparisons and tests check it against.

    train: RandomCrop(32, padding=4), RandomGrayscale(p=0.8), ToTensor, Normalize; eval: ToTensor, Normalize.
    (ToDtype(float32, scale=True) is ToTensor for a uint8 tensor.)
    """
    from torchvision.transforms import v2  # imported when needed: it costs about a second

    to_input = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    train = v2.Compose([v2.RandomCrop(IMAGE_SIZE, padding=4), v2.RandomGrayscale(p=0.8), *to_input])
    return train, v2.Compose(to_input)


def class_weights(spec: str | list[float] | None, targets: list[int], classes: list[str]) -> torch.Tensor | None:
    """CrossEntropyLoss's `weight` for --class-weights: None; 'balanced', the inverse class frequency
    of `targets` (the train split), n / (classes x count of the class), so that every class weighs as
    much in the loss as if all were as frequent; or explicit numbers, one per class."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = torch.bincount(torch.tensor(targets), minlength=len(classes)).double()
        return (len(targets) / (len(classes) * counts.clamp_min(1))).float()
    if len(spec) != len(classes):
        raise UserError(f"--class-weights gives {len(spec)} number(s) for {len(classes)} classes "
                        f"({', '.join(classes)}): give one per class, in that order, or 'balanced'")
    return torch.tensor(spec, dtype=torch.float32)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, 3, H, W), in [0, 1] units, for Normalize."""
    x = images.double().div_(255).transpose(0, 1).reshape(3, -1)
    return x.mean(1).tolist(), x.std(1).tolist()


def default_data_dir(data_root: Path) -> tuple[Path, str | None]:
    """The data folder to use when --data-dir is not given, and a message for the user (or None).

    data_root/RMB_data when it exists (the real photos); otherwise the synthetic set in
    data_root/RMB_synthetic, generated on first use (deterministic, about a second).
    """
    real = Path(data_root) / "RMB_data"
    if real.is_dir():
        return real, None
    from tools.data import synthetic as synthetic_rmb

    folder = Path(data_root) / "RMB_synthetic"
    if synthetic_rmb.is_generated(folder):
        note = f"no --data-dir and no {real}: using the synthetic RMB set in {folder}"
    else:
        try:
            synthetic_rmb.generate(folder)
        except (OSError, UserError) as err:  # a read-only checkout; data/ a file; a folder of the user's there
            why = err.strerror or err if isinstance(err, OSError) else err
            raise UserError(f"no --data-dir and no {real}, and the synthetic set cannot be generated into {folder} "
                            f"({why}): pass --data-dir with your photos") from None
        note = f"no --data-dir and no {real}: generated a synthetic RMB set into {folder}"
    return folder, note + f"; for real photos put them in {real}/1 and {real}/100, or pass --data-dir"


def load_splits(data_dir: Path, norm: str = "imagenet", cache_dir: Path | None = None,
                strict: bool = False, workers: int = 0) -> dict:
    """Everything a run needs from a data folder, each image decoded once (on `workers` processes,
    0: one per core, when not in the cache). Each data set's items are (normalised image, label).

    Returns {'classes', 'train', 'valid', 'test' (RMBDataset, test None when there is none),
    'mean', 'std' (of Normalize: ImageNet's, or with norm='data' the train split's own), 'skipped',
    'warnings' (a class missing from the valid or test split)}.
    """
    classes, splits, unsupported = find_splits(data_dir)
    paths = [path for samples in splits.values() for path, _ in samples]
    images, unreadable = decode_all(paths, IMAGE_SIZE, cache_dir, strict, workers)
    decoded = dict(zip(paths, images))
    sets = {name: RMBDataset(samples=samples, classes=classes, decoded=decoded)
            for name, samples in splits.items() if samples}
    skipped = unsupported + unreadable
    if strict and unsupported:
        raise UserError(f"unsupported image format: {unsupported[0]}; convert or remove it, "
                        "or drop --strict to skip such files")
    if len(sets["train"]) == 0 or len(sets["valid"]) == 0:
        raise UserError(f"{data_dir}: no readable images left in the train or valid split")
    mean, std = (channel_stats(sets["train"].images) if norm == "data" else (list(IMAGENET_MEAN), list(IMAGENET_STD)))
    flat = [name for name, s in zip(("red", "green", "blue"), std) if not s > 0]
    if flat:  # Normalize would divide by 0: every input NaN, which the verdict would blame on the learning rate
        raise UserError(f"--norm data: the {' and '.join(flat)} channel of every train image in {data_dir} is the "
                        "same value (std 0), so it cannot be normalised by its std; use --norm imagenet")
    missing = [f"{c} has no {split} image" for c, split in missing_classes(
        {name: sets[name].targets for name in ("train", "valid", "test") if name in sets}, classes)]
    for dataset in sets.values():  # an item as the model takes it; training augments whole batches instead
        dataset.transform = Normalized(mean, std)
    return {"classes": classes, "train": sets["train"], "valid": sets["valid"], "test": sets.get("test"),
            "mean": mean, "std": std, "skipped": skipped,
            "warnings": [f"class {m}: its accuracy there is not measured (add images; a class needs at "
                         "least 3 for one valid and one test image)" for m in missing]}


def split_tensors(data: dict) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """`load_splits`' splits as (decoded uint8 images (N, 3, 32, 32), targets), for the data checks."""
    return {name: (data[name].images, data[name].targets) for name in ("train", "valid", "test") if data.get(name)}
