"""A fuzzer guards the promises (hypothesis): every flag of every script with extreme, malformed and hostile
values, and checkpoints and caches with bytes flipped or cut. The outcome is always exit 0, or one line
and exit 2 (3 for a divergence): never a traceback, and nothing outside the run's folders is changed.

Few examples by default, so CI stays fast; FUZZ_EXAMPLES=200 python -m pytest tests/test_fuzz.py for more.
"""
import argparse
import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import init_demo
import monitor_grads
import train_rmb
from tools import (
    basics_lab,
    inspect_run,
    loss_lab,
    lr_schedules,
    optim_lab,
    readme_pictures,
    rmb_dataset,
    split_lab,
    synthetic_rmb,
    tb_screenshots,
)
from tools.cli.arguments import DefaultsOnceFormatter, run_script

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ = settings(deadline=None, derandomize=not EXAMPLES, suppress_health_check=list(HealthCheck))

HOSTILE = ["", "0", "-1", "1e309", "-1e309", "nan", "inf", "-inf", "1e-50", "1e39", str(2**63), str(2**31),
           "9" * 40, "0x10", "1,2", "1,,2", "[1.0, 2.0]", "a;touch PWNED", "$(touch PWNED)", "../../etc",
           "/dev/null", "/dev/zero", "auto", "cpu", "cuda:7", "é", "\u202e", "x" * 300, " ", "-", "--", "True",
           "1", "2", "0.5", "1e-3", "100", "adam", "step", "data", "conv1", "balanced"]  # and values that run
PARSERS = {"train_rmb.py": train_rmb.get_args_parser, "monitor_grads.py": monitor_grads.get_args_parser,
           "init_demo.py": init_demo.get_args_parser, "tools.inspect_run": inspect_run.get_args_parser,
           "tools.loss_lab": loss_lab.get_args_parser, "tools.lr_schedules": lr_schedules.get_args_parser,
           "tools.synthetic_rmb": synthetic_rmb.get_args_parser, "tools.rmb_dataset": rmb_dataset.get_args_parser,
           "tools.tb_screenshots": tb_screenshots.get_args_parser,
           "tools.readme_pictures": readme_pictures.get_args_parser, "tools.optim_lab": optim_lab.get_args_parser,
           "tools.basics_lab": basics_lab.get_args_parser, "tools.split_lab": split_lab.get_args_parser}


def flags(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[-1] for a in parser._actions if a.option_strings and a.option_strings[-1] != "--help"]


def one_line_or_fine(call) -> int:
    """Run `call` (a script's run_script); its exit code (0 when it returns). Fails on a traceback or an
    error of more than one line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            call()
        return 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 2
        text = err.getvalue().strip()
        assert code in (0, 2, 3), (code, text)
        if code == 2:
            assert text and "Traceback" not in text and len(text.splitlines()) == 1, text
        return code


@pytest.mark.parametrize("script", list(PARSERS))
@settings(FUZZ, max_examples=EXAMPLES or 25)
@given(data=st.data())
def test_every_flag_parses_or_is_one_line(script, data):
    """Each flag with hostile values: parsed (a value its script can take), or one line and exit 2."""
    parser = PARSERS[script]()
    flag = data.draw(st.sampled_from(flags(parser)))
    value = data.draw(st.sampled_from(HOSTILE) | st.text(max_size=20) | st.integers().map(str)
                      | st.floats(allow_nan=True, allow_infinity=True).map(repr))
    err = io.StringIO()
    positional = [a.dest for a in parser._actions if not a.option_strings]
    words = ["somewhere"] * len(positional)  # a command's own positional arguments, when it has some
    if data.draw(st.booleans()) and positional:  # or the hostile value as one of them
        words[0] = value
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(words + ([flag, value] if not value.startswith("-") else [f"{flag}={value}"]))
    except SystemExit as stop:
        assert stop.code == 2 and "Traceback" not in err.getvalue() and err.getvalue().count("\n") <= 2, err.getvalue()


@settings(FUZZ, max_examples=EXAMPLES or 10)
@given(flag=st.sampled_from(flags(train_rmb.get_args_parser())), value=st.sampled_from(HOSTILE))
def test_train_rmb_runs_any_flag_to_an_answer_and_touches_nothing_else(flag, value, tiny_data, tmp_path_factory):
    """train_rmb.py for one epoch with one hostile flag value: exit 0, 2 or 3, one line when 2; nothing
    written outside its --logdir and --cache-dir (the current folder and the repository stay as they were)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    cwd = tmp / "cwd"
    cwd.mkdir()
    before = git_status()
    argv = ["--data-dir", str(tiny_data), "--epochs", "1", "--batch-size", "8", "--logdir", str(tmp / "runs"),
            "--cache-dir", str(tmp / "cache"), "--device", "cpu"]
    argv += [flag] if flag in ("--nesterov", "--no-monitor", "--strict") else [f"{flag}={value}"]
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        one_line_or_fine(lambda: run_script(train_rmb.main, train_rmb.get_args_parser(), argv))
    finally:
        os.chdir(previous)
    made = {p.name for p in cwd.iterdir()}  # only the folder a relative --logdir or --cache-dir names
    allowed = {Path(value).parts[0]} if flag in ("--logdir", "--cache-dir") and value.strip("/") else set()
    assert made <= allowed and git_status() == before, made
    assert not (ROOT / "PWNED").exists()


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def saved_run(tiny_data, tmp_path_factory) -> Path:
    from conftest import train

    tmp = tmp_path_factory.mktemp("saved")
    return Path(train(tmp, tiny_data, "--epochs", "1", "--batch-size", "8")["run_dir"])


