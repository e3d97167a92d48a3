"""train_rmb.py under torchrun: 2 processes on the CPU with gloo."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, line
from torch import nn
from torch.utils.data import DataLoader

from model import LeNet
from tools.training.engine import evaluate
from tools.tb.writer import ACCURACY, LOSS
from tools.data.image_folder import RMBDataset, build_transforms, find_splits

BATCH = 4


def torchrun(tiny_data, logdir: Path, *extra, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_rmb.py",
           "--data-dir", str(tiny_data), "--batch-size", str(BATCH), "--logdir", str(logdir),
           "--cache-dir", str(logdir.parent / "cache"), "--device", "cpu", *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("ddp") / "runs"
    result = torchrun(tiny_data, logdir, "--epochs", "2")
    return result, logdir


def test_two_processes_train_one_run(ddp_run, tiny_data):
    result, logdir = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(logdir.iterdir())
    assert len(runs) == 1 and len(list(runs[0].glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    assert "weights identical on all 2 processes" in result.stdout
    assert result.stdout.count("epoch   1/2") == 1  # one rank prints
    _, splits, _ = find_splits(tiny_data)
    steps_per_epoch = math.ceil(len(splits["train"]) / (2 * BATCH))
    assert [e.step for e in line(runs[0], LOSS, "train")] == list(range(1, 2 * steps_per_epoch + 1))
    assert [e.step for e in line(runs[0], ACCURACY, "valid")] == [steps_per_epoch, 2 * steps_per_epoch]


def test_logged_valid_accuracy_equals_a_single_process_evaluation(ddp_run, tiny_data):
    _, logdir = ddp_run
    run_dir = next(logdir.iterdir())
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    model = LeNet(len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model"])
    classes, splits, _ = find_splits(tiny_data)
    valid = RMBDataset(samples=splits["valid"], classes=classes, transform=build_transforms()[1])
    stats = evaluate(model, DataLoader(valid, batch_size=3), nn.CrossEntropyLoss(), torch.device("cpu"), 2)
    assert line(run_dir, ACCURACY, "valid")[-1].value == pytest.approx(stats["acc"])
    assert line(run_dir, LOSS, "valid")[-1].value == pytest.approx(stats["loss"], rel=1e-5)


def test_shards_cover_every_image_once_and_training_shards_are_equal():
    from types import SimpleNamespace

    from tools.training.batches import DeviceBatches

    images = SimpleNamespace(images=torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1).expand(11, 3, 2, 2),
                             targets=list(range(11)))
    evaluation = [DeviceBatches(images, 4, [0.0] * 3, [1 / 255] * 3, torch.device("cpu"), shard=(rank, 3))
                  for rank in range(3)]
    seen = [int(label) for shard in evaluation for _, labels in shard for label in labels]
    assert sorted(seen) == list(range(11))  # each image on exactly one rank
    training = [DeviceBatches(images, 4, [0.0] * 3, [1 / 255] * 3, torch.device("cpu"), seed=1, augment=True,
                              shard=(rank, 3)) for rank in range(3)]
    orders = [shard.order() for shard in training]
    assert [len(o) for o in orders] == [4, 4, 4] and set(torch.cat(orders).tolist()) == set(range(11))
    training[0].set_epoch(1)
    assert not torch.equal(training[0].order(), orders[0])  # a new shuffle every epoch


def test_sigterm_on_one_rank_saves_once_and_resume_is_exact(ddp_run, tiny_data, tmp_path):
    logdir = tmp_path / "runs"
    process = torchrun(tiny_data, logdir, "--epochs", "40", wait=False)
    deadline = time.time() + 120
    while not list(logdir.glob("*_lenet/checkpoint_last.pt")):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "-P", str(process.pid), "train_rmb.py"], capture_output=True,
                             text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGTERM)  # one rank only
    out, err = process.communicate(timeout=120)
    assert "Resume with:" in err and err.count("saved ") == 1, err[-3000:]
    run_dir = next(logdir.glob("*_lenet"))
    resumed = torchrun(tiny_data, logdir, "--epochs", "40", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = torchrun(tiny_data, tmp_path / "reference", "--epochs", "40")
    assert reference.returncode == 0, reference.stderr[-3000:]
    final = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    expected = torch.load(next((tmp_path / "reference").glob("*_lenet")) / "checkpoint_last.pt", weights_only=True)
    for key, tensor in expected["model"].items():
        assert torch.equal(tensor, final["model"][key]), (key, err[-2000:], resumed.stdout[-2000:])
    steps = [e.step for e in line(run_dir, LOSS, "train")]
    assert steps == list(range(1, expected["global_step"] + 1))


def test_a_user_error_under_torchrun_is_one_line_and_exit_2_on_every_rank(tmp_path):
    result = torchrun(tmp_path / "missing", tmp_path / "runs", "--epochs", "1")
    lines = result.stderr.strip().splitlines()
    ours = [line for line in lines if line.startswith("train_rmb.py: error:")]
    assert len(ours) == 1 and "missing does not exist" in ours[0] and lines[0] == ours[0]  # said once, first
    assert "Traceback" not in result.stderr.split("torch/distributed/elastic")[0]  # no traceback of ours
    assert "exitcode: 2" in result.stderr and "exitcode: 1" not in result.stderr  # torchrun reports our 2
