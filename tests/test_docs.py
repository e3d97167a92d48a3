"""The docs cannot go stale: every output the README, README.zh-CN.md and docs/ quote from a deterministic
command is that command's output now, the test count is the suite's, every link leads to a file, and
every finding the verdict can give is explained in English and in Chinese.

A quoted output is a block marked with the command that prints it:

    <!-- printed by: python init_demo.py -->
    ```text
    ...the lines, in the order printed; … stands for any text (a time)...
    ```

A block whose numbers come from float32 kernels that differ by CPU says so in its marker,
`<!-- printed by: CMD; the last digit may differ on another CPU -->`: there each number may differ from the
quoted one by one unit of its last printed digit, and nothing else may differ. Every quoted command is also
run under torch's other kernel levels (ATEN_CPU_CAPABILITY=default and avx2), the cheap way to meet
another machine's rounding.
"""
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").glob("*.md"))]
LOOSE = "; the last digit may differ on another CPU"
BLOCK = re.compile(r"<!-- printed by: (?P<command>[^>;]+?)(?P<loose>" + re.escape(LOOSE) + r")? -->\n"
                   r"(?P<indent>[ \t]*)```text\n(?P<body>.*?)\n(?P=indent)```", re.S)
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
# what each page quotes; a block lost in an edit (or a marker the pattern stops reading) fails here
QUOTED = {"python init_demo.py", "python -m tools.loss_lab", "python monitor_grads.py",
          "python monitor_grads.py --scenario no-zero-grad", "python train_rmb.py", "python -m tools.basics_lab",
          "python -m tools.split_lab", "python -m tools.optim_lab", "python -m tools.lr_schedules"}
NO_LOGDIR = {"basics_lab", "split_lab"}  # the commands that write no run folder


def quoted_blocks() -> dict[str, list[tuple[str, list[str], bool]]]:
    """command -> [(the page, the quoted lines, whether the last digit may differ)], from every page."""
    blocks = {}
    for page in DOCS:
        for match in BLOCK.finditer(page.read_text()):
            lines = [line.removeprefix(match["indent"]).rstrip() for line in match["body"].splitlines()]
            blocks.setdefault(match["command"], []).append((page.relative_to(ROOT).as_posix(), lines,
                                                            bool(match["loose"])))
    return blocks


BLOCKS = quoted_blocks()


def run_command(command: str, tmp_path: Path, capsys) -> list[str]:
    """What `command` prints, run in this process as a user runs it (main of its parser's arguments), its
    run folder in tmp_path. A command that reads photos, given no --data-dir, reads the generated set: here
    it is drawn into tmp_path (the same images, whatever the checkout's data/ holds)."""
    argv = shlex.split(command)
    assert argv[0] == "python", command
    module = importlib.import_module(argv[2] if argv[1] == "-m" else Path(argv[1]).stem)
    rest = argv[3:] if argv[1] == "-m" else argv[2:]
    name = module.__name__.rsplit(".", 1)[-1]
    if name in ("train_rmb", "split_lab") and "--data-dir" not in rest:
        from tools.data.synthetic import generate

        rest += ["--data-dir", str(generate(tmp_path / "RMB_synthetic"))]
        rest += ["--cache-dir", ""] if name == "train_rmb" else []
    capsys.readouterr()
    logdir = [] if name in NO_LOGDIR else ["--logdir", str(tmp_path / "runs")]
    module.main(module.get_args_parser().parse_args([*rest, *logdir]))
    return [line.rstrip() for line in capsys.readouterr().out.splitlines()]


def last_digit(number: str) -> float:
    """One unit of a printed number's last digit: '0.6442' -> 1e-4, '1.148e+12' -> 1e9, '4107' -> 1."""
    mantissa, _, exponent = number.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def line_matches(quoted: str, printed: str, loose: bool) -> bool:
    """`printed` is the quoted line (… matches any text); with `loose`, each measured number may differ from
    the quoted one by one unit of its last digit (0.6442 matches 0.6443, not 0.6444 nor 0.644), while a
    count (an integer of up to 3 digits: an epoch, a layer) stays exact."""
    parts = [NUMBER.split(part) if loose else [part] for part in quoted.split("…")]
    pattern = ".*".join(f"({NUMBER.pattern})".join(re.escape(text) for text in texts) for texts in parts)
    match = re.compile(pattern + r"\Z").match(printed)
    if not match or not loose:
        return bool(match)
    numbers = [n for part in quoted.split("…") for n in NUMBER.findall(part)]
    return all(got == want if is_count(want) else
               abs(float(got) - float(want)) <= last_digit(want) * 1.0001 and last_digit(got) == last_digit(want)
               for got, want in zip(match.groups(), numbers))


def is_count(number: str) -> bool:
    """An integer of up to 3 digits (an epoch, a layer, a step): exact even where the last digit may differ."""
    return re.fullmatch(r"[-+]?\d{1,3}", number) is not None


def missing_lines(quoted: list[str], printed: list[str], loose: bool = False) -> list[str]:
    """The quoted lines not found in `printed` in the same order (… matches any text; `loose`: see
    line_matches)."""
    missing, at = [], 0
    for line in quoted:
        found = next((i for i in range(at, len(printed)) if line_matches(line, printed[i], loose)), None)
        if found is None:
            missing.append(line)
        else:
            at = found + 1
    return missing


