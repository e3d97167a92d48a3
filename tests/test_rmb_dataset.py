import hashlib
import os

import numpy as np
import pytest
import torch
from conftest import REAL_DATA, requires_real_data
from PIL import Image

from tools.data import decode as decoding
from tools.cli.errors import UserError
from tools.data.decode import decode_all, decode_resized
from tools.data.image_folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RMBDataset,
    build_transforms,
    channel_stats,
    find_splits,
    split_samples,
)
from tools.rmb_dataset import write_split
from tools.data.synthetic import generate


def make_folder(root, counts: dict, size=(40, 20)):
    """root/<class>/<i>.png, each image a flat colour that encodes its class and index."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (c * 40, i, 100)).save(root / name / f"{i:03d}.png")
    return root


def test_class_index_is_sorted_folder_position(tmp_path):
    make_folder(tmp_path, {"100": 3, "1": 3, "5": 3})
    ds = RMBDataset(tmp_path)
    assert ds.classes == ["1", "100", "5"]
    for (path, label) in ds.samples:
        assert ds.classes[label] == path.split("/")[-2]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.new("RGB", (32, 32), (200, 120, 40))
    if mode == "I;16":
        img = Image.fromarray(np.full((32, 32), 200 * 257, dtype=np.uint16))
        expected = (200, 200, 200)
    elif mode == "P":  # an exact palette entry, with a transparent index as GIF/PNG files often have
        img = rgb.quantize(colors=2)
        img.info["transparency"] = 1
        expected = (200, 120, 40)
    else:
        img = rgb.convert(mode)
        expected = img.convert("RGB").getpixel((0, 0))
    path = tmp_path / ("img.png" if mode != "CMYK" else "img.jpg")
    img.save(path)
    tensor = decode_resized(str(path))
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.uint8
    assert tuple(tensor[:, 5, 5].tolist()) == pytest.approx(expected, abs=2)


def test_decode_resized_matches_pil_resize_of_full_image(tmp_path):
    """A PNG has no reduced-scale decoding: the result is exactly PIL's bilinear Resize((32, 32))."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    expected = np.asarray(img.resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(decode_resized(str(tmp_path / "x.png")).numpy(), expected)


def test_split_is_deterministic_disjoint_and_80_10_10():
    samples = [(f"{c}/{i}.jpg", c) for c in range(2) for i in range(100)]
    a, b = split_samples(samples, seed=0), split_samples(list(reversed(samples)), seed=0)
    assert a == b
    assert {len(v) for v in a.values()} == {160, 20}
    assert [len(a[k]) for k in ("train", "valid", "test")] == [160, 20, 20]
    sets = [set(v) for v in a.values()]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 200
    for split in a.values():  # stratified: both classes in every split, in proportion
        assert sum(label for _, label in split) * 2 == len(split)
    assert split_samples(samples, seed=1) != a


def test_presplit_folder_with_val_is_used_as_is(tmp_path):
    make_folder(tmp_path / "train", {"1": 4, "100": 4})
    make_folder(tmp_path / "val", {"1": 2, "100": 2})
    classes, splits, _ = find_splits(tmp_path)
    assert classes == ["1", "100"]
    assert len(splits["train"]) == 8 and len(splits["valid"]) == 4 and splits["test"] == []
    assert all("/val/" in p for p, _ in splits["valid"])


def test_write_split_round_trip(tmp_path):
    make_folder(tmp_path / "raw", {"1": 10, "100": 10})
    counts = write_split(tmp_path / "raw", tmp_path / "split")
    assert counts == {"train": 16, "valid": 2, "test": 2}
    classes, splits, _ = find_splits(tmp_path / "split")
    assert {k: len(v) for k, v in splits.items()} == counts
    names = {k: sorted(p.split("/")[-1] for p, _ in v) for k, v in splits.items()}
    original = find_splits(tmp_path / "raw")[1]
    assert names == {k: sorted(p.split("/")[-1] for p, _ in v) for k, v in original.items()}