@settings(FUZZ, max_examples=EXAMPLES or 6)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.floats(0, 1))
def test_a_damaged_checkpoint_is_one_line(flips, cut, saved_run, tiny_data, tmp_path_factory):
    """checkpoint_last.pt with bytes changed or cut off, resumed: it trains (the bytes were in weights),
    or stops with one line (damaged), or as a divergence (3); never a traceback."""
    tmp = tmp_path_factory.mktemp("damaged")
    data = bytearray((saved_run / "checkpoint_last.pt").read_bytes())
    for where, byte in flips:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[:int(cut * len(data))]
    bad = tmp / "run" / "checkpoint_last.pt"
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    argv = ["--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "8", "--logdir", str(tmp / "runs"),
            "--cache-dir", "", "--resume", str(bad.parent)]
    one_line_or_fine(lambda: run_script(train_rmb.main, train_rmb.get_args_parser(), argv))


@settings(FUZZ, max_examples=EXAMPLES or 4)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.floats(0, 1))
def test_a_damaged_cache_is_rebuilt(flips, cut, tiny_data, tmp_path_factory):
    """The decoded-image cache with bytes changed or cut: the run rebuilds it and trains, exit 0."""
    from tools.data.decode import decode_all
    from tools.data.image_folder import find_splits

    tmp = tmp_path_factory.mktemp("cache")
    _, splits, _ = find_splits(tiny_data)
    paths = [p for samples in splits.values() for p, _ in samples]
    decode_all(paths, cache_dir=tmp / "cache")
    (file,) = (tmp / "cache").iterdir()
    data = bytearray(file.read_bytes())
    for where, byte in flips:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[:int(cut * len(data))]
    file.write_bytes(bytes(data))
    argv = ["--data-dir", str(tiny_data), "--epochs", "1", "--batch-size", "8", "--logdir", str(tmp / "runs"),
            "--cache-dir", str(tmp / "cache")]
    assert one_line_or_fine(lambda: run_script(train_rmb.main, train_rmb.get_args_parser(), argv)) == 0
    images, _ = decode_all(paths, cache_dir=tmp / "cache")
    assert all(torch.equal(a, b) for a, b in zip(images, decode_all(paths)[0]))


def test_a_flag_given_dashes_as_its_value_is_one_line_and_list_flags_still_parse(capsys):
    """`--device=--` reaches argparse as an empty list, past the flag's type (found by this fuzzer)."""
    with pytest.raises(SystemExit) as stop:
        train_rmb.get_args_parser().parse_args(["--device=--"])
    assert stop.value.code == 2 and "expected a value" in capsys.readouterr().err
    args = train_rmb.get_args_parser().parse_args(["--freeze", "conv1", "--class-weights", "1,2"])
    assert args.freeze == ["conv1"] and args.class_weights == [1.0, 2.0]


@pytest.mark.parametrize("script", list(PARSERS))
def test_help_shows_each_default_once(script):
    """Every flag that has a default (0 and 0.0 included) says it in --help, once."""
    parser = PARSERS[script]()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            continue
        text = formatter._get_help_string(action) % {"default": action.default}
        says = DefaultsOnceFormatter.SAYS_ITS_DEFAULT.findall(text)
        assert len(says) >= 1 and text.count("(default: ") <= 1, (script, action.option_strings, text)
