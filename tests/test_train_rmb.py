import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_DATA, ROOT, line, read_events, requires_real_data, train
from PIL import Image

from model import LeNet
from tools.tb.writer import ACCURACY, DEAD_UNITS, GRAD_NORM, LOSS, LR, PICTURES, UPDATE_RATIO, VERDICT
from tools.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, RMBDataset, default_data_dir, find_splits

PARAMS = [f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for kind in ("weight", "bias")]


@pytest.fixture(scope="module")
def two_epochs(tiny_data, tmp_path_factory):
    """A 2-epoch run on the tiny set: 20 train images, batch 4, so 5 steps per epoch."""
    tmp = tmp_path_factory.mktemp("two_epochs")
    metrics = train(tmp, tiny_data, "--epochs", "2", "--batch-size", "4", "--log-interval", "2")
    return metrics, Path(metrics["run_dir"])


def steps(run_dir, tag, name):
    return [e.step for e in line(run_dir, tag, name)]


def test_run_folder_layout(two_epochs):
    _, run_dir = two_epochs
    assert run_dir.name.endswith("_lenet") and len(run_dir.name.split("_")[0]) == len("YYYYmmdd-HHMMSS")
    for name in ("metrics.json", "loss_curve.png", "checkpoint_last.pt", "checkpoint_best.pt"):
        assert (run_dir / name).is_file(), name
    with Image.open(run_dir / "loss_curve.png") as img:
        assert img.size[0] > 300
    ckpt = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 10 and ckpt["args"]["batch_size"] == 4
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "best", "history"}


def test_scalars_histograms_graph_and_text_read_back(two_epochs):
    _, run_dir = two_epochs
    events = read_events(run_dir)
    assert steps(run_dir, LOSS, "train") == list(range(1, 11))
    assert steps(run_dir, ACCURACY, "train") == list(range(1, 11))
    for tag, name in ((LOSS, "valid"), (ACCURACY, "valid"), (LR, "all")):
        assert steps(run_dir, tag, name) == [5, 10], tag
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3", "total"):  # a line per layer, in one chart
        assert steps(run_dir, GRAD_NORM, layer) == [2, 4, 6, 8, 10]
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        assert steps(run_dir, UPDATE_RATIO, layer) == [2, 4, 6, 8, 10]
    for name in PARAMS:
        for kind, expected in (("weights", [0, 5, 10]), ("grads", [5, 10])):  # weights: the initial ones too
            hists = events.Histograms(f"{kind}/{name}")
            assert [h.step for h in hists] == expected
            assert sum(hists[-1].histogram_value.bucket) == events.Histograms(f"weights/{name}")[0].histogram_value.num
    assert events.Tags()["graph"]
    text_tags = events.Tags()["tensors"]
    assert "flags/text_summary" in text_tags and "diagnosis/text_summary" in text_tags  # diagnosis sorts first
    assert "custom_scalars__config__" in text_tags  # the Custom Scalars tab: a chart per measure
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["train", "valid"]  # a run, its two splits
    assert [e.step for e in events.Images(VERDICT)][:2] == [5, 10]  # the verdict's picture, each epoch
    (test,) = line(run_dir, ACCURACY, "test")  # the best checkpoint's test accuracy: a value of its own
    assert test.step == 10 and 0 <= test.value <= 1
    assert [e.value for e in line(run_dir, LR, "all")] == pytest.approx([0.01, 0.01])


def test_metrics_json_matches_the_logged_values_and_an_independent_evaluation(two_epochs, tiny_data):
    metrics, run_dir = two_epochs
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) >= {"train_loss", "train_acc", "valid_loss", "valid_acc", "test_acc", "best_epoch",
                          "epochs", "seconds"}
    assert saved["valid_acc"] == pytest.approx(line(run_dir, ACCURACY, "valid")[-1].value)
    assert saved["valid_loss"] == pytest.approx(line(run_dir, LOSS, "valid")[-1].value, rel=1e-5)
    assert saved["train_acc"] == pytest.approx(line(run_dir, ACCURACY, "train")[-1].value)  # running acc at epoch end
    assert saved["test_acc"] == pytest.approx(line(run_dir, ACCURACY, "test")[-1].value)  # a point at the end
    losses = [e.value for e in line(run_dir, LOSS, "train")][5:]
    assert saved["train_loss"] == pytest.approx(sum(losses) / 5, rel=1e-5)  # equal batches: mean of the steps
    assert saved["epochs"] == 2

    # independent evaluation of the final weights on the valid split: plain tensor arithmetic
    classes, splits, _ = find_splits(tiny_data)
    valid = RMBDataset(samples=splits["valid"], classes=classes)
    model = LeNet(len(classes))
    model.load_state_dict(torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["model"])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((valid.images.float() / 255 - mean) / std)
    targets = torch.tensor(valid.targets)
    assert saved["valid_acc"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert saved["valid_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)


def test_resume_keeps_step_numbering_and_ends_bit_identical(two_epochs, tiny_data, tmp_path):
    first = train(tmp_path, tiny_data, "--epochs", "1", "--batch-size", "4", "--log-interval", "2")
    run_dir = Path(first["run_dir"])
    resumed = train(tmp_path, tiny_data, "--epochs", "2", "--batch-size", "4", "--log-interval", "2",
                    "--resume", "auto")
    assert resumed["run_dir"] == str(run_dir)
    events = read_events(run_dir)
    assert steps(run_dir, LOSS, "train") == list(range(1, 11))
    assert steps(run_dir, LOSS, "valid") == [5, 10]
    assert [h.step for h in events.Histograms("weights/conv1.weight")] == [0, 5, 10]
    straight = torch.load(Path(two_epochs[1]) / "checkpoint_last.pt", weights_only=True)
    again = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, again["model"][key]), key


def diagnosis_texts(run_dir) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in read_events(run_dir).Tensors("diagnosis/text_summary")]


