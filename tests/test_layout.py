"""The shape of the house, kept: scripts short enough to read top to bottom; tools/ laid out by concern
(the commands a user runs at its top, the machinery in wings), every import going down the wings' order;
no module past about 400 lines; model/ free of file access."""
import ast

import pytest
from conftest import ROOT, project_files

SCRIPTS = ("train_rmb.py", "monitor_grads.py", "init_demo.py")
MAX_SCRIPT_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400  # past this a module is doing two jobs
MAX_MONITOR_LINES = 350
# tools/'s wings, lowest first: a module imports from its own wing or a lower one, never a higher one.
# The commands (python -m tools.<name>) stand above every wing, and never import one another.
WINGS = ("cli", "tb", "data", "monitor", "pictures", "training", "suites")
COMMANDS = len(WINGS)


def rank(module: str) -> int | None:
    """A tools module's place in the order: its wing's index, COMMANDS for a command; None outside tools."""
    parts = module.split(".")
    if parts[0] != "tools" or len(parts) < 2:
        return None
    return WINGS.index(parts[1]) if parts[1] in WINGS else COMMANDS


def module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


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
    for path in [*project_files("tools"), *project_files("model")]:
        assert not imported_modules(path) & scripts, path


def test_every_module_of_tools_is_a_command_or_in_a_wing():
    top = {p.stem for p in ROOT.glob("tools/*.py")} - {"__init__"}
    assert all("__main__" in (ROOT / "tools" / f"{name}.py").read_text() for name in top), top
    assert {p.name for p in (ROOT / "tools").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(WINGS)


def test_imports_only_go_down_the_wings():
    upward = []
    for path in project_files("tools"):
        me = rank(module_name(path))
        for imported in imported_modules(path):
            theirs = rank(imported)
            if theirs is not None and (theirs > me or (me == COMMANDS and theirs == COMMANDS)):
                upward.append(f"{module_name(path)} -> {imported}")
    assert not upward, upward


def test_the_wings_are_told_apart_by_this_test():
    # the check above would pass on a flat folder: make sure it sees a wing's import as one
    assert rank("tools.monitor.steps") == WINGS.index("monitor")
    assert rank("tools.monitor.steps") < rank("tools.training.engine") < rank("tools.loss_lab")
    assert rank("torch") is None and rank("tools") is None


def test_no_module_is_doing_two_jobs():
    sizes = {module_name(p): len(p.read_text().splitlines())
             for p in [*project_files("tools"), *project_files("model"), *(ROOT / s for s in SCRIPTS)]}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}
    assert sizes["tools.monitor.training_monitor"] <= MAX_MONITOR_LINES


def test_model_is_pure_modules():
    allowed = {"math", "torch", "torch.nn"}
    for path in project_files("model"):
        modules = imported_modules(path)
        assert all(m in allowed or m.startswith("model") for m in modules), (path, modules)
        assert "open(" not in path.read_text(), path


def test_train_one_epoch_takes_at_most_eight_parameters():
    (function,) = [f for f in functions(ROOT / "tools" / "training" / "engine.py") if f.name == "train_one_epoch"]
    assert len(function.args.args) + len(function.args.kwonlyargs) <= 8


@pytest.mark.parametrize("with_git", [True, False])
def test_the_walk_skips_what_is_not_the_projects(tmp_path, with_git):
    """A .venv made inside the clone holds folders named tools/ (triton's, for one) with long modules: the
    walks above never see them, in a git checkout (git ignores them) or in a plain copy of the tree."""
    import subprocess

    for path in ["tools/a.py", "tools/wing/b.py", ".venv/lib/site-packages/triton/tools/c.py",
                 "tools/.venv/d.py", "tools/build/e.py", "tools/x.egg-info/f.py", "venv/tools/g.py"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    if with_git:
        (tmp_path / ".gitignore").write_text(".venv/\nvenv/\nbuild/\n*.egg-info/\n")
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert [p.relative_to(tmp_path).as_posix() for p in project_files("tools", root=tmp_path)] == \
        ["tools/a.py", "tools/wing/b.py"]


def test_an_old_import_path_names_the_new_home():
    """Modules that moved into the wings: importing the old path fails with a line naming the new one,
    which exists; nothing is put back at the top of tools/."""
    import importlib

    import tools

    for old, new in tools.MOVED.items():
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), old
        importlib.import_module(new)
        with pytest.raises(ModuleNotFoundError, match=f"it moved to {new}"):
            importlib.import_module(old)
    assert {"tools.activations", "tools.engine", "tools.tb_logging"} <= set(tools.MOVED)
