from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import line, read_events, train
from PIL import Image
from torch import nn
from torch.optim import lr_scheduler

from model import LeNet
from tools.training.engine import evaluate
from tools.pictures.gradcam import gradcam, last_conv
from tools.training.schedules import build_scheduler
from tools.lr_schedules import lr_curves
from tools.tb.writer import LR, PICTURES, VERDICT
from tools.pictures.confusion import precision_recall, render_confusion_matrix
from tools.pictures.visualize import (
    feature_map_sheets,
    feature_maps,
    kernel_sheets,
    labelled_sheet,
    tiles_of,
)


def no_hooks(model):
    return all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_confusion_matrix_equals_a_brute_force_count():
    torch.manual_seed(0)
    model = LeNet(classes=3)
    images, labels = torch.randn(37, 3, 32, 32), torch.randint(0, 3, (37,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    stats = evaluate(model, loader, nn.CrossEntropyLoss(), torch.device("cpu"), 3)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    brute = np.zeros((3, 3), dtype=int)
    for t, p in zip(labels.tolist(), predicted.tolist()):
        brute[t, p] += 1
    assert stats["confusion"].sum() == 37 and np.array_equal(stats["confusion"].numpy(), brute)
    assert stats["acc"] == pytest.approx(np.trace(brute) / 37)
    pr = precision_recall(stats["confusion"], ["a", "b", "c"])
    for k, name in enumerate("abc"):
        if brute[:, k].sum():
            assert pr[name]["precision"] == pytest.approx(brute[k, k] / brute[:, k].sum())
        assert pr[name]["recall"] == pytest.approx(brute[k, k] / brute[k].sum())
    img = render_confusion_matrix(stats["confusion"], ["a", "b", "c"], "title")
    assert img.mode == "RGB" and img.width > 200


class LooksAtTheTopLeft(nn.Module):
    """A conv net whose decision depends only on the top-left 8x8 corner of the image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 0.1)
        nn.init.zeros_(self.conv.bias)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        mask = torch.zeros_like(x)
        mask[..., :8, :8] = 1  # the rest of the image never reaches the decision
        return self.head(torch.relu(self.conv(x * mask)).mean(dim=(2, 3)))


def test_gradcam_is_in_0_1_at_the_input_size_and_finds_the_region():
    torch.manual_seed(0)
    model = LooksAtTheTopLeft()
    image = torch.rand(3, 32, 32)
    cam, target, probs = gradcam(model, model.conv, image, target=int(model.head.weight.sum(1).argmax()))
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    peak = divmod(int(cam.argmax()), 32)
    assert peak[0] < 8 and peak[1] < 8
    assert cam[12:, :].max() < 0.05 and cam[:, 12:].max() < 0.05  # nothing away from the region
    assert probs.sum().item() == pytest.approx(1.0) and no_hooks(model)
    lenet = LeNet()
    default_cam, predicted, _ = gradcam(lenet, last_conv(lenet), image)
    assert default_cam.shape == (32, 32) and predicted in (0, 1)


def test_feature_maps_are_what_forward_computes_and_hooks_are_removed():
    torch.manual_seed(0)
    model = LeNet()
    image = torch.randn(3, 32, 32)
    maps = feature_maps(model, image)
    assert list(maps) == ["conv1", "conv2"]
    assert torch.allclose(maps["conv1"], model.conv1(image[None])[0])
    second_input = model.pool1(model.relu1(model.conv1(image[None])))
    assert torch.allclose(maps["conv2"], model.conv2(second_input)[0], atol=1e-6)
    tiles = tiles_of(maps["conv1"])  # each map scaled to [0, 255] on its own, as gray RGB
    assert len(tiles) == 6 and tiles[0].shape == (28, 28, 3) and tiles[0].min() == 0 and tiles[0].max() == 255
    expected = (maps["conv1"][0] - maps["conv1"][0].min()) / (maps["conv1"][0].max() - maps["conv1"][0].min()) * 255
    assert np.abs(tiles[0][..., 0].astype(float) - expected.numpy()).max() <= 0.5
    assert no_hooks(model)


def test_labelled_sheets_enlarge_tiles_with_nearest_neighbour_and_keep_every_pixel(tmp_path):
    tile = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    sheet = labelled_sheet("title", [("row", [tile, tile], ["a", "b"])], tile=40)
    enlarged = np.kron(tile, np.ones((8, 8, 1), dtype=np.uint8))  # 40 // 5: every pixel an 8x8 block
    found = [(y, x) for y in range(sheet.shape[0] - 39) for x in range(sheet.shape[1] - 39)
             if sheet[y, x, 0] == tile[0, 0, 0] and np.array_equal(sheet[y:y + 40, x:x + 40], enlarged)]
    assert len(found) == 2  # both tiles, whole
    maps = feature_map_sheets({"maps": feature_maps(LeNet(), torch.randn(3, 32, 32), (nn.Conv2d, nn.ReLU)),
                               "input": np.zeros((32, 32, 3), np.uint8)})
    assert list(maps) == ["conv1", "relu1", "conv2", "relu2"]  # a sheet per layer, the input on each
    assert maps["conv2"].shape[1] >= 90 + 8 * 56  # 16 maps of 10x10, 8 to a line, each at least 50 px


def test_feature_maps_after_relu_too_as_in_the_course():
    torch.manual_seed(0)
    model = LeNet()
    image = torch.randn(3, 32, 32)
    maps = feature_maps(model, image, (nn.Conv2d, nn.ReLU))
    assert list(maps) == ["conv1", "relu1", "conv2", "relu2"]  # relu3, relu4 follow linear layers: no maps
    assert torch.equal(maps["relu1"], torch.relu(maps["conv1"])) and torch.equal(maps["relu2"], torch.relu(maps["conv2"]))
    assert no_hooks(model)


def test_kernel_sheets_show_every_kernel_labelled():
    model = LeNet()
    sheets = kernel_sheets(model)
    assert list(sheets) == ["conv1", "conv2"]
    conv1 = tiles_of(model.conv1.weight)
    assert len(conv1) == 6 and conv1[0].shape == (5, 5, 3)  # RGB kernels in colour
    assert len(tiles_of(model.conv2.weight[0])) == 6       # conv2: a gray tile per input channel
    assert sheets["conv2"].shape[0] > 4 * 15 and sheets["conv2"].shape[1] > 4 * 6 * 6 * 3  # 16 tiles: 4 lines of 4


def stepped_lrs(make_scheduler, steps: int, **sgd) -> list[float]:
    """get_last_lr() before each of `steps` optimizer and scheduler steps, on a one-parameter SGD."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, **sgd)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_curves_are_the_courses_schedulers_with_its_settings():
    curves = lr_curves(epochs=100, lr=0.1)
    assert list(curves) == ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
                            "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR", "LambdaLR", "MultiplicativeLR",
                            "ReduceLROnPlateau"]
    base = {name: [v for _, v in groups["base"]] for name, groups in curves.items()}
    assert base["CosineAnnealingLR"] == stepped_lrs(lambda o: lr_scheduler.CosineAnnealingLR(o, 10, 1e-5), 100)
    assert base["OneCycleLR"] == stepped_lrs(lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=100), 100,
                                             momentum=0.9)
    assert base["CyclicLR"] == stepped_lrs(lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 25, 10), 100, momentum=0.9)
    assert base["StepLR"][29:31] == pytest.approx([0.1, 0.01]) and base["MultiStepLR"][45] == pytest.approx(0.0125)
    assert base["ExponentialLR"][:3] == pytest.approx([0.1, 0.09, 0.081])
    # two parameter groups (fc at half the lr, the course's 0.05), two lambdas, two curves
    assert [v for _, v in curves["LambdaLR"]["base"]] == pytest.approx([0.1 * 0.1 ** (e // 20) for e in range(100)])
    assert [v for _, v in curves["LambdaLR"]["fc"]] == pytest.approx([0.05 * 0.95 ** e for e in range(100)])
    assert [v for _, v in curves["MultiplicativeLR"]["base"]] == pytest.approx([0.1 * 0.5 ** (e // 10) for e in range(100)])
    assert [v for _, v in curves["MultiplicativeLR"]["fc"]] == pytest.approx([0.05 * 0.8 ** (e // 10) for e in range(100)])
    plateau = base["ReduceLROnPlateau"]  # a loss that never improves: cut once 10 epochs pass without a better one
    assert plateau[:12] == [0.1] * 12 and plateau[12:23] == pytest.approx([0.01] * 11) and plateau[23] == pytest.approx(1e-3)
    assert "fc" not in curves["StepLR"]


@pytest.mark.parametrize("name", ["step", "multistep", "exponential", "cosine", "plateau"])
def test_train_rmb_scheduler_flag(tiny_data, tmp_path, name):
    metrics = train(tmp_path, tiny_data, "--epochs", "4", "--batch-size", "4", "--scheduler", name,
                    "--step-size", "2", "--gamma", "0.5", "--no-monitor")
    lrs = [e.value for e in line(metrics["run_dir"], LR, "all")]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    scheduler = build_scheduler(name, optimizer, 4, 2, 0.5)
    if name != "plateau":
        expected = []
        for _ in range(4):
            expected.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert lrs == pytest.approx(expected)
    assert len(lrs) == 4 and lrs[0] == pytest.approx(0.01)


def test_training_writes_the_pictures(tiny_data, tmp_path):
    metrics = train(tmp_path, tiny_data, "--epochs", "2", "--batch-size", "4")
    run_dir = Path(metrics["run_dir"])
    for name in ("confusion_test.png", "gradcam.png", "feature_maps_conv1.png", "feature_maps_conv2.png",
                 "kernels_conv1.png", "kernels_conv2.png"):
        with Image.open(run_dir / name) as img:
            img.verify()
    events = read_events(run_dir)
    images = events.Tags()["images"]
    assert [e.step for e in events.Images(f"{PICTURES}/confusion_valid")] == [5, 10]
    layers = ("conv1", "conv2", "relu1", "relu2")
    assert set(images) == {VERDICT} | {f"{PICTURES}/{name}" for name in (
        "confusion_valid", "confusion_test", "gradcam", *(f"feature_maps_{n}" for n in layers),
        "kernels_conv1", "kernels_conv2")}  # a card per layer
    assert [e.step for e in events.Images(f"{PICTURES}/kernels_conv1")] == [0, 10]  # start and end
    assert [e.step for e in events.Images(f"{PICTURES}/feature_maps_relu2")] == [0, 10]
    assert set(metrics["per_class"]["test"]) == {"1", "100"}


def test_inspect_run_command(tiny_data, tmp_path, capsys):
    from tools import inspect_run

    metrics = train(tmp_path, tiny_data, "--epochs", "2", "--batch-size", "4", "--no-monitor")
    run_dir = Path(metrics["run_dir"])
    result = inspect_run.main(inspect_run.get_args_parser().parse_args([str(run_dir), "--device", "cpu"]))
    assert result["split"] == "test" and result["acc"] == pytest.approx(metrics["test_acc"])
    assert sum(map(sum, result["confusion"])) == 2
    for png in result["pngs"]:
        with Image.open(png) as img:
            img.verify()
    photo = sorted((tiny_data / "100").glob("*.jpg"))[0]
    single = inspect_run.main(inspect_run.get_args_parser().parse_args([str(run_dir), "--image", str(photo)]))
    assert single["prediction"] in ("1", "100") and sum(single["probabilities"].values()) == pytest.approx(1)
    assert Path(single["png"]).is_file()


def test_the_verdict_strip_names_each_status_with_its_epochs():
    from tools.pictures.visualize import epochs_text, render_verdict_strip

    assert epochs_text([1, 2, 3, 5]) == "epochs 1-3, 5" and epochs_text([4]) == "epoch 4"
    strip = np.asarray(render_verdict_strip(["healthy", "lr-too-high", "healthy", "converged"], "test accuracy 95%"))
    box = (strip.shape[1] - 20) / 4  # the boxes, a row of one colour per epoch, in order
    colours = [tuple(strip[45, int(10 + (k + 0.5) * box)]) for k in range(4)]
    assert colours[0] == colours[2] != colours[1] != colours[3] and strip.shape[0] > 120


def test_hparams_are_the_flags_that_tell_runs_apart():
    import train_rmb

    from tools.training.run_dirs import hparams_of

    args = train_rmb.get_args_parser().parse_args(["--optimizer", "adam", "--lr", "0.001", "--epochs", "3",
                                                   "--data-dir", "/some/where/RMB_data"])
    chosen = hparams_of(args, train_rmb.HPARAMS)
    assert list(chosen) == ["data_dir", "model", "optimizer", "lr", "epochs"]  # TensorBoard ticks the first five
    assert chosen["data_dir"] == "RMB_data" and chosen["optimizer"] == "adam"


@pytest.mark.parametrize("n", [21, 170, 1000])
def test_a_confusion_matrix_of_many_classes_is_bounded_and_shows_the_worst(n):
    """Past 20 classes the picture draws the 20 with the most mistakes (a brute-force count picks the same)
    and says so; its size stays within the bound whatever the class count (170 classes once made a picture
    Pillow refused to open)."""
    from tools.pictures.confusion import CONFUSION_CLASSES, worst_classes

    generator = torch.Generator().manual_seed(n)
    cm = torch.randint(0, 3, (n, n), generator=generator) + 40 * torch.eye(n, dtype=torch.long)
    mistakes = [sum(int(cm[c, j]) + int(cm[j, c]) for j in range(n) if j != c) for c in range(n)]
    brute = sorted(sorted(range(n), key=lambda c: (-mistakes[c], -int(cm[c].sum()), c))[:CONFUSION_CLASSES])
    assert worst_classes(cm, CONFUSION_CLASSES) == brute
    image = render_confusion_matrix(cm, [f"class{i}" for i in range(n)], "test")
    assert image.width <= 1400 and image.height <= 1400


def test_a_picture_written_fast_reads_back_as_the_same_pixels(tmp_path):
    """write_event's pictures (PNG at zlib level 1, straight from PIL) read back with TensorBoard's own
    reader as exactly the pixels drawn."""
    import io

    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    from tools.pictures.visualize import render_verdict_strip
    from tools.tb.writer import write_event

    picture = render_verdict_strip(["healthy", "lr-too-high", None], "a note", run="20261207-000000_x", flags="--lr 1")
    with SummaryWriter(str(tmp_path)) as writer:
        write_event(writer, 7, scalars={"a": 1.0}, pictures={VERDICT: picture})
    (event,) = read_events(tmp_path).Images(VERDICT)
    decoded = Image.open(io.BytesIO(event.encoded_image_string))
    assert event.step == 7 and (event.width, event.height) == picture.size
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(picture.convert("RGB")))
