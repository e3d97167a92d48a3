"""Nothing lost, nothing cryptic, round two: finished runs, look-alike run names, folder layouts, the last
minute of a run, locks, flags. Each test names the case it guards."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, read_events, sigterm_mid_run, train, write_images

import train_rmb
from tools.training.checkpoint import save_checkpoint
from tools.cli.arguments import run_script
from tools.cli.errors import UserError
from tools.data.image_folder import find_splits, load_splits
from tools.training.run_dirs import RunLock, find_resume_checkpoint, resume_command
from tools.tb.writer import open_writer

FLAGS = ["--batch-size", "4", "--device", "cpu"]


def cli(tmp_path, *argv, main=train_rmb.main, parser=None):
    """A script's command line, in-process, with run folders and the cache in tmp_path."""
    parser = parser or train_rmb.get_args_parser()
    return run_script(main, parser, ["--logdir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
                                     *argv])


def one_line_exit_2(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    metrics = train(tmp, tiny_data, *FLAGS, "--epochs", "2")
    return tmp, Path(metrics["run_dir"])


# --- 1, 5: finished runs and the final phase -----------------------------------------------------------

@pytest.mark.parametrize("resume", ["run", "auto", "fewer epochs"])
def test_resuming_a_finished_run_changes_nothing_and_says_how_to_go_on(finished_run, tiny_data, capsys, resume):
    tmp, run_dir = finished_run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    flags = {"run": ["--resume", str(run_dir)], "auto": ["--resume", "auto"],
             "fewer epochs": ["--resume", str(run_dir), "--epochs", "1"]}[resume]
    err = one_line_exit_2(capsys, lambda: run_script(train_rmb.main, train_rmb.get_args_parser(), [
        "--data-dir", str(tiny_data), "--logdir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), *flags]))
    assert "is finished" in err and "--epochs N above 2" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_run_killed_in_its_final_phase_is_finished_by_resume_without_training(finished_run, tiny_data, tmp_path):
    _, run_dir = finished_run
    killed = tmp_path / run_dir.name
    killed.mkdir()
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):  # what a kill during the final phase leaves
        (killed / name).write_bytes((run_dir / name).read_bytes())
    resumed = train(tmp_path, tiny_data, *FLAGS, "--resume", str(killed))
    expected = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads((killed / "metrics.json").read_text())
    for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "best_epoch", "test_acc"):
        assert again[key] == pytest.approx(expected[key]), key
    assert again["per_class"] == expected["per_class"]
    assert resumed["epochs"] == 2 and (killed / "loss_curve.png").is_file()


def test_a_final_phase_whose_metrics_describe_an_earlier_epoch_is_finished_by_resume(finished_run, tiny_data,
                                                                                      tmp_path):
    """An extended run killed in its final phase: metrics.json still describes the epochs before the
    extension. Resume finishes it (never refuses it as finished) with the checkpoint's own epoch."""
    _, run_dir = finished_run
    killed = tmp_path / run_dir.name
    killed.mkdir()
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (killed / name).write_bytes((run_dir / name).read_bytes())
    stale = json.loads((run_dir / "metrics.json").read_text()) | {"epochs": 1}
    (killed / "metrics.json").write_text(json.dumps(stale))
    resumed = train(tmp_path, tiny_data, *FLAGS, "--resume", str(killed))
    assert resumed["epochs"] == 2 and json.loads((killed / "metrics.json").read_text())["epochs"] == 2


def test_an_earlier_checkpoint_of_a_finished_run_trains_in_a_new_folder(tiny_data, tmp_path, capsys):
    """--resume <finished run>/checkpoint_best.pt (an earlier epoch) with a new --lr: a new run folder that
    records where it came from; the finished run's files, events included, stay byte for byte."""
    run_dir = Path(train(tmp_path, tiny_data, *FLAGS, "--epochs", "1")["run_dir"])
    early = (run_dir / "checkpoint_last.pt").read_bytes()
    train(tmp_path, tiny_data, *FLAGS, "--epochs", "2", "--resume", str(run_dir))
    (run_dir / "checkpoint_best.pt").write_bytes(early)  # the best epoch was the first
    before = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    branched = train(tmp_path, tiny_data, *FLAGS, "--resume", str(run_dir / "checkpoint_best.pt"), "--lr", "0.005",
                     "--epochs", "2")
    assert "goes into a new run folder" in capsys.readouterr().out
    assert Path(branched["run_dir"]) != run_dir and branched["epochs"] == 2
    assert json.loads((Path(branched["run_dir"]) / "metrics.json").read_text())["resumed_from"] == \
        str(run_dir / "checkpoint_best.pt")
    after = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_a_read_only_metrics_json_is_replaced_not_a_traceback(finished_run, tiny_data, tmp_path):
    _, run_dir = finished_run
    killed = tmp_path / run_dir.name
    killed.mkdir()
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (killed / name).write_bytes((run_dir / name).read_bytes())
    (killed / "metrics.json").write_text("{}")
    (killed / "metrics.json").chmod(0o444)
    train(tmp_path, tiny_data, *FLAGS, "--resume", str(killed))
    assert json.loads((killed / "metrics.json").read_text())["epochs"] == 2


def test_a_signal_during_the_final_phase_waits_until_the_results_are_written(tiny_data, tmp_path, monkeypatch, capsys):
    original = train_rmb.report

    def report_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as if the job scheduler stopped the run right now
        return original(*args, **kwargs)

    monkeypatch.setattr(train_rmb, "report", report_then_sigterm)
    with pytest.raises(SystemExit) as exit_info:
        cli(tmp_path, "--data-dir", str(tiny_data), *FLAGS, "--epochs", "1")
    assert exit_info.value.code == 143
    assert "SIGTERM came during the final phase" in capsys.readouterr().err
    run_dir = next((tmp_path / "runs").glob("*_lenet"))
    assert json.loads((run_dir / "metrics.json").read_text())["test_acc"] is not None
    assert (run_dir / "gradcam.png").is_file() and (run_dir / "loss_curve.png").is_file()


# --- 2: look-alike run names -----------------------------------------------------------------------------

def test_resume_auto_matches_the_run_name_exactly(tmp_path):
    for name in ("20260101-000000_big_lenet", "20260101-000001_lenet2", "20260101-000002_exp[1]", "notarun_lenet"):
        (tmp_path / name).mkdir()
        save_checkpoint({"epoch": 1}, tmp_path / name / "checkpoint_last.pt")
    assert find_resume_checkpoint("auto", tmp_path, "lenet") is None
    assert find_resume_checkpoint("auto", tmp_path, "exp[1]") == tmp_path / "20260101-000002_exp[1]" / "checkpoint_last.pt"
    (tmp_path / "20260102-000000-1_lenet").mkdir()
    save_checkpoint({"epoch": 1}, tmp_path / "20260102-000000-1_lenet" / "checkpoint_last.pt")
    assert find_resume_checkpoint("auto", tmp_path, "lenet").parent.name == "20260102-000000-1_lenet"


# --- 3, 11, 12: folder layouts ---------------------------------------------------------------------------

@pytest.mark.parametrize("present", [("train", "test"), ("test",), ("valid", "test"), ("train",)])
def test_a_partial_split_folder_is_refused_not_taken_for_classes(tmp_path, present):
    for split in present:
        write_images(tmp_path / "d" / split / "1", 3)
        write_images(tmp_path / "d" / split / "100", 3, start=3)
    with pytest.raises(UserError, match="a split folder needs train/ and valid/"):
        find_splits(tmp_path / "d")


def test_a_validation_folder_is_a_valid_split(tmp_path):
    for split in ("train", "validation"):
        write_images(tmp_path / "d" / split / "1", 3)
        write_images(tmp_path / "d" / split / "100", 3, start=3)
    classes, splits, _ = find_splits(tmp_path / "d")
    assert classes == ["1", "100"] and len(splits["valid"]) == 6 and splits["test"] == []


def test_unreadable_folders_are_one_clear_error(tmp_path, monkeypatch):
    write_images(tmp_path / "d" / "1", 3)
    write_images(tmp_path / "d" / "100", 3, start=3)
    original = Path.iterdir

    def iterdir(self):
        if self.name in ("100", "locked"):
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(UserError, match=r"cannot read folder .*100 \(permission denied\)"):
        find_splits(tmp_path / "d")
    with pytest.raises(UserError, match="cannot read folder .*locked"):
        (tmp_path / "locked").mkdir()
        find_splits(tmp_path / "locked")


def test_hidden_files_and_folders_in_class_folders_are_skipped(tmp_path):
    write_images(tmp_path / "d" / "1", 3)
    write_images(tmp_path / "d" / "100", 3, start=3)
    write_images(tmp_path / "d" / "1" / ".thumbnails", 2, start=10)
    (tmp_path / "d" / "100" / "._000.jpg").write_bytes(b"macOS resource fork")
    _, splits, unsupported = find_splits(tmp_path / "d")
    paths = [p for split in splits.values() for p, _ in split]
    assert len(paths) == 6 and not any("/." in p for p in paths) and unsupported == []


def test_a_class_missing_from_valid_or_test_is_a_warning(tmp_path):
    write_images(tmp_path / "d" / "1", 12)
    write_images(tmp_path / "d" / "100", 1, start=20)  # one image: train only
    data = load_splits(tmp_path / "d")
    assert any("100 has no valid image" in w for w in data["warnings"])
    assert any("100 has no test image" in w for w in data["warnings"])


# --- 4: pictures of photos that vanished -----------------------------------------------------------------

def test_end_of_run_pictures_survive_photos_that_vanished(tiny_data, tmp_path):
    from model import LeNet
    from tools.training.report import report

    data = load_splits(tiny_data)  # then the photos are gone; their decoded images are in memory
    data["test"].samples = [(str(tmp_path / "gone.jpg"), label) for _, label in data["test"].samples]
    result = report(LeNet().eval(), data, "test", torch.device("cpu"), tmp_path)
    assert (tmp_path / "gradcam.png").is_file() and result["acc"] is not None
    assert len(result["warnings"]) == 1 and "could not be read again" in result["warnings"][0]


# --- 6: each step once, in TensorBoard's Python loaders too -------------------------------------------

def test_a_resumed_writer_purges_in_every_tensorboard_loader(tmp_path):
    from tensorboard.backend.event_processing import plugin_event_accumulator

    with open_writer(tmp_path) as writer:  # the killed run got to step 55; its checkpoint was at 50
        for step in range(1, 56):
            writer.add_scalar("loss/train", 1.0, step)
    with open_writer(tmp_path, purge_step=51) as writer:
        for step in range(51, 61):
            writer.add_scalar("loss/train", 2.0, step)
    assert [e.step for e in read_events(tmp_path).Scalars("loss/train")] == list(range(1, 61))
    loader = plugin_event_accumulator.EventAccumulator(str(tmp_path))  # tensorboard --load_fast=false
    loader.Reload()
    assert [e.step for e in loader.Tensors("loss/train")] == list(range(1, 61))


# --- 7: --workers resumes bit for bit ----------------------------------------------------------------------

def test_sigterm_and_resume_with_workers_is_bit_exact(tiny_data, tmp_path):
    flags = [*FLAGS, "--workers", "2", "--epochs", "20", "--seed", "3", "--data-dir", str(tiny_data),
             "--cache-dir", str(tmp_path / "cache")]
    reference = train(tmp_path / "reference", tiny_data, *flags)
    run_dir, _ = sigterm_mid_run(flags, tmp_path / "runs")
    train(tmp_path, tiny_data, *flags, "--resume", str(run_dir))
    expected = torch.load(Path(reference["run_dir"]) / "checkpoint_last.pt", weights_only=True)
    final = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    for key, tensor in expected["model"].items():
        assert torch.equal(tensor, final["model"][key]), key


# --- 8: unwritable cache, full disk -------------------------------------------------------------------

def test_an_unwritable_cache_dir(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = one_line_exit_2(capsys, lambda: cli(tmp_path, "--data-dir", str(tiny_data), "--cache-dir",
                                              str(blocker / "cache")))
    assert "--cache-dir" in err and "--cache-dir ''" in err
    args = train_rmb.get_args_parser().parse_args(["--data-dir", str(tiny_data), "--logdir", str(tmp_path / "runs"),
                                                   *FLAGS, "--epochs", "1", "--no-monitor"])
    args.cache_dir = blocker / "cache"  # the default folder, in a read-only checkout: a warning, no cache
    metrics = train_rmb.main(args)
    assert metrics["test_acc"] is not None and "going on without a disk cache" in capsys.readouterr().err


def test_a_full_disk_keeps_the_old_checkpoint_and_says_so(tmp_path, monkeypatch):
    from tools.training import checkpoint

    path = save_checkpoint({"epoch": 1}, tmp_path / "checkpoint_last.pt")

    def disk_full(obj, f):
        f.write(b"part of it")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError, match=r"No space left on device.*previous one is kept"):
        save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]


def test_a_full_disk_costs_only_the_image_cache(tmp_path, monkeypatch, recwarn):
    from tools.data import decode as decoding

    def disk_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file")

    monkeypatch.setattr(decoding.torch, "save", disk_full)
    write_images(tmp_path / "d" / "1", 3)
    images, bad = decoding.decode_all(sorted(str(p) for p in (tmp_path / "d" / "1").iterdir()),
                                         cache_dir=tmp_path / "cache")
    assert len(images) == 3 and bad == [] and list((tmp_path / "cache").iterdir()) == []
    assert "cannot write the image cache" in str(recwarn.pop(UserWarning).message)


# --- 9: the advice after a divergence can be followed ----------------------------------------------------

def test_after_a_divergence_the_advice_can_be_followed(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(tmp_path, "--data-dir", str(tiny_data), *FLAGS, "--lr", "0.5", "--epochs", "10", "--seed", "7")
    code, err, lr, metrics = exit_info.value.code, capsys.readouterr().err, 0.5, None
    for _ in range(3):  # each try: the printed command, as pasted into a shell (a tenth of the lr each time)
        assert code == 3 and "with a lower --lr" in err
        advice = shlex.split(err.strip().splitlines()[-1])
        assert advice[:2] == ["python", "train_rmb.py"] and float(advice[advice.index("--lr") + 1]) == lr / 10
        try:
            metrics = run_script(train_rmb.main, train_rmb.get_args_parser(), advice[2:])
        except SystemExit as again:
            code = again.code
        out, err = capsys.readouterr()
        if "--resume" in advice:  # the best checkpoint's --lr: the first run's, or a try's after a better epoch
            assert re.search(rf"resuming with --lr {lr / 10} as given \(the run had [0-9.e-]+; the optimizer's "
                             r"momentum starts afresh\)", out) and "bit for bit" in out
        lr /= 10
        if metrics:
            break
    final = torch.load(Path(metrics["run_dir"]) / "checkpoint_last.pt", weights_only=True)
    assert final["args"]["lr"] == lr and final["epoch"] == 10 and metrics["train_loss"] < 1
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr * 0.1)  # StepLR's one decay at 10
    err = one_line_exit_2(capsys, lambda: cli(tmp_path, "--data-dir", str(tiny_data), *FLAGS, "--epochs", "12",
                                              "--resume", "auto", "--step-size", "3"))
    assert "--step-size 3" in err and "keeps its --step-size 10" in err


@pytest.mark.parametrize("best_loss,advice", [(0.3, "resume from the best epoch"), (50.0, "start again"),
                                               (float("nan"), "start again"), (None, "start again")])
def test_after_a_divergence_the_advice_resumes_only_from_weights_worth_resuming(tmp_path, capsys, best_loss,
                                                                                   advice):
    """From the best checkpoint when its valid loss was below 10x chance (ln 2 x 10 = 6.9); afresh when its
    weights were thrown far off too, or when there is no best checkpoint (None)."""
    from types import SimpleNamespace

    from tools.training.run_folder import RunFolder

    args = train_rmb.get_args_parser().parse_args(["--lr", "0.5", "--epochs", "3"])
    if best_loss is not None:
        (tmp_path / "checkpoint_best.pt").write_bytes(b"")
    run = SimpleNamespace(dir=tmp_path, args=args, classes=["1", "100"], say=lambda *a, **k: print(*a, **k),
                          writer=SimpleNamespace(add_text=lambda *a: None))
    with pytest.raises(SystemExit):
        RunFolder.stop_diverged(run, 9, "non-finite gradient at step 9", {"loss": best_loss or 0.0, "epoch": 1})
    err = capsys.readouterr().err
    command = shlex.split(err.strip().splitlines()[-1])
    assert advice in err and command[:2] == ["python", "train_rmb.py"] and "--lr" in command
    assert float(command[command.index("--lr") + 1]) == 0.05
    assert ("--resume" in command) == (advice == "resume from the best epoch")


# --- 10: a resume command that can be pasted ---------------------------------------------------------------

def test_the_resume_command_survives_the_shell_and_knows_torchrun(tmp_path, monkeypatch):
    args = train_rmb.get_args_parser().parse_args(["--data-dir", "my photos (1)&copy;x", "--epochs", "5",
                                                   "--cache-dir", "", "--no-monitor"])
    run_dir = tmp_path / "runs" / "20260101-000000_it's"
    command = resume_command(args, run_dir)
    words = ["train_rmb.py", "--epochs", "5", "--no-monitor", "--data-dir", "my photos (1)&copy;x", "--cache-dir", "",
             "--resume", str(run_dir)]
    assert shlex.split(command) == ["python", *words]
    echoed = subprocess.run(["bash", "-c", "printf '%s\\n' " + command.removeprefix("python ")],
                            capture_output=True, text=True).stdout.splitlines()  # what bash passes on
    assert echoed == words
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command(args, run_dir).startswith("torchrun --standalone --nproc_per_node=2 train_rmb.py ")


# --- 13: one process per run folder; no debris --------------------------------------------------------

def test_a_run_folder_is_locked_while_a_process_trains_in_it(tmp_path):
    lock = RunLock(tmp_path)
    with pytest.raises(UserError, match=f"process {os.getpid()} is training in it"):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from pathlib import Path; from tools.training.run_dirs import RunLock; "
                               "lock = RunLock(Path(sys.argv[2])); print('locked', flush=True); time.sleep(60)",
                               str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"process {holder.pid} is training in it"):
        RunLock(tmp_path)
    holder.kill()
    holder.wait()
    RunLock(tmp_path).release()  # a lock left by a killed process does not block


