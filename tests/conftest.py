"""Shared fixtures: tiny image folders built in tmp_path, and a helper that runs train_rmb.main in-process."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL_DATA = ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data"
requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real photos not at {REAL_DATA}")
# folders that are never the project's, wherever they sit: virtual environments, build outputs, caches
NOT_THE_PROJECTS = {".venv", "venv", "env", ".env", "build", "dist", "site-packages", "__pycache__", ".git",
                    ".tox", ".nox", ".eggs", "node_modules"}


def project_files(folder: str, pattern: str = "*.py", root: Path = ROOT) -> list[Path]:
    """The project's files matching `pattern` under root/folder, at any depth: what git tracks or would track
    (git ls-files, so anything .gitignore names is left out), or, outside a git checkout, a walk that skips
    NOT_THE_PROJECTS and hidden or *.egg-info folders. A .venv made inside the clone is never walked."""
    import fnmatch
    import subprocess

    base = root / folder
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", folder], cwd=root,
                            capture_output=True, text=True) if (root / ".git").exists() else None
    if listed is not None and listed.returncode == 0:
        files = [root / line for line in listed.stdout.splitlines()]
    else:
        files = [p for p in base.rglob("*") if not any(
            part in NOT_THE_PROJECTS or part.startswith(".") or part.endswith(".egg-info")
            for part in p.relative_to(base).parts[:-1])]
    return sorted(p for p in files if p.is_file() and fnmatch.fnmatch(p.name, pattern))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """<tmp>/tiny/{1,100}/*.jpg: 12 synthetic notes per class (split 10/1/1)."""
    from tools.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", per_class=12, seed=3)


def write_images(folder: Path, n: int, start: int = 0) -> None:
    """n random 60x40 JPEGs <folder>/<start>.jpg, ..., different for each start."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")


def train(tmp_path: Path, data_dir: Path, *flags: str) -> dict:
    """train_rmb.main on `data_dir`, with run folders and the image cache in tmp_path; returns its metrics."""
    import train_rmb

    argv = ["--data-dir", str(data_dir), "--logdir", str(tmp_path / "runs"), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu", *flags]
    return train_rmb.main(train_rmb.get_args_parser().parse_args(argv))


def sigterm_mid_run(flags: list[str], logdir: Path, after_epoch: int = 0, sig=None) -> tuple[Path, str]:
    """train_rmb.py with `flags` in a process of its own, sent SIGTERM (or `sig`) once its checkpoint
    holds more than `after_epoch` epochs; asserts it saved and exited with 128 + the signal's number.
    Returns (run folder, stderr)."""
    import signal
    import subprocess
    import time

    import torch

    process = subprocess.Popen([sys.executable, "train_rmb.py", *flags, "--logdir", str(logdir)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120

    def saved_epochs() -> int:
        checkpoints = list(Path(logdir).glob("*_lenet/checkpoint_last.pt"))
        return torch.load(checkpoints[0], weights_only=True)["epoch"] if checkpoints else -1

    while saved_epochs() < after_epoch:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    sig = sig or signal.SIGTERM
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, err
    return next(Path(logdir).glob("*_lenet")), err


def line(run_dir: Path, tag: str, name: str) -> list:
    """The scalar events of one line of a chart, where tools.tb.writer puts it: a split (train, valid) is
    the tag in the sub-run <run_dir>/<name>; any other line (a layer, a parameter group, test) is the tag
    <tag>/<name> of the run itself."""
    from tools.tb.writer import line_location

    sub, scalar = line_location(tag, name)
    return read_events(Path(run_dir) / sub).Scalars(scalar)


def read_events(run_dir: Path):
    """The run's event files, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc
