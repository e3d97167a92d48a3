"""What every script shares on the command line: common flags, device choice, seeding, running main."""
import argparse
import gc
import os
import random
import re
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from tools.cli.errors import Stopped, UserError
from tools.cli.streams import kept_output

REPO_ROOT = Path(__file__).resolve().parents[2]


class Args(argparse.Namespace):
    """The parsed flags. `explicit`, kept outside vars(args) (so never saved or logged as a flag), names
    the flags given on the command line, as opposed to defaults: on resume, a flag you give wins."""
    __slots__ = ("explicit",)


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, once: not added where the help already says its default ('(default
    0.9', 'default: all', 'default data/...'), nor for a default of None (no value) or a switch's False. A
    default of 0 is shown (0 == False, so an `in (None, False)` test once hid --weight-decay's 0.0)."""

    SAYS_ITS_DEFAULT = re.compile(r"\(default\b|\bdefault:|\bdefault [^,)]")

    def _get_help_string(self, action):
        text = action.help or ""
        if self.SAYS_ITS_DEFAULT.search(text) or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in --help (once each), and errors as one line (no usage block), exit code 2."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=DefaultsOnceFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None) -> Args:
        parsed = super().parse_args(args, namespace or Args())
        for action in self._actions:  # `--flag=--` reaches argparse as an empty list, past the flag's type
            value = getattr(parsed, action.dest, None)
            if action.option_strings and action.nargs is None and isinstance(value, list) and not value:
                self.error(f"argument {action.option_strings[-1]}: expected a value, got --")
        defaults = {action: action.default for action in self._actions}
        try:  # parsed again without defaults: what is left was given
            for action in self._actions:
                action.default = argparse.SUPPRESS
            given = super().parse_args(args)
        finally:
            for action, default in defaults.items():
                action.default = default
        parsed.explicit = frozenset(vars(given))
        return parsed


FLOAT32_MAX = float(np.finfo(np.float32).max)  # a float flag becomes a float32 in torch: 3.4e38 at most
INT_MAX = 2**31 - 1                             # a count past this is a typo, never a plan


def number_at_least(kind, low, strict: bool = False, name: str = "number", high=None):
    """An argparse `type` that parses `kind` (int or float) and refuses values below `low` (or equal
    to it when `strict`), above `high` (default: float32's largest for a float, 2**31 - 1 for an int),
    NaN and infinity, and a positive float that float32 rounds to 0, with a one-line message: the one
    place every numeric flag's range is checked, before any work."""
    top = high if high is not None else INT_MAX if kind is int else FLOAT32_MAX

    def parse(text: str):
        value = kind(text)
        if not (value > low if strict else value >= low) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {'above' if strict else 'at least'} {low}, got {text}")
        if value > top:
            raise argparse.ArgumentTypeError(f"must be at most {top:g}, got {text}" if kind is float
                                             else f"must be at most {top}, got {text}")
        if kind is float and value > 0 and float(np.float32(value)) == 0:
            raise argparse.ArgumentTypeError(f"{text} is 0 in float32, which torch computes in: give at least 1e-38")
        return value
    parse.__name__ = name  # argparse names it in "invalid <name> value"
    return parse


def fraction(text: str) -> float:
    """An argparse type for a number in [0, 1)."""
    value = number_at_least(float, 0, name="fraction")(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def class_weights_flag(text: str) -> str | list[float]:
    """An argparse type for --class-weights: 'balanced', or positive numbers separated by commas."""
    if text == "balanced":
        return text
    try:
        return [positive_float(part) for part in text.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: use 'balanced' or numbers above 0 such as 1,2.5") from None


def prefixes(text: str) -> list[str]:
    """An argparse type for comma-separated name prefixes, e.g. conv or conv1,fc1."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give names such as conv or conv1,fc1")
    return parts


def seed_value(text: str) -> int:
    """An argparse type for --seed: an integer that numpy, torch and random all accept."""
    return number_at_least(int, 0, name="seed", high=2**32 - 1)(text)


def run_name(text: str) -> str:
    """An argparse type for --run-name: it becomes part of a folder's name, so no path in it."""
    if not text or text.startswith(".") or any(c in text for c in '/\\\0') or not text.isprintable() \
            or len(text) > 100:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be part of a folder's name: use up to 100 printable "
                                         "characters, no / or \\, not starting with a dot")
    return text


positive_int = number_at_least(int, 1, name="positive_int")


def int_between(low: int, high: int):
    """An argparse type for an integer in [low, high] (a bound that keeps memory and time sane)."""
    return number_at_least(int, low, name="int", high=high)



positive_float = number_at_least(float, 0, strict=True, name="positive_float")
non_negative_int = number_at_least(int, 0, name="non_negative_int")
non_negative_float = number_at_least(float, 0, name="non_negative_float")


def folder_path(text: str) -> Path:
    """An argparse type for a folder a script writes into: '' is refused (Path('') would be the current
    folder; write . for that)."""
    if not text:
        raise argparse.ArgumentTypeError("'' is no folder: give one (. for the current folder)")
    return Path(text)


def resume_flag(text: str) -> str:
    """An argparse type for --resume: a checkpoint, a run folder, or auto; '' is refused, not taken as none."""
    if not text:
        raise argparse.ArgumentTypeError("'' names nothing: give a checkpoint, a run folder or auto (or leave --resume out)")
    return text


def path_or_none(text: str) -> Path | None:
    """An argparse type for an optional folder: '' means none (Path('') would be the current folder)."""
    return Path(text) if text else None


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of every script that reads an image folder: --data-dir, --norm, --cache-dir, --strict."""
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="<dir>/<class>/<image>, or <dir>/{train,valid,test}/<class>/<image>; "
                             "default data/RMB_data, else a generated synthetic set")
    parser.add_argument("--norm", choices=("imagenet", "data"), default="imagenet",
                        help="Normalize with ImageNet's mean/std, or the train split's own")
    parser.add_argument("--cache-dir", type=path_or_none, default=REPO_ROOT / "data" / "cache",
                        help="decoded 32x32 images are kept here between runs; '' for none")
    parser.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    return parser


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """--device's value: auto, cpu, cuda or cuda:N, checked as the command line is read (whether CUDA is
    there is select_device's to say)."""
    if not DEVICE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return text


def add_common_args(parser: argparse.ArgumentParser, name: str | None, seed: int = 1,
                    device: bool = True) -> argparse.ArgumentParser:
    """The flags every script shares: --seed, --device (left out with `device` False: a lab that computes
    on the CPU only takes none, rather than one it would ignore), --logdir, --run-name (default `name`;
    None: the script names the run after its --model)."""
    parser.add_argument("--seed", type=seed_value, default=seed, help="seed of random, numpy and torch")
    if device:
        parser.add_argument("--device", type=device_name, default="auto",
                            help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--logdir", type=folder_path, default=REPO_ROOT / "runs",
                        help="run folders go into <logdir>/<YYYYmmdd-HHMMSS>_<run-name>/")
    parser.add_argument("--run-name", type=run_name, default=name,
                        help="suffix of the run folder's name" + ("" if name else " (default: the --model)"))
    return parser


def select_device(name: str) -> torch.device:
    """torch.device for --device; UserError for an unknown name or CUDA that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: unsupported device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """warnings as the terminal of a command-line tool shows them: 'warning: <message>'."""
    return f"warning: {message}\n"


def run_script(main, parser: argparse.ArgumentParser, argv=None):
    """Parse the command line and call main(args); a UserError becomes one line and exit code 2, a
    Ctrl-C before training starts, or a second one (the first one stops training cleanly), one line
    and exit code 130. Output that cannot be written (a closed pipe, a dead terminal) is dropped and the
    run goes on (tools.cli.streams).

    As a command (argv None, not a call from Python such as a test's), the objects alive after the
    imports, and after main, are frozen out of the garbage collector's sight (`gc.freeze`): they live
    as long as the process, yet each full collection walks them all. torch brings some 200,000 and
    torch._dynamo, which torch's optimizers import on their first use, 150,000 more. Without this,
    10 epochs of train_rmb.py on the 200 real photos took 3.7 s, 0.7 s of it in such walks (six during
    the run, one at the interpreter's exit); with it, 2.8 s. Garbage made during the run is collected
    as usual."""
    warnings.formatwarning = one_line_warning
    args = parser.parse_args(argv)
    command = argv is None
    if command:
        gc.freeze()
    previous = {sig: signal.signal(sig, stopped_by) for sig in STOP_SIGNALS} \
        if command and threading.current_thread() is threading.main_thread() else {}
    with kept_output():  # a closed stdout or stderr (| head -1, a dead terminal) drops output, not the run
        try:
            result = main(args)
        except Stopped as stop:  # outside training (which saves and says so itself): before it, or after
            print(f"\n{parser.prog}: stopped by {signal.Signals(stop.signum).name}; checkpoints are written "
                  "atomically, so the last one saved (if any) is complete", file=sys.stderr)
            sys.exit(128 + stop.signum)
        except UserError as err:
            if os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets the same error: say it once
                print(f"{parser.prog}: error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"\n{parser.prog}: interrupted at once; checkpoints are written atomically, so the last one "
                  "saved (if any) is complete", file=sys.stderr)
            sys.exit(130)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if command:
        gc.freeze()  # the process ends now: no last walk over what dies with it
    return result


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stopped_by(signum, _frame) -> None:
    raise Stopped(signum)


def flag_word(value) -> str:
    """A flag's value written back as its parser reads it: a list as comma-separated words
    (--freeze conv,fc1; --class-weights 1.0,2.0), None as '', anything else as str()."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def shell_command(*words) -> str:
    """Every command the project prints for a user to paste: each word quoted for a POSIX shell, so a
    run name like `x;touch PWNED` or a path with spaces is one word, never code."""
    return shlex.join(str(w) for w in words)


def tensorboard_command(logdir, run_dir=None) -> str:
    """The command that shows `logdir` in TensorBoard, ready to paste: the folder of runs (the README's
    `tensorboard --logdir runs`), where this run sits beside the others; `run_dir` named in a comment,
    which the shell ignores (a run name is printable, one line: it cannot end the comment)."""
    named = f"   # this run: {Path(run_dir).name}" if run_dir else ""
    logdir = str(logdir)
    return shell_command("tensorboard", *([f"--logdir={logdir}"] if logdir.startswith("-") else ["--logdir", logdir])) \
        + named