def test_a_second_resume_of_a_training_run_is_refused(finished_run, tiny_data, tmp_path, capsys):
    _, run_dir = finished_run
    lock = RunLock(run_dir)
    try:
        err = one_line_exit_2(capsys, lambda: cli(tmp_path, "--data-dir", str(tiny_data), "--resume", str(run_dir),
                                                  "--epochs", "3"))
    finally:
        lock.release()
    assert f"process {os.getpid()}" in err


def test_the_next_save_removes_a_temporary_file_left_by_a_kill(tmp_path):
    (tmp_path / ".checkpoint_last.pt.k1ll3d.tmp").write_bytes(b"half")
    save_checkpoint({"epoch": 1}, tmp_path / "checkpoint_last.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]


# --- 14: Ctrl-C twice --------------------------------------------------------------------------------

def test_a_second_ctrl_c_is_one_line_no_traceback(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_script(interrupted, train_rmb.get_args_parser(), [])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 130 and err.count("\n") == 0 and "Traceback" not in err


# --- 15: every flag of every script -----------------------------------------------------------------------

def script_parsers():
    import init_demo
    import monitor_grads
    from tools import inspect_run, lr_schedules

    return {"train_rmb": train_rmb.get_args_parser(), "monitor_grads": monitor_grads.get_args_parser(),
            "init_demo": init_demo.get_args_parser(), "lr_schedules": lr_schedules.get_args_parser(),
            "inspect_run": inspect_run.get_args_parser()}


HOSTILE = [
    ("train_rmb", ["--seed", "-1"]), ("train_rmb", ["--seed", str(2**32)]), ("train_rmb", ["--seed", "1e3"]),
    ("train_rmb", ["--run-name", ""]), ("train_rmb", ["--run-name", "../escape"]), ("train_rmb", ["--run-name", ".."]),
    ("train_rmb", ["--run-name", "a/b"]), ("train_rmb", ["--lr", "nan"]), ("train_rmb", ["--lr", "inf"]),
    ("train_rmb", ["--epochs", "-2"]), ("train_rmb", ["--batch-size", "x"]), ("train_rmb", ["--log-interval", "0"]),
    ("train_rmb", ["--workers", "-1"]), ("train_rmb", ["--momentum", "-0.5"]), ("train_rmb", ["--step-size", "0"]),
    ("train_rmb", ["--gamma", "0"]), ("train_rmb", ["--scheduler", "bogus"]), ("train_rmb", ["--init", "zeros"]),
    ("train_rmb", ["--norm", "none"]),
    ("monitor_grads", ["--samples", "0"]), ("monitor_grads", ["--samples", "100000000"]),
    ("monitor_grads", ["--accumulate", "0"]), ("monitor_grads", ["--bins", "-1"]), ("monitor_grads", ["--lr", "0"]),
    ("monitor_grads", ["--scenario", "bogus"]), ("monitor_grads", ["--seed", "-5"]),
    ("init_demo", ["--layers", "0"]), ("init_demo", ["--width", "99999999"]), ("init_demo", ["--batch", "-1"]),
    ("init_demo", ["--mode", "bogus"]), ("lr_schedules", ["--epochs", "0"]),
    ("lr_schedules", ["--epochs", "1000000000"]), ("lr_schedules", ["--lr", "-1"]),
    ("inspect_run", []),
]


@pytest.mark.parametrize("script, flags", HOSTILE, ids=[f"{s} {' '.join(f)}" for s, f in HOSTILE])
def test_hostile_flag_values_are_one_line_and_exit_2(script, flags, capsys):
    parser = script_parsers()[script]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(flags)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("argv, match", [
    (["init_demo.py", "--width", "16384", "--layers", "10000"], "GiB"),
    (["-m", "tools.inspect_run", "no_such_run"], "does not exist"),
    (["-m", "tools.synthetic_rmb", "/dev/null/here"], "which is a file, not a folder"),
    (["-m", "tools.rmb_dataset", "no_such_folder"], "does not exist"),
    (["train_rmb.py", "--device", "cuda:x"], "--device"),
    (["train_rmb.py", "--resume", "no_such_checkpoint.pt"], "does not exist"),
])
def test_hostile_values_past_the_parser_are_one_line_and_exit_2(argv, match, tmp_path):
    result = subprocess.run([sys.executable, *argv, *(["--logdir", str(tmp_path)] if argv[0].endswith(".py") else [])],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=os.environ | {"PYTHONWARNINGS": "ignore"})
    err = result.stderr.strip()
    assert result.returncode == 2 and err.count("\n") == 0 and match in err and "Traceback" not in err, err


def test_the_default_set_in_a_read_only_checkout_is_one_clear_error(tmp_path):
    from tools.data.image_folder import default_data_dir

    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(UserError, match="cannot be generated into .*pass --data-dir"):
        default_data_dir(blocker)


def test_printed_commands_paste_into_bash_as_they_read(tiny_data, tmp_path, capsys):
    """A run with list flags stopped by SIGTERM: its resume command, pasted into bash, finishes it (every
    flag read back as given). A run named `x;touch PWNED`: its TensorBoard line, pasted, names the run
    folder and runs nothing else."""
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    flags = ["--data-dir", str(tiny_data), "--epochs", "3", "--batch-size", "4", "--cache-dir", "",
             "--class-weights", "1.0,2.0", "--freeze", "conv1"]
    _, err = sigterm_mid_run(flags, tmp_path / "logs")
    pasted = err.strip().splitlines()[-1].strip()
    assert "--class-weights 1.0,2.0" in pasted and "--freeze conv1" in pasted
    done = subprocess.run(["bash", "-c", pasted.replace("python ", f"{shlex.quote(sys.executable)} ", 1)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    capsys.readouterr()
    logdir = tmp_path / "runs; touch PWNED"  # a hostile folder of runs, and a hostile run name
    cli(tmp_path, "--data-dir", str(tiny_data), "--epochs", "1", "--cache-dir", "", "--logdir", str(logdir),
        "--run-name", "x;touch PWNED")  # its flags given after cli's own: the later --logdir and --cache-dir win
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("see them with: "))
    shown = subprocess.run(["bash", "-c", "tensorboard() { printf '%s\\n' \"$@\"; }; " + line.removeprefix("see them with: ")],
                           cwd=tmp_path, capture_output=True, text=True)
    assert shown.stdout.splitlines() == ["--logdir", str(logdir)] and not (tmp_path / "PWNED").exists()
    assert line.endswith(f"# this run: {next(logdir.iterdir()).name}")  # named, in a comment the shell ignores


def test_a_closed_terminal_saves_where_it_stopped_like_sigterm(tiny_data, tmp_path):
    """SIGHUP (the terminal closed, an ssh session dropped): the step finishes, the checkpoint is saved,
    exit 129, and the printed command resumes it."""
    flags = ["--data-dir", str(tiny_data), "--epochs", "8", "--batch-size", "4", "--cache-dir", ""]
    run_dir, err = sigterm_mid_run(flags, tmp_path / "logs", sig=signal.SIGHUP)
    assert "SIGHUP: saved" in err and "--resume" in err.strip().splitlines()[-1]
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["epoch"] >= 1


@pytest.mark.parametrize("both", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_a_reader_that_leaves_the_pipe_costs_no_run(tiny_data, tmp_path, both):
    """`python train_rmb.py | head -1` (or 2>&1 | head -1, a grep -m1, a less the user quits): the pipe
    closes after the first line; every later print fails, and the run goes on to the end: exit 0, its
    checkpoint, metrics.json and pictures written, no traceback anywhere."""
    logs = tmp_path / "logs"
    process = subprocess.Popen([sys.executable, "train_rmb.py", "--data-dir", str(tiny_data), "--epochs", "3",
                                "--cache-dir", "", "--logdir", str(logs)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT if both else subprocess.PIPE, text=True)
    assert process.stdout.readline()
    process.stdout.close()  # the reader leaves
    err = "" if both else process.stderr.read()
    assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    run_dir = next(logs.glob("*_lenet"))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["epoch"] == 3
    assert (run_dir / "gradcam.png").is_file()


def test_a_failed_write_drops_the_output_not_the_caller(tmp_path):
    """KeptStream itself: after one failed write it writes nothing more, raises nothing, and points the
    descriptor at /dev/null so that what a buffer still holds goes nowhere at exit."""
    from tools.cli.streams import KeptStream

    read_end, write_end = os.pipe()
    stream = KeptStream(os.fdopen(write_end, "w", buffering=1))
    assert stream.write("first\n") == 6 and os.read(read_end, 100) == b"first\n"
    os.close(read_end)
    assert stream.write("second\n") == 7 and stream.lost and not stream.isatty()
    stream.flush()
    assert os.path.samefile(f"/proc/self/fd/{write_end}", os.devnull) if os.path.exists("/proc/self/fd") else True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_no_decoder_outlives_a_signal_while_decoding(tmp_path, sig):
    """A signal during the first decode, before any step: the run says so in one line, exits with the
    shell's code for it, and its forked decoders end with it (each would otherwise go on decoding,
    orphaned)."""
    import time

    data = tmp_path / "photos"
    for c in ("1", "100"):
        write_images(data / c, 400, start=0 if c == "1" else 1000)
    process = subprocess.Popen([sys.executable, "train_rmb.py", "--data-dir", str(data), "--workers", "2",
                                "--cache-dir", "", "--logdir", str(tmp_path / "logs")], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    children = []
    while not children and time.time() < deadline:  # the decoder forked
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        time.sleep(0.01)
    assert children, "no decoder was forked"
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err, err  # one line, not silence
    time.sleep(0.2)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
             and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
    assert not alive


def test_a_run_folder_deleted_while_training_is_one_line(tiny_data, tmp_path):
    import shutil
    import time

    logs = tmp_path / "logs"
    process = subprocess.Popen([sys.executable, "train_rmb.py", "--data-dir", str(tiny_data), "--epochs", "5000",
                                "--batch-size", "2", "--cache-dir", "", "--logdir", str(logs)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(logs.glob("*/checkpoint_last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    run_dir = next(logs.iterdir())
    while run_dir.exists():  # the run may be writing into it meanwhile: until it is gone
        shutil.rmtree(run_dir, ignore_errors=True)
    _, err = process.communicate(timeout=60)
    # whichever write meets the missing folder first (TensorBoard's events, or the checkpoint): one line
    assert process.returncode == 2 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert run_dir.name in err and ("moved or deleted" in err or "No such file or directory" in err), err


def test_a_full_disk_when_the_writer_opens_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    import errno

    import tools.tb.writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tools.tb.writer, "open_writer", full)
    err = one_line_exit_2(capsys, lambda: cli(tmp_path, "--data-dir", str(tiny_data), *FLAGS, "--epochs", "1"))
    assert "No space left on device" in err and "TensorBoard" in err


def test_a_value_that_starts_with_a_dash_pastes_as_one(tmp_path):
    """A run named -x in a folder -runs: the resume command and the TensorBoard line write `--flag=value`,
    which argparse (and TensorBoard's flags) read as the value, not as another flag."""
    from tools.cli.arguments import tensorboard_command

    args = train_rmb.get_args_parser().parse_args(["--run-name=-x", "--epochs", "2"])
    args.explicit = {"run_name", "epochs"}
    words = shlex.split(resume_command(args, Path("-runs/20261207-000000_-x")))
    again = train_rmb.get_args_parser().parse_args(words[2:])
    assert again.run_name == "-x" and again.epochs == 2 and again.resume == "-runs/20261207-000000_-x"
    assert shlex.split(tensorboard_command("-runs")) == ["tensorboard", "--logdir=-runs"]


def test_a_really_full_disk_is_one_line_and_no_thread_traceback(tiny_data, tmp_path):
    """--logdir on a filesystem with no space left (a 16 KB tmpfs, filled): one line naming the folder, exit
    2; TensorBoard's writer thread, whose first write fails, prints no traceback after it. Needs a tmpfs
    mount (root on Linux); skipped where there is none."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("no tmpfs mount here")
    try:
        (small / "fill").write_bytes(b"\0" * 12 * 1024)
        results = [subprocess.run([sys.executable, "train_rmb.py", "--data-dir", str(tiny_data), "--epochs", "1",
                                   "--cache-dir", "", "--logdir", str(small / "runs")], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120) for _ in range(2)]  # the second finds it fuller
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    for result in results:
        assert result.returncode == 2, result.stderr
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