def test_every_quoted_command_has_its_block():
    assert set(BLOCKS) == QUOTED, "a page quotes a command this test does not know, or lost a block"


@pytest.mark.parametrize("command", sorted(QUOTED))
def test_quoted_output_is_what_the_command_prints_now(command, tmp_path, capsys):
    printed = run_command(command, tmp_path, capsys)
    for page, quoted, loose in BLOCKS.get(command, []):
        assert not missing_lines(quoted, printed, loose), (page, missing_lines(quoted, printed, loose), printed)


@pytest.mark.parametrize("level", ["default", "avx2"])
def test_quoted_outputs_hold_under_another_kernel_level(level):
    """Every quoted command again, under torch's portable kernels and its AVX2 ones (this machine's own
    level is the test above): the rounding of another CPU, met here. Runs the test above in a process
    of its own with ATEN_CPU_CAPABILITY set, on an x86 CPU that has the level."""
    import os
    import subprocess
    import sys

    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"ATEN_CPU_CAPABILITY={level} needs an x86 CPU with AVX2")
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == level:
        pytest.skip(f"this process already runs under {level}")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-k", "test_quoted_output_is_what_the_command_prints_now"], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "ATEN_CPU_CAPABILITY": level})
    assert done.returncode == 0, done.stdout[-4000:]


def test_the_matcher_needs_the_lines_in_order_and_exact():
    printed = ["epoch 1 acc 60%  0.5 s", "epoch 2 acc 70%  0.4 s"]
    assert missing_lines(["epoch 1 acc 60%  … s", "epoch 2 acc 70%  … s"], printed) == []
    assert missing_lines(["epoch 2 acc 70%  … s", "epoch 1 acc 60%  … s"], printed) == ["epoch 1 acc 60%  … s"]
    assert missing_lines(["epoch 1 acc 61%  … s"], printed) == ["epoch 1 acc 61%  … s"]
    assert missing_lines(["epoch 1 acc 60%"], printed) == ["epoch 1 acc 60%"]  # a line is quoted whole
    # the last digit may differ by one unit, only where the block says so; nothing else may
    printed = ["epoch 1 loss 0.6442  0.5 s", "epoch 2 loss 0.5121  0.4 s"]
    assert missing_lines(["epoch 1 loss 0.6443  … s"], printed, loose=True) == []
    assert missing_lines(["epoch 1 loss 0.6444  … s"], printed, loose=True) == ["epoch 1 loss 0.6444  … s"]
    assert missing_lines(["epoch 2 loss 0.5121  … s"], ["epoch 2 loss 0.51215  0.4 s"], loose=True) != []
    assert missing_lines(["epoch 3 loss 0.5121  … s"], printed, loose=True) != []  # a count is exact
    assert missing_lines(["step 2 loss 0.5121  … s"], printed, loose=True) != []
    assert [line_matches("std 0.6442 ratio 1.148e+12", f"std {a} ratio {b}", True) for a, b in
            [("0.6443", "1.149e+12"), ("0.6444", "1.148e+12"), ("0.6442", "1.150e+12"), ("0.644", "1.148e+12")]] \
        == [True, False, False, False]


def test_the_readme_gives_the_suites_test_count(request):
    """README: 'N tests'. Checked when the whole suite runs (python -m pytest), where the count is known."""
    collected = {Path(str(item.path)).name for item in request.session.items}
    if collected != {p.name for p in (ROOT / "tests").glob("test_*.py")}:
        pytest.skip("only part of the suite was collected")
    (count,) = re.findall(r"(\d+) tests", (ROOT / "README.md").read_text())
    assert int(count) == len(request.session.items)


def test_every_link_leads_to_a_file():
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def finding_names() -> set[str]:
    """Every name a Finding can have: the first argument of each Finding(...) in tools/monitor/."""
    names = set()
    for path in (ROOT / "tools" / "monitor").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("page", ["README.zh-CN.md", "docs/monitor.md"])
def test_every_finding_is_explained(page):
    names = finding_names()
    assert {"healthy", "lr-too-high", "data-leak", "dead-units"} <= names  # the walk above finds them
    text = (ROOT / page).read_text()
    assert {name for name in names if name not in text} == set()


def test_the_readme_is_read_in_five_minutes():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "README.zh-CN.md" in readme.split("\n## ")[0]  # the Chinese quick start linked at the top


def test_the_docs_table_of_scenarios_is_the_suite_as_defined():
    """docs/monitor.md's LeNet table: a row per scenario with its story, the finding named first and the epoch
    its evidence appears (tests/test_verdict.py asserts each run meets it), and the totals."""
    from tools.suites.scenarios import SCENARIOS

    text = (ROOT / "docs" / "monitor.md").read_text()
    for s in SCENARIOS:
        when = ("no problem in any epoch | " if s.expected == "healthy"
                else f"epoch {s.evidence_epoch} | epoch {s.evidence_epoch} ")
        assert f"| {s.name} | {s.story} | {s.expected} | {when}|" in text, s.name
    broken = sum(s.expected != "healthy" for s in SCENARIOS)
    healthy = len(SCENARIOS) - broken + text.count(", real photos | ")
    assert (f"detection recall {broken}/{broken}; root-cause accuracy (named first, in the epoch its evidence "
            f"appears) {broken}/{broken}; false alarms 0/{healthy} healthy runs") in text
