"""When things go wrong: kills, signals, bad data, bad flags, divergence. Nothing lost, nothing cryptic."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, line, read_events, train, write_images
from PIL import Image

import train_rmb
from tools.cli.arguments import run_script as run
from tools.tb.writer import ACCURACY, LOSS

FLAGS = ["--batch-size", "4", "--device", "cpu", "--seed", "7"]
EPOCHS = 40


def cli(tmp_path, *argv):
    """train_rmb.py's command line, in-process: (exit code, stdout, stderr lines)."""
    return run(train_rmb.main, train_rmb.get_args_parser(),
               ["--logdir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *argv])


def expect_user_error(tmp_path, capsys, *argv, match):
    with pytest.raises(SystemExit) as exit_info:
        cli(tmp_path, *argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.count("\n") == 0 and match in err and "Traceback" not in err, err
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # nothing half-made
    return err


# --- kills and signals ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    metrics = train(tmp, tiny_data, *FLAGS, "--epochs", str(EPOCHS))
    return torch.load(Path(metrics["run_dir"]) / "checkpoint_last.pt", weights_only=True)


def start(tiny_data, logdir: Path, *extra):
    cmd = [sys.executable, "train_rmb.py", "--data-dir", str(tiny_data), "--logdir", str(logdir),
           "--cache-dir", str(logdir.parent / "cache"), *FLAGS, "--epochs", str(EPOCHS), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_checkpoint(logdir: Path, process) -> Path:
    deadline = time.time() + 60
    while not list(logdir.glob("*_lenet/checkpoint_last.pt")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    return next(logdir.glob("*_lenet"))


def assert_same_run(run_dir: Path, uninterrupted: dict):
    final = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert final["epoch"] == EPOCHS and final["global_step"] == uninterrupted["global_step"]
    for key, tensor in uninterrupted["model"].items():
        assert torch.equal(tensor, final["model"][key]), key
    for index, state in uninterrupted["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], final["optimizer"]["state"][index]["momentum_buffer"])
    steps = [e.step for e in line(run_dir, LOSS, "train")]
    assert steps == list(range(1, uninterrupted["global_step"] + 1))  # each step exactly once
    assert [e.step for e in line(run_dir, ACCURACY, "valid")] == [s for s, _ in uninterrupted["history"]["valid"]]
    assert [e.value for e in line(run_dir, LOSS, "train")] == pytest.approx(
        [v for _, v in uninterrupted["history"]["train"]], rel=1e-6)


def test_sigkill_at_a_random_step_then_resume_auto_is_bit_exact(tiny_data, tmp_path, uninterrupted):
    process = start(tiny_data, tmp_path / "runs")
    run_dir = wait_for_first_checkpoint(tmp_path / "runs", process)
    time.sleep(random.uniform(0.0, 0.3))
    process.kill()
    process.wait()
    assert not (run_dir / "metrics.json").exists(), "the run ended before the kill: make EPOCHS larger"
    resumed = train(tmp_path, tiny_data, *FLAGS, "--epochs", str(EPOCHS), "--resume", "auto")
    assert resumed["run_dir"] == str(run_dir)
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_mid_epoch_and_resume_is_bit_exact(tiny_data, tmp_path, uninterrupted, sig, code):
    process = start(tiny_data, tmp_path / "runs")
    run_dir = wait_for_first_checkpoint(tmp_path / "runs", process)
    time.sleep(random.uniform(0.0, 0.2))
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Resume with:" in err and f"--resume {run_dir}" in err
    saved = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert saved["global_step"] > 0
    resumed = train(tmp_path, tiny_data, *FLAGS, "--epochs", str(EPOCHS), "--resume", str(run_dir))
    assert resumed["run_dir"] == str(run_dir)
    assert_same_run(run_dir, uninterrupted)


# --- bad data -----------------------------------------------------------------------------------------

def test_missing_data_dir(tmp_path, capsys):
    expect_user_error(tmp_path, capsys, "--data-dir", str(tmp_path / "nowhere"), match="nowhere does not exist")


def test_folder_with_no_class_folders(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.jpg")
    expect_user_error(tmp_path, capsys, "--data-dir", str(tmp_path / "flat"), match="no class sub-folders")


def test_class_folder_with_no_images(tmp_path, capsys):
    write_images(tmp_path / "d" / "1", 5)
    (tmp_path / "d" / "100").mkdir()
    (tmp_path / "d" / "100" / "notes.txt").write_text("no images here")
    expect_user_error(tmp_path, capsys, "--data-dir", str(tmp_path / "d"), match="100 has no images")


def test_fewer_than_two_classes(tmp_path, capsys):
    write_images(tmp_path / "d" / "1", 5)
    expect_user_error(tmp_path, capsys, "--data-dir", str(tmp_path / "d"), match="at least two")


def test_a_split_that_leaves_valid_empty(tmp_path, capsys):
    write_images(tmp_path / "d" / "1", 1)
    write_images(tmp_path / "d" / "100", 1, start=1)
    expect_user_error(tmp_path, capsys, "--data-dir", str(tmp_path / "d"), match="valid set empty")


@pytest.fixture
def messy_data(tmp_path) -> tuple[Path, list[str]]:
    """Good images of every mode, broken files, and non-image files in two class folders."""
    root = tmp_path / "messy"
    write_images(root / "1", 8)
    write_images(root / "100", 8, start=8)
    rgb = Image.new("RGB", (40, 30), (200, 100, 50))
    rgb.convert("L").save(root / "1" / "gray.png")
    rgb.convert("RGBA").save(root / "1" / "rgba.png")
    rgb.quantize(8).save(root / "100" / "palette.gif")
    rgb.convert("CMYK").save(root / "100" / "cmyk.jpg")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(root / "100" / "sixteen.png")
    bad = [root / "1" / "empty.jpg", root / "1" / "truncated.jpg", root / "100" / "text.jpg",
           root / "100" / "scan.tiff"]
    bad[0].write_bytes(b"")
    full = (root / "1" / "000.jpg").read_bytes()
    bad[1].write_bytes(full[: len(full) // 2])
    bad[2].write_text("this is not a JPEG")
    rgb.save(bad[3])
    for junk in (".DS_Store", "Thumbs.db", "README.md"):
        (root / "1" / junk).write_bytes(b"\x00junk")
    return root, [str(p) for p in bad]


def test_broken_images_are_skipped_with_one_warning(tmp_path, capsys, messy_data):
    root, bad = messy_data
    metrics = cli(tmp_path, "--data-dir", str(root), "--epochs", "1", "--no-monitor")
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 4" in warnings[0]
    for path in bad:
        assert path in warnings[0]
    assert "DS_Store" not in err and "Thumbs" not in err and "README" not in err
    assert metrics["valid_acc"] is not None
    from tools.data.image_folder import find_splits
    _, splits, _ = find_splits(root)
    n_images = sum(len(v) for v in splits.values())
    assert n_images == 16 + 5 + 3  # 16 JPEGs, 5 odd modes, and the 3 broken files with image extensions


def test_strict_stops_at_the_first_broken_image(tmp_path, capsys, messy_data):
    root, bad = messy_data
    err = expect_user_error(tmp_path, capsys, "--data-dir", str(root), "--strict", match="--strict")
    assert any(path in err for path in bad)


# --- bad flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, match", [
    (["--lr", "0"], "--lr"), (["--lr", "-1"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--device", "tpu"], "--device: 'tpu': use auto, cpu, cuda or cuda:N"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, tiny_data, flags, match):
    expect_user_error(tmp_path, capsys, "--data-dir", str(tiny_data), *flags, match=match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path, capsys, tiny_data):
    expect_user_error(tmp_path, capsys, "--data-dir", str(tiny_data), "--device", "cuda", match="--device cuda")


def test_unwritable_logdir_is_caught_before_training(tmp_path, capsys, tiny_data):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(SystemExit) as exit_info:
        run(train_rmb.main, train_rmb.get_args_parser(),
            ["--data-dir", str(tiny_data), "--logdir", str(blocker / "runs"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "--logdir" in err and err.count("\n") == 0
    assert not (tmp_path / "c").exists()  # stopped before touching the data


def test_resume_of_a_malicious_file_is_refused(tmp_path, capsys, tiny_data):
    import pickle

    from test_checkpoint import WritesAFile
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": WritesAFile(tmp_path / "pwned")}, protocol=2))
    expect_user_error(tmp_path, capsys, "--data-dir", str(tiny_data), "--resume", str(evil), match="refusing")
    assert not (tmp_path / "pwned").exists()


# --- divergence ---------------------------------------------------------------------------------------

def test_divergence_stops_names_the_parameter_and_keeps_the_last_good_checkpoint(tmp_path, capsys, tiny_data):
    with pytest.raises(SystemExit) as exit_info:
        cli(tmp_path, "--data-dir", str(tiny_data), "--batch-size", "4", "--lr", "0.5", "--epochs", "10")
    err = capsys.readouterr().err
    assert exit_info.value.code == 3
    assert "non-finite" in err and "first parameter with a non-finite gradient:" in err and "step" in err
    run_dir = next((tmp_path / "runs").glob("*_lenet"))
    kept = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert 0 < kept["epoch"] < 10
    assert all(torch.isfinite(t).all() for t in kept["model"].values())
    assert "diverged" in read_events(run_dir).Tensors("diagnosis/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_real_cli_prints_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "train_rmb.py", "--lr", "0", "--logdir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--lr" in result.stderr


def test_a_jpeg_or_a_damaged_file_passed_as_a_checkpoint_is_called_damaged_not_dangerous(tmp_path, capsys, tiny_data):
    jpeg = next((tiny_data / "1").iterdir())
    err = expect_user_error(tmp_path, capsys, "--data-dir", str(tiny_data), "--resume", str(jpeg), match="damaged")
    assert "could run code" not in err and "checkpoint_best.pt" in err
    err = expect_user_error(tmp_path, capsys, "--data-dir", str(tiny_data), "--resume", "/dev/null", match="not a file")


def test_a_resume_after_the_data_folder_changed_says_so(tiny_data, tmp_path, capsys):
    """Photos removed between a run and its resume: the resumed run says the split sizes now and then, and
    that it no longer continues bit for bit (the checkpoint keeps the sizes)."""
    import shutil

    data = tmp_path / "photos"
    shutil.copytree(tiny_data, data)
    first = train(tmp_path, data, "--epochs", "1")
    assert torch.load(Path(first["run_dir"]) / "checkpoint_last.pt", weights_only=True)["images"] == \
        {"train": 20, "valid": 2, "test": 2}
    for photo in sorted((data / "1").iterdir())[:4]:
        photo.unlink()
    capsys.readouterr()
    train(tmp_path, data, "--epochs", "2", "--resume", "auto", "--run-name", "lenet")
    err = capsys.readouterr().err
    assert "the data folder changed since the run began" in err and "then" in err and "bit for bit" in err, err


@pytest.mark.parametrize("flag", ["--logdir", "--cache-dir"])
def test_a_folder_written_inside_the_data_folder_is_named_not_the_data(tiny_data, tmp_path, flag):
    """--logdir (or --cache-dir) inside --data-dir: one line naming that flag, before anything is written
    (the data is not blamed for a 'class folder without images')."""
    import shutil

    import train_rmb
    from tools.cli.errors import UserError

    data = tmp_path / "photos"
    shutil.copytree(tiny_data, data)
    argv = ["--data-dir", str(data), "--logdir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            flag, str(data / "out")]
    with pytest.raises(UserError, match=f"{flag} .* is inside the data folder"):
        train_rmb.main(train_rmb.get_args_parser().parse_args(argv))
    assert not (data / "out").exists()