def test_the_diagnosis_names_the_epoch_not_the_step(two_epochs, tiny_data, tmp_path):
    _, run_dir = two_epochs  # 2 epochs of 5 steps
    assert [(step, text.split(":")[0]) for step, text in diagnosis_texts(run_dir)] == [(5, "epoch 1"), (10, "epoch 2")]
    first = train(tmp_path, tiny_data, "--epochs", "1", "--batch-size", "4")
    train(tmp_path, tiny_data, "--epochs", "3", "--batch-size", "4", "--resume", first["run_dir"])
    assert [text.split(":")[0] for _, text in diagnosis_texts(first["run_dir"])] == ["epoch 1", "epoch 2", "epoch 3"]


def test_a_resumed_run_judges_as_the_uninterrupted_one_and_metrics_keep_the_verdict(tiny_data, tmp_path):
    flags = ["--batch-size", "4", "--lr", "1e-7"]  # a learning rate far too low: a finding that persists
    straight = train(tmp_path / "a", tiny_data, "--epochs", "3", *flags)
    first = train(tmp_path / "b", tiny_data, "--epochs", "1", *flags)
    resumed = train(tmp_path / "b", tiny_data, "--epochs", "3", *flags, "--resume", first["run_dir"])
    texts = [text for _, text in diagnosis_texts(straight["run_dir"])]
    assert texts == [text for _, text in diagnosis_texts(resumed["run_dir"])]
    assert texts[1].startswith("epoch 2: lr-too-low\n\nlr-too-low (since epoch 1): ")  # shortened, as persisting
    verdict = json.loads((Path(resumed["run_dir"]) / "metrics.json").read_text())["verdict"]
    assert verdict == straight["verdict"] and verdict["status"] == "lr-too-low"
    assert verdict["findings"][0]["first_epoch"] == 1 and "raise the learning rate" in verdict["findings"][0]["fix"]