def test_the_txt_index_lists_every_image_and_a_dataloader_reads_it(tmp_path, capsys):
    """--index writes the course's train.txt / valid.txt / test.txt; TxtIndexDataset reads each into the
    same images and labels as the split's folders; the command runs again over its own output."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from tools import rmb_dataset
    from tools.data.course_pipeline import TxtIndexDataset

    make_folder(tmp_path / "raw", {"1": 10, "100": 10})
    argv = [str(tmp_path / "raw"), "--out", str(tmp_path / "split"), "--index"]
    for _ in range(2):  # a second run replaces its own output
        rmb_dataset.main(rmb_dataset.get_args_parser().parse_args(argv))
    assert "train.txt" in capsys.readouterr().out
    classes, splits, _ = find_splits(tmp_path / "split")
    for name, samples in splits.items():
        data = TxtIndexDataset(tmp_path / "split" / f"{name}.txt", transforms.Compose(
            [transforms.Resize((32, 32)), transforms.ToTensor()]))
        listed = sorted((os.path.realpath(p), label) for p, label in data.data_info)
        assert listed == sorted((os.path.realpath(p), label) for p, label in samples)
        images, labels = next(iter(DataLoader(data, batch_size=len(data))))
        assert images.shape == (len(samples), 3, 32, 32) and sorted(labels.tolist()) == sorted(l for _, l in samples)
    (tmp_path / "bad.txt").write_text("train/1/000.jpg 0\ntrain/1/001.jpg one\n")
    with pytest.raises(UserError, match="bad.txt line 2"):
        TxtIndexDataset(tmp_path / "bad.txt")


def test_disk_cache_decodes_once_and_notices_changes(tmp_path, monkeypatch):
    make_folder(tmp_path / "d", {"1": 3, "100": 3})
    paths = sorted(str(p) for p in (tmp_path / "d").rglob("*.png"))
    first, _ = decode_all(paths, cache_dir=tmp_path / "cache")

    def no_decoding(*_):
        raise AssertionError("decoded although cached")
    monkeypatch.setattr(decoding, "decode_array", no_decoding)
    second, _ = decode_all(paths, cache_dir=tmp_path / "cache")
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    monkeypatch.undo()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(paths[0])  # new content, new size/mtime: decoded again
    third, _ = decode_all(paths, cache_dir=tmp_path / "cache")
    assert third[0][:, 0, 0].tolist() == [255, 0, 0]


def test_transforms_match_an_independent_computation():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    train_tf, eval_tf = build_transforms()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(eval_tf(image), (image.float() / 255 - mean) / std, atol=1e-6)

    # train: each output is a 32x32 window of the zero-padded image (colour, or grey with p=0.8)
    padded = torch.nn.functional.pad(image.float(), (4, 4, 4, 4))
    grey = (0.2989 * padded[0] + 0.587 * padded[1] + 0.114 * padded[2]).expand(3, -1, -1)
    torch.manual_seed(0)
    greys = 0
    for _ in range(200):
        raw = (train_tf(image) * std + mean) * 255
        is_grey = torch.allclose(raw[0], raw[1], atol=0.01) and torch.allclose(raw[1], raw[2], atol=0.01)
        source = grey if is_grey else padded
        assert any(torch.allclose(raw, source[:, i:i + 32, j:j + 32], atol=1.01)
                   for i in range(9) for j in range(9))
        greys += is_grey
    assert 0.7 < greys / 200 < 0.9


def test_channel_stats_equal_numpy():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)))
    assert np.allclose(std, x.std(axis=(0, 2, 3), ddof=1))


def test_missing_folder_and_too_few_classes(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_splits(tmp_path / "nope")
    make_folder(tmp_path / "one", {"1": 3})
    with pytest.raises(UserError, match="at least two"):
        find_splits(tmp_path / "one")


def test_synthetic_set_is_deterministic(tmp_path):
    a, b = generate(tmp_path / "a", per_class=3), generate(tmp_path / "b", per_class=3)

    def digest(root):
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))]
    assert len(digest(a)) == 6 and digest(a) == digest(b)


@requires_real_data
def test_real_photos_split_and_decode(tmp_path):
    classes, splits, unsupported = find_splits(REAL_DATA)
    assert classes == ["1", "100"] and unsupported == []
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [160, 20, 20]
    ds = RMBDataset(samples=splits["valid"], classes=classes, cache_dir=tmp_path)
    assert ds.images.shape == (20, 3, 32, 32)


def test_the_cache_checks_content_and_forgets_what_is_gone(tmp_path):
    """A photo replaced by another of the same size with its time restored (cp -p) is decoded again; the
    cache keeps one entry per file however often files change; a cache of another image size is rebuilt
    with a warning, not a traceback."""
    import os
    import warnings
    from pathlib import Path

    from tools.data.image_cache import cache_path
    from tools.data.decode import decode_all, decode_resized

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):  # BMPs of one size: every file the same number of bytes
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{k}.bmp")
    paths = sorted(str(p) for p in folder.iterdir())
    cache = tmp_path / "cache"
    first, _ = decode_all(paths, cache_dir=cache)
    target, stat = Path(paths[0]), Path(paths[0]).stat()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p and rsync -t do
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again, _ = decode_all(paths, cache_dir=cache)
    assert torch.equal(again[0], decode_resized(paths[0])) and not torch.equal(again[0], first[0])
    # a byte changed in the middle of a photo, in place, its size and time kept: first and last kilobyte alike
    middle, stat = Path(paths[1]), Path(paths[1]).stat()
    raw = bytearray(middle.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    with open(middle, "r+b") as f:
        f.write(raw)
    os.utime(middle, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert middle.stat().st_size == stat.st_size and middle.stat().st_mtime_ns == stat.st_mtime_ns
    again, _ = decode_all(paths, cache_dir=cache)
    assert torch.equal(again[1], decode_resized(paths[1])) and not torch.equal(again[1], first[1])
    for _ in range(3):  # touch every file: new keys each time, old ones dropped
        for p in paths:
            os.utime(p)
        decode_all(paths, cache_dir=cache)
    file = cache_path(cache, paths, 32)
    assert len(torch.load(file, weights_only=True)["keys"]) == len(paths)
    saved = torch.load(file, weights_only=True)
    torch.save({"keys": saved["keys"], "images": torch.zeros(len(paths), 3, 16, 16, dtype=torch.uint8)}, file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt, _ = decode_all(paths, cache_dir=cache)
    assert "rebuilt" in str(caught[0].message) and all(img.shape == (3, 32, 32) for img in rebuilt)


def test_norm_data_refuses_a_channel_with_no_spread(tmp_path):
    """--norm data with a channel of one value everywhere (std 0): one line naming the channel and the
    way out, not a run of NaN inputs blamed on the learning rate."""
    from tools.data.image_folder import load_splits

    for c, name in enumerate(["1", "100"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (20, 20), (c * 100 + i, 50 + i, 7)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(UserError, match=r"the blue channel .*\(std 0\).*--norm imagenet"):
        load_splits(tmp_path, norm="data", cache_dir=None)
    assert load_splits(tmp_path, norm="imagenet", cache_dir=None)["train"].images.shape[0] == 16
