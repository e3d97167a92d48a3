"""Batched augmentation has the distribution of torchvision's per-image transforms, pixel for pixel where
the random choices are fixed; the first decode gives the same images on any number of processes."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from tools.data import decode as decoding
from tools.training.batches import (
    CROP_PADDING,
    GRAYSCALE_P,
    DeviceBatches,
    grayscale,
    grayscale_coins,
    normalize,
    random_crop,
)
from tools.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def images(n=64, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def crop_offset(original: torch.Tensor, cropped: torch.Tensor) -> tuple[int, int]:
    """(top, left) of `cropped` in `original` zero-padded by CROP_PADDING: found by trying every offset."""
    padded = F.pad(original, [CROP_PADDING] * 4)
    hits = [(top, left) for top in range(2 * CROP_PADDING + 1) for left in range(2 * CROP_PADDING + 1)
            if torch.equal(padded[:, top:top + 32, left:left + 32], cropped)]
    assert len(hits) == 1
    return hits[0]


def test_random_crop_is_torchvisions_crop_at_every_offset_uniformly():
    batch = images(2000)
    cropped = random_crop(batch, CROP_PADDING, torch.Generator().manual_seed(1))
    offsets = [crop_offset(original, crop) for original, crop in zip(batch[:400], cropped[:400])]
    for (top, left), original, crop in zip(offsets[:50], batch, cropped):  # pixel-exact: torchvision's ops
        expected = F.crop(F.pad(original, [CROP_PADDING] * 4), top, left, 32, 32)
        assert torch.equal(crop, expected)
    # each of top and left uniform over 0..8: a chi-square test over the 81 offsets, 400 draws
    counts = np.zeros((9, 9))
    for top, left in offsets:
        counts[top, left] += 1
    chi2 = ((counts - 400 / 81) ** 2 / (400 / 81)).sum()
    assert chi2 < 130  # 80 degrees of freedom: the 99.9% quantile is about 125; a skewed draw is far above


def test_grayscale_is_torchvisions_and_the_coin_falls_four_times_in_five():
    batch = images(10, seed=2)
    assert torch.equal(grayscale(batch), F.rgb_to_grayscale(batch, num_output_channels=3))  # pixel-exact
    coins = grayscale_coins(20000, GRAYSCALE_P, torch.Generator().manual_seed(3)).float()
    assert abs(coins.mean().item() - GRAYSCALE_P) < 4 * math.sqrt(GRAYSCALE_P * (1 - GRAYSCALE_P) / 20000)


def torchvisions(original: torch.Tensor, top: int, left: int, gray: bool) -> torch.Tensor:
    """The course's train transforms by torchvision's functional ops, for fixed choices: RandomCrop(32,
    padding=4) at (top, left), then RandomGrayscale's grayscale or not, ToTensor, Normalize."""
    image = F.crop(F.pad(original, [CROP_PADDING] * 4), top, left, 32, 32)
    image = F.rgb_to_grayscale(image, num_output_channels=3) if gray else image
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_every_training_image_is_torchvisions_transform_with_the_generators_choices_in_their_order():
    """Batch by batch, the generator gives the crop offsets (top, then left), then the grayscale coins:
    the order a per-batch crop then grayscale drew them in before the grayscale twins, so that runs and
    checkpoints of before go on alike. Each image is torchvision's transform with those choices."""
    class Split:
        images = images(50, seed=5)
        targets = list(range(50))

    batches = DeviceBatches(Split, 16, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), seed=6, augment=True)
    draws = torch.Generator().manual_seed(6)
    seen, grays = [], 0
    for x, y in batches:
        top, left = torch.randint(0, 2 * CROP_PADDING + 1, (2, len(y)), generator=draws)
        gray = torch.rand(len(y), generator=draws) < GRAYSCALE_P
        for image, label, t, l, g in zip(x, y.tolist(), top.tolist(), left.tolist(), gray.tolist()):
            assert torch.allclose(image, torchvisions(Split.images[label], t, l, g), atol=1e-6), (label, t, l, g)
            seen.append(label)
            grays += g
    assert sorted(seen) == list(range(50)) and 0 < grays < 50  # every image once; both kinds seen