def test_empty_cache_dir_means_no_disk_cache(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Path('') is the current folder: nothing may land there
    train(tmp_path / "elsewhere", tiny_data, "--epochs", "1", "--batch-size", "4", "--cache-dir", "")
    assert list(tmp_path.rglob("images_*px.pt")) == []


def test_no_monitor_turns_off_histograms_and_norms(tiny_data, tmp_path):
    metrics = train(tmp_path, tiny_data, "--epochs", "1", "--batch-size", "4", "--no-monitor")
    tags = read_events(metrics["run_dir"]).Tags()
    assert tags["histograms"] == [] and not (Path(metrics["run_dir"]) / "layers").exists()
    assert LOSS in read_events(Path(metrics["run_dir"]) / "train").Tags()["scalars"]


def test_default_data_is_generated_once(tmp_path):
    folder, note = default_data_dir(tmp_path)
    assert folder == tmp_path / "RMB_synthetic" and "generated a synthetic" in note and "RMB_data" in note
    assert len(list((folder / "1").glob("*.jpg"))) == len(list((folder / "100").glob("*.jpg"))) == 100
    again, note = default_data_dir(tmp_path)
    assert again == folder and "using the synthetic" in note
    (tmp_path / "RMB_data").mkdir()
    assert default_data_dir(tmp_path) == (tmp_path / "RMB_data", None)


def test_default_synthetic_set_gives_a_real_learning_curve(tmp_path):
    folder, _ = default_data_dir(tmp_path / "data")
    metrics = train(tmp_path, folder, "--no-monitor")  # the defaults: 10 epochs, batch 16
    accs = [e.value for e in line(metrics["run_dir"], ACCURACY, "valid")]
    # the best epoch, not the last: ten epochs of float32 training end elsewhere on another CPU (the last
    # valid accuracy is 90% here, 80% under torch's portable kernels; the best 95% under both)
    assert len(accs) == 10 and accs[0] < 0.9 and max(accs) >= 0.85


@requires_real_data
def test_real_photos_reach_the_target_with_a_healthy_verdict(tmp_path):
    # 30 epochs: the learning rate decays twice (StepLR every 10) and the run converges: still no alarm
    metrics = train(tmp_path, REAL_DATA, "--epochs", "30")
    assert metrics["valid_acc"] >= 0.95 and metrics["test_acc"] >= 0.9
    texts = [e.tensor_proto.string_val[0].decode()
             for e in read_events(metrics["run_dir"]).Tensors("diagnosis/text_summary")]
    assert len(texts) == 30 and all(t.splitlines()[0].split(": ")[1] in ("healthy", "converged") for t in texts), texts


def run_script(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, "train_rmb.py", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_clear_line(tmp_path):
    result = run_script("--device", "cuda", "--logdir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--device cuda" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_tensorboard_server_serves_the_story_in_a_few_cards(two_epochs):
    from tools.tb.browser import cards, get_json, serve

    _, run_dir = two_epochs
    server, base = serve(run_dir)  # a free port, retried if another process takes it first
    try:
        found = cards(base)
        tags = get_json(f"{base}/data/plugin/scalars/tags")
        points = get_json(f"{base}/data/plugin/scalars/scalars?run=valid&tag={ACCURACY}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert found["scalars"][:4] == [ACCURACY, f"{ACCURACY}/test", LOSS, f"{LR}/all"]  # the story first
    assert found["runs"] == [".", "train", "valid"]  # a run adds its two splits to the run list, nothing more
    layers = ("conv1", "conv2", "fc1", "fc2", "fc3")
    assert set(found["scalars"][4:]) == {f"{GRAD_NORM}/{layer}" for layer in (*layers, "total")} | {
        f"{UPDATE_RATIO}/{layer}" for layer in (*layers, "healthy_low", "healthy_high")} | {
        f"{DEAD_UNITS}/relu{k}" for k in range(1, 5)}
    assert {LOSS, ACCURACY} <= set(tags["train"]) and {LOSS, ACCURACY} <= set(tags["valid"])  # one chart each
    assert found["images"] == [VERDICT] + [f"{PICTURES}/{name}" for name in (
        "confusion_test", "confusion_valid", "feature_maps_conv1", "feature_maps_conv2", "feature_maps_relu1",
        "feature_maps_relu2", "gradcam", "kernels_conv1", "kernels_conv2")]  # a card per layer: none cut off
    assert {f"{k}/{p}" for k in ("weights", "grads") for p in PARAMS} <= set(found["histograms"])
    assert [p[1] for p in points] == [5, 10] and all(0 <= p[2] <= 1 for p in points)
    assert not any(t.startswith("hparam") for t in found["scalars"])  # hparams: the HParams tab only


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium here (CI has none)")
def test_screenshots_of_each_tab_in_a_real_browser(two_epochs, tmp_path):
    from tools.tb.browser import take

    _, run_dir = two_epochs
    result = take(run_dir, tmp_path)
    for tab, png in result["pngs"].items():
        with Image.open(png) as img:
            pixels = np.asarray(img.convert("L"), dtype=float)
        assert img.size == (1400, 1000) and pixels.std() > 20, tab  # a page was drawn, not a blank one
    assert len(result["cards"]["runs"]) <= 3  # the run and its two splits: seven runs side by side stay readable


def test_ten_epochs_on_the_generated_set_learn_with_a_margin_any_cpu_keeps(tmp_path):
    """`python train_rmb.py` on the generated set: its first epoch is the same on every CPU (tests/test_docs.py
    quotes it); ten epochs of float32 training are not (docs/measured.md quotes epoch 10 from three kernel
    levels: train loss 0.16 - 0.20, valid 80 - 93%, test 95%). What holds everywhere is that it learns:
    asserted with a wide margin around those."""
    from tools.data.synthetic import generate

    metrics = train(tmp_path, generate(tmp_path / "RMB_synthetic"))
    assert metrics["epochs"] == 10 and metrics["train_loss"] < 0.35 and metrics["train_acc"] >= 0.85
    assert metrics["best_valid_acc"] >= 0.85 and metrics["test_acc"] >= 0.8
    assert metrics["verdict"]["status"] in ("healthy", "converged")
