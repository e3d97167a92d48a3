"""A run's folder and everything that goes into it or comes out of the run for the user to see.

`RunFolder` creates runs/<YYYYmmdd-HHMMSS>_<run-name>/ or finds the run that --resume names (and goes on
with that run's flags), holds the TensorBoard writer (a null writer off rank 0), prints on rank 0
only, writes what each moment of the run shows (the start, each epoch, a stop) and at the end
metrics.json, loss_curve.png and where to look at them.
"""
import fcntl
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tools import distributed
from tools.checkpoint import RESUME_KEYS, load_checkpoint
from tools.cli import flag_word, shell_command, tensorboard_command
from tools.errors import UserError
from tools.interrupt import EXIT_CODES

EXIT_DIVERGED = 3
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
        words += [flag] if value is True else [flag, flag_word(value)]
    return [script, *words]


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
    resume = ["--resume", str(checkpoint)] if checkpoint is not None else []
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


class RunFolder:
    """The run's folder, writer and voice. Use it as a context manager: the writer is closed on exit.

        with RunFolder.open(args, dist, RESUMED_FLAGS, HPARAMS) as run:   # checks, finds a run to resume
            ...                                  # data, model, loss, optimizer
            run.start(model, example, data, device)  # the folder, the writer, what the run starts from
            ...  run.log_epoch(state, lr, verdict)   # each epoch: TensorBoard and one line
            return run.finish(state, test)           # metrics.json, loss curve, where to look
    """

    def __init__(self, args, dist: distributed.Distributed, resumed_flags=(), fixed_flags=None, hparams=()):
        self.args, self.dist, self.hparams = args, dist, hparams
        self.is_main, self.rank, self.world_size = dist.is_main, dist.rank, dist.world_size
        self.dir: Path | None = None
        self.checkpoint: dict | None = None  # the checkpoint --resume names, loaded: None for a new run
        self.writer = None
        self.classes: list[str] = []
        self._started = self._epoch_started = time.perf_counter()
        self._resumed_flags, self._fixed_flags = resumed_flags, fixed_flags or {}
        self._lock: RunLock | None = None
        self.overrides: dict = {}  # flags given on resume that differ from the run's: flag -> (the run's, yours)
        self.resumed_from: Path | None = None  # a finished run's earlier checkpoint, trained on in a new folder

    @classmethod
    def open(cls, args, dist: distributed.Distributed, resumed_flags=(), fixed_flags=None, hparams=()) -> "RunFolder":
        """Check, before any work, every folder the run will write and the run --resume names (on rank 0;
        its findings, or its one-line error, go to every rank), then adopt a resumed run's flags. Without
        --data-dir the default data folder is found here (and generated by rank 0 first)."""
        run = cls(args, dist, resumed_flags, fixed_flags, hparams)
        try:
            run._open()
        except BaseException:
            run.__exit__()  # an error before the run began: let go of the run folder's lock
            raise
        return run

    def _open(self) -> None:
        args, found, error = self.args, None, None
        if self.is_main:
            try:
                found = self._check_folders()
            except UserError as err:
                error = str(err)
        (self.checkpoint, self.dir), error = distributed.broadcast((found or (None, None), error))
        if error:
            raise UserError(error)
        if self.checkpoint:
            self.adopt_flags(self.checkpoint["args"])
        if args.data_dir is None:
            from tools.cli import REPO_ROOT
            from tools.rmb_dataset import default_data_dir

            with distributed.main_process_first():  # rank 0 generates the default set, the others then read it
                args.data_dir, note = default_data_dir(REPO_ROOT / "data")
            self.say(note)

    def _check_folders(self) -> tuple[dict, Path] | None:
        """--logdir and --cache-dir writable; with --resume, the checkpoint (loaded), its folder locked
        for this process, and a finished run refused. Returns (checkpoint, run folder) or None."""
        args = self.args
        check_writable(args.logdir)
        if args.cache_dir is not None:
            try:
                check_writable(args.cache_dir, "--cache-dir")
            except UserError as err:
                if "cache_dir" in getattr(args, "explicit", ()):
                    raise UserError(f"{err}, or pass --cache-dir '' for none") from None
                self.say(f"warning: {err}; going on without a disk cache (every photo is decoded)", file=sys.stderr)
                args.cache_dir = None
        path = find_resume_checkpoint(args.resume, args.logdir, args.run_name) if args.resume else None
        if args.resume and path is None:
            self.say(f"--resume auto: no run named {args.run_name} in {args.logdir} yet; starting a new one")
            return None
        if path is None:
            return None
        checkpoint = load_checkpoint(path, RESUME_KEYS)
        if "epochs" not in getattr(args, "explicit", ()):  # no --epochs: the run's own number
            args.epochs = checkpoint["args"].get("epochs", args.epochs)
        done = checkpoint["epoch"] >= args.epochs and not checkpoint["batches_in_epoch"]
        finished = finished_epochs(path.parent)  # the epochs its metrics.json describes, if any
        if done and finished == checkpoint["epoch"]:
            raise UserError(f"{path.parent} is finished: it trained {checkpoint['epoch']} epochs and its results "
                            f"are in metrics.json; to train it further, resume it with --epochs N above "
                            f"{checkpoint['epoch']}")
        if finished is not None and checkpoint["epoch"] < finished:
            # back to an earlier epoch of a finished run (its best checkpoint): never retrained in place
            self.resumed_from = path
            self.say(f"{path.parent} is finished ({finished} epochs, results in its metrics.json): training from "
                     f"{path.name} (epoch {checkpoint['epoch']}) goes into a new run folder, and leaves it as it is")
            return checkpoint, None
        self._lock = RunLock(path.parent)
        if done:
            self.say(f"{path.parent} trained its {checkpoint['epoch']} epochs but its results were not written"
                     + (f" (metrics.json describes epoch {finished})" if finished is not None else "")
                     + ": testing the best checkpoint and writing its pictures and metrics.json now")
        return checkpoint, path.parent

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def pictures_dir(self) -> Path | None:
        """Where the end-of-run pictures go: the run folder on rank 0; None on the others (they only
        evaluate their shard)."""
        return self.dir if self.is_main else None

    def say(self, *message, file=None) -> None:
        """print() on rank 0 (the other ranks stay quiet); nothing for a message of None."""
        if self.is_main and message and message[0] is not None:
            print(*message, file=file)

    def adopt_flags(self, saved: dict) -> None:
        """A resumed run goes on with the flags it was started with (the resumed flags), and says which
        differ. A flag given on the command line wins (a lower --lr after a divergence) and the run says
        that from there on it does not continue bit for bit; `overrides` keeps them (flag -> (the run's,
        yours)) for the checkpointer. The flags of `fixed_flags` cannot change on resume (UserError, with why)."""
        given = getattr(self.args, "explicit", frozenset())
        for flag in (f for f in self._resumed_flags if f in saved):
            now, value = getattr(self.args, flag), saved[flag]
            if flag == "data_dir" and now is None:  # no --data-dir: the run's own folder
                self.args.data_dir = Path(value) if value is not None else None
                continue
            option = f"--{flag.replace('_', '-')}"
            if str(now) == str(value):
                continue
            if flag not in given:
                self.say(f"resuming: using the run's {option} {value} (not {now})")
                setattr(self.args, flag, Path(value) if flag == "data_dir" else value)
            elif flag in self._fixed_flags:
                raise UserError(f"{option} {now}: a resumed run keeps its {option} {value} ({self._fixed_flags[flag]}); "
                                f"drop {option}, or start a new run")
            else:
                self.overrides[flag] = (value, now)
                fresh = "; the optimizer's momentum starts afresh" if flag == "lr" else ""
                self.say(f"resuming with {option} {now} as given (the run had {value}{fresh}): from here on it "
                         "does not continue as the run would have, bit for bit")

    def saved_args(self) -> dict:
        """The run's flags as a checkpoint keeps them (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}

    def say_finetune(self, loaded: list[str], left: list[str]) -> None:
        """--finetune: which weights came from the file, and which stayed at their init (a new head)."""
        self.say(f"--finetune {self.args.finetune}: loaded {len(loaded)} tensors"
                 + (f"; left at their init (no weight of that name and shape): {', '.join(left)}" if left else ""))

    def start(self, model: torch.nn.Module, example: torch.Tensor, data: dict, device: torch.device,
              held: str | None = None) -> None:
        """The run begins: its folder (new, or the resumed one) and writer; for a new run, TensorBoard's
        picture of where training starts (arguments, graph, the initial kernels and feature maps); and
        the lines that say what the run trains on. `example`: one input batch; `data`: `load_splits`;
        `held`: where the training images are held, and their size (`DeviceBatches.held()`)."""
        from tools.tb_logging import NullWriter, RunWriter, log_args
        from tools.visualize import log_pictures, snapshot

        self.classes = data["classes"]
        fresh_folder = not self.checkpoint or self.resumed_from is not None
        if self.is_main and fresh_folder:
            self.dir = new_run_dir(self.args.logdir, self.args.run_name)
            self._lock = RunLock(self.dir)
            best = self.resumed_from.parent / "checkpoint_best.pt" if self.resumed_from else None
            if best is not None and best.is_file():  # the run's best so far, until an epoch here beats it
                shutil.copy2(best, self.dir / "checkpoint_best.pt")
                self.say(f"a new run folder {self.dir}, from {self.resumed_from}")
        self.dir = distributed.broadcast(self.dir)
        # on resume, hide the events a killed run wrote after its checkpoint: each step is shown once
        purge_step = self.checkpoint["global_step"] + 1 if not fresh_folder else None
        try:
            self.writer = RunWriter(self.dir, purge_step) if self.is_main else NullWriter()
        except OSError as err:  # a full disk, a folder gone or read-only: before any epoch, nothing is lost
            raise UserError(f"cannot write TensorBoard's events into {self.dir} ({err.strerror or err}): free space "
                            "or fix the folder's permissions, then run the same command again") from None
        if self.is_main and fresh_folder:
            log_args(self.writer, vars(self.args) | {"classes": self.classes, "device": device,
                                                     "world_size": self.world_size})
            with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns it is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example)
            if self.args.norm == "data":
                self.writer.add_text("normalize", f"train split mean {data['mean']}, std {data['std']}", 0)
            log_pictures(self.writer, snapshot(model, example[0], data["mean"], data["std"]), 0)
        self._say_start(data, device, held)
        self._started = self._epoch_started = time.perf_counter()

    def _say_start(self, data: dict, device: torch.device, held: str | None = None) -> None:
        for warning in data["warnings"]:
            self.say(f"warning: {warning}", file=sys.stderr)
        if data["skipped"]:
            self.say(f"warning: skipped {len(data['skipped'])} unreadable or unsupported file(s): "
                     + ", ".join(data["skipped"][:10]) + (" ..." if len(data["skipped"]) > 10 else ""),
                     file=sys.stderr)
        if self.args.norm == "data":
            self.say(f"Normalize with the train split's mean {[round(m, 4) for m in data['mean']]} "
                     f"and std {[round(s, 4) for s in data['std']]}")
        test = len(data["test"]) if data["test"] else 0
        self.say(f"{len(data['train'])} train, {len(data['valid'])} valid, {test} test images of {self.classes}; "
                 f"device {device}" + (f" x {self.world_size} processes" if self.dist.enabled else "")
                 + (f"; {held}" if held else "") + f"; run {self.dir}")
        if self.checkpoint:
            self.say(f"resuming {self.dir} at epoch {self.checkpoint['epoch'] + 1}, "
                     f"step {self.checkpoint['global_step']}")

    def log_epoch(self, state, lrs: dict[str, float], verdict) -> None:
        """An epoch ended (`state.last` holds its figures): TensorBoard gets the valid loss and accuracy
        (and the averaged weights', with SWA), the learning rate of every parameter group ('lr', 'lr/head')
        and the valid confusion matrix, flushed to disk before the checkpoint that covers them; the
        terminal gets one line, and the verdict."""
        from tools.tb_logging import ACCURACY, LOSS, LR, PICTURES, write_lines
        from tools.visualize import render_confusion_matrix

        train, valid, step = state.last["train"], state.last["valid"], state.global_step
        averaged = state.last.get("valid_swa")
        swa = {"valid_swa": averaged} if averaged else {}
        write_lines(self.writer, step, {LOSS: {name: v["loss"] for name, v in ({"valid": valid} | swa).items()},
                                        ACCURACY: {name: v["acc"] for name, v in ({"valid": valid} | swa).items()},
                                        LR: {f"groups/{group}": lr for group, lr in lrs.items()}})
        if self.is_main:  # drawn small: TensorBoard's PNG encoding costs per pixel
            confusion = render_confusion_matrix(torch.tensor(valid["confusion"]), self.classes,
                                                f"valid, epoch {state.epoch}", cell=48)
            self.writer.add_image(f"{PICTURES}/confusion_valid", np.asarray(confusion), step, dataformats="HWC")
        self.writer.flush()
        now = time.perf_counter()
        self.say(f"epoch {state.epoch:>3}/{self.args.epochs}  train loss {train['loss']:.4f} acc {train['acc']:6.2%}  "
                 f"valid loss {valid['loss']:.4f} acc {valid['acc']:6.2%}"
                 + (f" (averaged {averaged['acc']:6.2%})" if averaged else "")
                 + f"  lr {next(iter(lrs.values())):.2g}  {now - self._epoch_started:.3f} s")
        if verdict:  # one line per finding, worst first; one that persists is shortened
            self.say("\n".join(f"    {'diagnosis:' if i == 0 else '':<11}{line}" for i, line in enumerate(verdict.lines())))
        self._epoch_started = now

    def stop_diverged(self, step: int, detail: str, best: dict) -> None:
        """Say where training diverged, what is kept, and the command that tries again with a tenth of the
        learning rate: from the best checkpoint (the last one's weights may already be too far off to
        recover), or afresh when there is none or when even the best epoch's valid loss (`best`:
        TrainState.best) was DIVERGED_LOSS_FACTOR times the chance level (its weights were thrown far
        off too, and no lower rate brings them back); exit with EXIT_DIVERGED."""
        from tools.epoch_figures import DIVERGED_LOSS_FACTOR

        last, best_file = self.dir / "checkpoint_last.pt", self.dir / "checkpoint_best.pt"
        kept = f"the last checkpoint before it, {last}, is kept" if last.exists() else "no checkpoint was saved yet"
        lower = self.args.lr / 10
        if not best_file.exists():
            again = f"start again with a lower --lr:\n  {resume_command(self.args, None, lr=lower)}"
        elif best["loss"] < DIVERGED_LOSS_FACTOR * math.log(len(self.classes)):
            again = f"resume from the best epoch with a lower --lr:\n  {resume_command(self.args, best_file, lr=lower)}"
        else:
            again = (f"start again with a lower --lr (the best epoch, {best['epoch']}, already had a valid loss of "
                     f"{best['loss']:.3g}: its weights were thrown too far to resume from):\n  "
                     f"{resume_command(self.args, None, lr=lower)}")
        self.say(f"stopped: {detail}. Nothing from this point on is saved; {kept}. To try again, {again}",
                 file=sys.stderr)
        self.writer.add_text("diagnosis", f"diverged: {detail}", step)
        raise SystemExit(EXIT_DIVERGED)

    def stop_signalled(self, stop, state) -> None:
        """After a signal (on this rank or another) the checkpoint is saved: say how to resume, wait until
        every rank is here (none leaves before the checkpoint is on disk), exit with 130 or 143."""
        self.say(f"\n{stop.name or 'signal'}: saved {self.dir / 'checkpoint_last.pt'} at epoch {state.epoch + 1}, "
                 f"step {state.global_step}. Resume with:\n  {resume_command(self.args, self.dir)}", file=sys.stderr)
        distributed.barrier()
        raise SystemExit(stop.exit_code if stop.requested else EXIT_CODES[signal.SIGTERM])

    def finish(self, state, report: dict | None, averaged: dict | None = None, stop=None) -> dict:
        """The run is done: its hparams, metrics.json and loss_curve.png, and where to see them. Returns
        the metrics (the final epoch's, the best epoch's, the test split's) and 'run_dir'. `report`: the
        best checkpoint's (no test figures when it was made on another split); `averaged`: the SWA
        model's, with --swa-start. `stop`: a signal that came during this final phase was held until it
        was done; then the run exits with its code."""
        from tools.plots import plot_loss_curve
        from tools.tb_logging import ACCURACY, LOSS, log_hparams, write_lines
        from tools.visualize import precision_recall

        test = report if report and report["split"] == "test" else None
        last = state.last or {"train": {}, "valid": {}}
        metrics = {"train_loss": last["train"].get("loss"), "train_acc": last["train"].get("acc"),
                   "valid_loss": last["valid"].get("loss"), "valid_acc": last["valid"].get("acc"),
                   "best_valid_acc": state.best["acc"], "test_acc": test["acc"] if test else None,
                   "best_epoch": state.best["epoch"], "epochs": self.args.epochs, "verdict": last.get("verdict"),
                   "seconds": round(time.perf_counter() - self._started, 3),
                   "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                   "per_class": {"valid": precision_recall(torch.tensor(last["valid"]["confusion"]), self.classes)
                                 if "confusion" in last["valid"] else None,
                                 "test": test["per_class"] if test else None}}
        if averaged is not None:
            metrics |= {"valid_acc_swa": last.get("valid_swa", {}).get("acc"),
                        "test_acc_swa": averaged["acc"] if averaged["split"] == "test" else None}
        tested = {"test": test["acc"]} if test else {}
        if averaged is not None and test:
            tested["test_swa"] = averaged["acc"]
        write_lines(self.writer, state.global_step, {ACCURACY: tested})  # a point at the end of the accuracy chart
        if self.is_main:
            compared = [("valid", ACCURACY), ("valid", LOSS), ("train", LOSS)] + [(name, ACCURACY) for name in tested]
            log_hparams(self.writer, {k: v for k, v in vars(self.args).items() if k in self.hparams},
                        dict.fromkeys(compared))
            self.writer.close()
            write_atomically(self.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            plot_loss_curve(state.history, self.dir / "loss_curve.png")
        for warning in (report or {}).get("warnings", []):
            self.say(f"warning: {warning}", file=sys.stderr)
        if test:
            self.say(f"test accuracy {test['acc']:.2%} (best epoch {state.best['epoch']}, valid {state.best['acc']:.2%})"
                     + (f"; averaged weights (SWA) {metrics['test_acc_swa']:.2%}" if averaged else ""))
        self.say(f"results in {self.dir}\nsee them with: {tensorboard_command(self.dir)}")
        if stop is not None and stop.requested:
            self.say(f"{stop.name} came during the final phase: it was finished first, everything is saved",
                     file=sys.stderr)
            raise SystemExit(stop.exit_code)
        return metrics | {"run_dir": str(self.dir)}