def test_a_training_epoch_makes_about_four_in_five_images_grayscale():
    class Split:
        images = images(2000, seed=7)
        targets = list(range(2000))

    batches = DeviceBatches(Split, 500, (0, 0, 0), (1, 1, 1), torch.device("cpu"), seed=8, augment=True)
    x = torch.cat([x for x, _ in batches])  # mean 0, std 1: the pixels / 255
    gray = (x[:, 0] == x[:, 1]).flatten(1).all(1) & (x[:, 1] == x[:, 2]).flatten(1).all(1)
    assert abs(gray.float().mean().item() - GRAYSCALE_P) < 4 * math.sqrt(GRAYSCALE_P * (1 - GRAYSCALE_P) / 2000)


def test_normalize_is_totensor_then_normalize():
    batch = images(8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = torch.stack([build_transforms()[1](image) for image in batch])  # torchvision's, one by one
    assert torch.allclose(normalize(batch, mean, std), expected, atol=1e-6)


def test_training_batches_cover_the_split_once_per_epoch_and_resume_from_the_generator():
    class Split:
        images = images(50)
        targets = list(range(50))

    batches = DeviceBatches(Split, 16, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), seed=4, augment=True)
    assert len(batches) == 4 == len(list(batches))
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(50))
    state = batches.generator.get_state()
    first = [x for x, _ in batches]
    batches.generator.set_state(state)  # what a resumed run does with the checkpoint's state
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in batches]))
    batches.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in batches]), labels)  # another epoch, another order


def test_a_split_too_big_for_the_device_stays_on_the_host_and_gives_the_same_batches(monkeypatch):
    from tools.training import batches as B

    class Split:
        images = images(40)
        targets = list(range(40))

    def every_batch():
        loader = DeviceBatches(Split, 16, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), seed=2, augment=True)
        loader.set_epoch(3)
        return loader, [(x, y) for x, y in loader]

    on_device, expected = every_batch()
    monkeypatch.setattr(B, "fits_on", lambda device, nbytes: False)
    on_host, got = every_batch()
    assert on_device.on_device and not on_host.on_device and "the host" in on_host.held()
    assert on_device.held() == "0.4 MB of uint8 images (with their grayscale twins) on cpu"  # 2 x 40 x 3 x 40 x 40 bytes
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(expected, got))


def write_photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a photo")  # the last two: one in each of two decoders' shares
    (folder / "broken2.jpg").write_bytes(b"")
    return sorted(str(p) for p in folder.iterdir())


@pytest.mark.parametrize("strict,workers", [(False, 2), (False, 3), (True, 2)])
def test_the_first_decode_gives_the_same_images_on_one_process_or_several(tmp_path, strict, workers):
    paths = write_photos(tmp_path / "photos", 40)
    if strict:
        with pytest.raises(decoding.UserError, match="broken"):
            decoding.decode_all(paths, workers=workers, strict=True)
        return
    one, bad_one = decoding.decode_all(paths, workers=1)
    two, bad_two = decoding.decode_all(paths, workers=workers, cache_dir=tmp_path / "cache")
    assert bad_one == bad_two == [str(tmp_path / "photos" / name) for name in ("broken.jpg", "broken2.jpg")]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(one, two))
    assert torch.equal(one[0], decoding.decode_resized(paths[0]))  # the one-image path gives the same
    assert torch.equal(one[39], decoding.decode_resized(paths[39]))
    cached, _ = decoding.decode_all(paths, workers=workers, cache_dir=tmp_path / "cache")  # from the cache now
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(one, cached))


def test_a_decoding_process_that_dies_is_one_line_not_a_hang(tmp_path, monkeypatch):
    paths = write_photos(tmp_path / "photos", 20)
    monkeypatch.setattr(decoding, "_decoding_process", lambda *args: os._exit(9))  # as if killed mid-way
    with pytest.raises(decoding.UserError, match=r"ended without its photos \(exit code 9.*--workers 1"):
        decoding.decode_many(paths, workers=2)


def test_ctrl_c_while_the_photos_decode_leaves_no_decoding_process(tmp_path, monkeypatch):
    import multiprocessing
    import time

    paths, parent, decode = write_photos(tmp_path / "photos", 40), os.getpid(), decoding.decode_into

    def interrupted_here(images, index, path, size):
        if os.getpid() == parent and index >= 4:
            raise KeyboardInterrupt  # Ctrl-C reaches this process while the other still decodes
        time.sleep(0.05)
        return decode(images, index, path, size)

    monkeypatch.setattr(decoding, "decode_into", interrupted_here)
    with pytest.raises(KeyboardInterrupt):
        decoding.decode_many(paths, workers=2)
    assert multiprocessing.active_children() == []
