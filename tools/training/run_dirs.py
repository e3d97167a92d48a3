"""Run folders on disk: their names (runs/<YYYYmmdd-HHMMSS>[-k]_<run-name>), the one a --resume names,
whether one finished, its lock while a process trains in it, files written whole or not at all, where
they may not be (inside the data folder), the exact command that resumes a run, and the flags that tell
a run from its neighbours (in the verdict's picture and TensorBoard's HParams tab).
"""
import fcntl
import json
import os
import re
import tempfile
import time
from pathlib import Path

from tools.cli.arguments import flag_word, shell_command
from tools.cli.errors import UserError
from tools.cli.output_folder import lies_within
from tools.training import distributed

RUN_FOLDER = re.compile(r"\d{8}-\d{6}(?:-\d+)?_(.+)")  # <YYYYmmdd-HHMMSS>[-k]_<run-name>


def check_writable(folder: Path, flag: str = "--logdir") -> Path:
    """Create `folder` if needed and prove a file can be written there; UserError naming `flag` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{flag} {folder} is not writable ({err.strerror}); choose another folder") from None
    return folder


def write_atomically(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file and a rename: a reader sees the old file or the new
    one, never half of it; a read-only old file is replaced too (the folder allows it). UserError when
    the folder does not."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({err.strerror or err}): free space or permissions in {path.parent}, "
                        "then resume the run to write it") from None


def finished_epochs(folder: Path) -> int | None:
    """The epochs a run folder's metrics.json describes (a run that finished them), or None: no
    metrics.json, or one that cannot be read."""
    try:
        epochs = json.loads((Path(folder) / "metrics.json").read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def new_run_dir(logdir: Path, run_name: str) -> Path:
    """A new, empty <logdir>/<YYYYmmdd-HHMMSS>_<run-name>/ folder."""
    check_writable(logdir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):  # two runs started in the same second get -1, -2, ...
        run_dir = logdir / (f"{stamp}_{run_name}" if attempt == 0 else f"{stamp}-{attempt}_{run_name}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new run folder in {logdir}")


def run_folders(logdir: Path, run_name: str) -> list[Path]:
    """The run folders of exactly `run_name` in `logdir`: <YYYYmmdd-HHMMSS>[-k]_<run_name> (so `lenet`
    is not `big_lenet`, and a name with [ ] * ? is matched as it is written)."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    return [p for p in logdir.iterdir()
            if p.is_dir() and (m := RUN_FOLDER.fullmatch(p.name)) and m.group(1) == run_name]


def find_resume_checkpoint(resume: str, logdir: Path, run_name: str) -> Path | None:
    """The checkpoint that --resume names: a file, a run folder, or 'auto' = the run folder of `run_name`
    in `logdir` whose checkpoint was saved last (None when there is none yet)."""
    if resume == "auto":
        saved = [p / "checkpoint_last.pt" for p in run_folders(logdir, run_name) if (p / "checkpoint_last.pt").is_file()]
        return max(saved, key=lambda p: p.stat().st_mtime, default=None)
    path = Path(resume)
    return path / "checkpoint_last.pt" if path.is_dir() else path


def command_line(args, script: str = "train_rmb.py", **changes) -> list[str]:
    """The flags given on the command line (args.explicit) with `changes` (dest -> value), as a
    command's words; --resume left out."""
    words = []
    given = {dest: value for dest, value in vars(args).items() if dest in getattr(args, "explicit", ())}
    for dest, value in (given | changes).items():
        if dest == "resume" or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        words += [flag] if value is True else flag_and_value(flag, flag_word(value))
    return [script, *words]


def flag_and_value(flag: str, value: str) -> list[str]:
    """The words of `flag value`; `flag=value` when the value starts with '-' (a run named -x), which
    argparse would read as another flag."""
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]


def resume_command(args, checkpoint: Path | None, **changes) -> str:
    """The command that continues a run from `checkpoint` (a run folder: its last checkpoint), quoted
    for a POSIX shell: the flags given, `changes` (dest -> value), and --resume (none when checkpoint is
    None: a fresh start); under torchrun, a torchrun command with as many processes."""
    if distributed.launched_by_torchrun():
        nodes = int(os.environ["WORLD_SIZE"]) // int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        launcher = ["torchrun", "--standalone"] if nodes == 1 else ["torchrun", f"--nnodes={nodes}"]
        launcher.append(f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])}")
        where = "" if nodes == 1 else "  (on every node, with your --node_rank and --rdzv flags)"
    else:
        launcher, where = ["python"], ""
    resume = flag_and_value("--resume", str(checkpoint)) if checkpoint is not None else []
    return shell_command(*launcher, *command_line(args, **changes), *resume) + where


class RunLock:
    """An exclusive lock on a run folder while a process trains in it (fcntl.flock on <run>/.lock, which
    holds the pid). The operating system releases it when the process ends, however it ends, so a lock
    left by a killed process never blocks."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"{run_dir} is in use: process {holder} is training in it; wait for it to end "
                            "(or stop it), or resume another run") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        self.file.close()  # closing the file releases the lock


def check_outside_data(args) -> None:
    """--logdir and --cache-dir outside --data-dir (UserError naming the flag): what a run writes inside
    the data folder would be read as a class of photos on the next run, and the data blamed for it."""
    data = getattr(args, "data_dir", None)
    for flag, folder in (("--logdir", args.logdir), ("--cache-dir", getattr(args, "cache_dir", None))):
        if data is not None and folder is not None and lies_within(folder, data):
            raise UserError(f"{flag} {folder} is inside the data folder {data}: what the run writes there would "
                            f"be read as a class of photos. Choose a {flag} outside it")


def distinguishing_flags(args) -> str:
    """The flags given on the command line, but those that name places (data, runs, cache, resume, device,
    run name): what tells a run from the runs beside it ('the default flags' when none)."""
    skip, keep, dropped = {"--data-dir", "--logdir", "--cache-dir", "--resume", "--run-name", "--device"}, [], False
    for word in command_line(args)[1:] if getattr(args, "explicit", ()) else []:
        if word.startswith("--"):
            dropped = word.split("=")[0] in skip
        if not dropped:
            keep.append(word)
    return " ".join(keep) or "the default flags"


def hparams_of(args, names) -> dict:
    """The flags TensorBoard's HParams tab compares runs by: those that tell runs apart, so that its table
    (which ticks the first five, alphabetically) shows them: the data folder (by its name), the model, the
    optimizer and lr, and every flag of `names` given on the command line; not the defaults every run shares."""
    given = getattr(args, "explicit", frozenset())
    chosen = ["data_dir", "model", "optimizer", "lr", *sorted(n for n in names if n in given)]
    values = vars(args) | {"data_dir": Path(args.data_dir).name if getattr(args, "data_dir", None) else None}
    return {name: values[name] for name in dict.fromkeys(chosen) if name in values}
