"""The shape of the code that the five-steps issue asks for, kept: scripts short enough to read top to
bottom, no arrow from tools/ or model/ up into a script, model/ free of file access."""
import ast

import pytest
from conftest import ROOT

SCRIPTS = ("train_rmb.py", "monitor_grads.py", "init_demo.py")
MAX_SCRIPT_FUNCTION_LINES = 60


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def functions(path):
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_functions_are_short(script):
    long = {f.name: f.end_lineno - f.lineno + 1 for f in functions(ROOT / script)
            if f.end_lineno - f.lineno + 1 > MAX_SCRIPT_FUNCTION_LINES}
    assert not long, long


def test_nothing_in_tools_or_model_imports_a_script():
    scripts = {s.removesuffix(".py") for s in SCRIPTS}
    for path in [*ROOT.glob("tools/*.py"), *ROOT.glob("model/*.py")]:
        assert not imported_modules(path) & scripts, path


def test_model_is_pure_modules():
    allowed = {"math", "torch", "torch.nn"}
    for path in ROOT.glob("model/*.py"):
        modules = imported_modules(path)
        assert all(m in allowed or m.startswith("model") for m in modules), (path, modules)
        assert "open(" not in path.read_text(), path


def test_train_one_epoch_takes_at_most_eight_parameters():
    (function,) = [f for f in functions(ROOT / "tools" / "engine.py") if f.name == "train_one_epoch"]
    assert len(function.args.args) + len(function.args.kwonlyargs) <= 8
