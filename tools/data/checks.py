"""Checks of the data splits before training (facts; the monitor turns them into findings): the same image in train and in valid or test (a leak, found
by a content hash of the decoded images), and a class present in train but absent from another split.

    findings = split_findings({"train": (images, targets), "valid": (images, targets)}, classes)

Images: one tensor (N, ...) per split, as decoded (uint8 32x32 in this project): two files that decode
to the same pixels are the same image, whatever their names.
"""
import hashlib

import torch


def as_labels(targets) -> list[int]:
    """Class indices as plain ints, from a list of ints, of 0-d tensors or numpy ints, or a tensor or array
    (a 0-d tensor hashes by identity: two tensor(1)s are two keys of a set)."""
    if isinstance(targets, torch.Tensor):
        return [int(t) for t in targets.reshape(-1).tolist()]
    return [int(t) for t in targets]


def content_hashes(images) -> list[bytes]:
    """One 16-byte BLAKE2b digest of each image's bytes: images (N, ...) -> N digests."""
    flat = torch.as_tensor(images).detach().cpu().contiguous().reshape(len(images), -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def leaks(images: dict[str, torch.Tensor], train: str = "train") -> dict[str, list[int]]:
    """split -> the indices of its images that are also in the train split (by content)."""
    if train not in images:
        return {}
    seen = set(content_hashes(images[train]))
    return {name: [i for i, h in enumerate(content_hashes(split)) if h in seen]
            for name, split in images.items() if name != train and len(split)}


def missing_classes(targets: dict[str, list[int]], classes: list[str], train: str = "train") -> list[tuple[str, str]]:
    """(class, split) for every class of the train split that another split lacks."""
    present = set(targets.get(train, []))
    return [(classes[c] if 0 <= c < len(classes) else str(c), name) for name, labels in targets.items()
            if name != train and labels is not None for c in sorted(present - set(labels))]
