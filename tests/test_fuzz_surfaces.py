"""The fuzzer on this round's surfaces (hypothesis): the labs' flags run end to end, an output folder's
manifest with any content, every image mode through both data pipelines, and the monitor's API on odd
models and odd figures. The promise is the same as tests/test_fuzz.py's: exit 0, or one line and exit 2,
never a traceback; nothing the user has is lost; an API mistake is a TypeError or ValueError that says
what to pass, raised where the user's code calls.

Few examples by default; FUZZ_EXAMPLES=200 python -m pytest tests/test_fuzz_surfaces.py for more.
"""
import math
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, write_images
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_fuzz import EXAMPLES, FUZZ, HOSTILE, flags, git_status, one_line_or_fine
from torch import nn

from tools import basics_lab, loss_lab, lr_schedules, optim_lab, rmb_dataset, split_lab
from tools.cli.arguments import run_script
from tools.cli.output_folder import MANIFEST

LABS = {"loss_lab": loss_lab, "optim_lab": optim_lab, "lr_schedules": lr_schedules, "basics_lab": basics_lab,
        "split_lab": split_lab}


@pytest.mark.parametrize("lab", list(LABS))
@settings(FUZZ, max_examples=EXAMPLES or 6)
@given(data=st.data())
def test_a_lab_runs_any_flag_to_an_answer_and_writes_only_its_run_folder(lab, data, tmp_path_factory, tiny_data):
    """A lab with one hostile flag value runs end to end: exit 0 or one line and exit 2; nothing written
    outside its --logdir (the repository stays as it was)."""
    module = LABS[lab]
    parser = module.get_args_parser()
    flag = data.draw(st.sampled_from([f for f in flags(parser) if f not in ("--logdir",)]), label="flag")
    value = data.draw(st.sampled_from(HOSTILE), label="value")
    tmp = tmp_path_factory.mktemp("lab")
    argv = [f"{flag}={value}"]
    if any(a.option_strings == ["--logdir"] for a in parser._actions):
        argv += ["--logdir", str(tmp / "runs")]
    if lab == "split_lab" and flag != "--data-dir":
        argv += ["--data-dir", str(tiny_data)]
    before = git_status()
    one_line_or_fine(lambda: run_script(module.main, module.get_args_parser(), argv))
    assert git_status() == before and not (ROOT / "PWNED").exists()


LINES = st.sampled_from(["mine.txt", "notes/diary.txt", "../outside.txt", "/etc/hostname", "train", ".", "",
                         "train/1/000.jpg", "x" * 300, "\u202e", "../", "valid.txt", "..\\outside.txt"])


@settings(FUZZ, max_examples=EXAMPLES or 8)
@given(lines=st.lists(LINES, max_size=8), raw=st.binary(max_size=64), as_link=st.booleans(),
       mode=st.sampled_from([0o600, 0o644, 0o666]))
def test_a_manifest_with_any_content_loses_nothing(lines, raw, as_link, mode, tmp_path_factory):
    """--out holding a user's files and a manifest with any lines, bytes, mode, or a link in its place:
    rmb_dataset refuses in one line or writes its split; a file outside --out and the file a link points
    to keep every byte, nothing lands outside --out, and a user's file in --out is kept unless a manifest
    of this user's own (0600 or 0644, no link) names it."""
    tmp = tmp_path_factory.mktemp("manifest")
    data = tmp / "raw"
    for c in ("1", "100"):
        write_images(data / c, 5, start=0 if c == "1" else 10)
    out = tmp / "out"
    (out / "notes").mkdir(parents=True)
    (out / "mine.txt").write_text("mine")
    (out / "notes" / "diary.txt").write_text("dear diary")
    (tmp / "outside.txt").write_text("outside")
    text = "\n".join(lines).encode() + b"\n" + raw
    if as_link:
        (tmp / "target.txt").write_bytes(text)
        (out / MANIFEST).symlink_to(tmp / "target.txt")
    else:
        (out / MANIFEST).write_bytes(text)
        os.chmod(out / MANIFEST, mode)
    before = {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()
              and out not in p.parents}
    code = one_line_or_fine(lambda: run_script(rmb_dataset.main, rmb_dataset.get_args_parser(),
                                               [str(data), "--out", str(out)]))
    assert {p: p.read_bytes() for p in before} == before  # outside --out, the link's target included
    listed = {line for line in text.decode(errors="replace").splitlines()}
    trusted = not as_link and not mode & 0o022  # this user's own file, which no one else may write
    if not (trusted and {"mine.txt", "notes/diary.txt"} <= listed):  # else the user's own word: they were its
        assert (out / "mine.txt").read_text() == "mine" and (out / "notes" / "diary.txt").read_text() == "dear diary"
        assert code == 2  # the user's files are there, and nothing else makes them this command's
    assert sorted(p.name for p in tmp.iterdir()) == sorted(["raw", "out", "outside.txt"] +
                                                           (["target.txt"] if as_link else []))


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "PA"]


@settings(FUZZ, max_examples=EXAMPLES or 20)
@given(mode=st.sampled_from(MODES), seed=st.integers(0, 2**16), size=st.tuples(st.integers(1, 90), st.integers(1, 90)))
def test_every_image_mode_is_the_same_pixels_in_both_pipelines(mode, seed, size, tmp_path_factory):
    """Any mode PIL reads, any size: the course pipeline's Dataset and the fast path's decoder give a
    3x32x32 image, the same up to the resize's few levels (never a white 16-bit image on one side)."""
    from torchvision import transforms

    from tools.data.course_pipeline import CourseDataset
    from tools.data.decode import decode_resized

    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray((array[..., 0].astype(np.uint16) * 257)).convert(mode if mode != "I;16" else "I;16")
    path = tmp_path_factory.mktemp("mode") / ("image.tiff" if mode in ("I", "F", "CMYK", "PA", "LA") else "image.png")
    try:
        image.save(path)
    except (OSError, ValueError, KeyError):
        return  # a mode this format cannot store: nothing to read
    course, _ = CourseDataset([(str(path), 0)], transforms.Compose([transforms.Resize((32, 32)),
                                                                    transforms.PILToTensor()]))[0]
    fast = decode_resized(str(path))
    assert course.shape == fast.shape == (3, 32, 32) and course.dtype == fast.dtype == torch.uint8
    assert (course.float() - fast.float()).abs().mean() < 12, (mode, size)


LAYERS = st.sampled_from(["linear", "conv", "bn", "embedding", "relu", "frozen", "buffer-only", "dropout"])


def odd_model(kinds: list[str]) -> nn.Module:
    """A model of the drawn parts; every part takes and gives (N, 4), so any sequence runs."""
    parts = []
    for kind in kinds:
        if kind == "linear":
            parts.append(nn.Linear(4, 4))
        elif kind == "conv":
            parts.append(nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 1, 1), nn.Flatten()))
        elif kind == "bn":
            parts.append(nn.BatchNorm1d(4))
        elif kind == "embedding":
            parts.append(nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
        elif kind == "relu":
            parts.append(nn.ReLU())
        elif kind == "frozen":
            layer = nn.Linear(4, 4)
            layer.requires_grad_(False)
            parts.append(layer)
        elif kind == "dropout":
            parts.append(nn.Dropout(0.5))
        else:
            parts.append(nn.Identity())
    return nn.Sequential(*parts)


FIGURE = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3))


@settings(FUZZ, max_examples=EXAMPLES or 30)
@given(kinds=st.lists(LAYERS, max_size=5), steps=st.integers(0, 3), loss=FIGURE, acc=FIGURE,
       valid_loss=FIGURE, valid_acc=FIGURE, classes=st.sampled_from([None, 1, 2, 3, ["a", "b"]]))
def test_the_monitor_on_odd_models_and_figures_gives_a_verdict_or_says_what_to_pass(
        kinds, steps, loss, acc, valid_loss, valid_acc, classes):
    """Any model (none of its parameters trainable, no parameters at all, batch norm, dropout), any number of
    steps, any figures given to end_epoch (None, NaN, inf, negative, past 1): a verdict, or a TypeError /
    ValueError raised by the monitor's own argument checks, with what to pass."""
    from tools.monitor import TrainingMonitor

    model = odd_model(kinds)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1) if trainable else None
    try:
        monitor = TrainingMonitor(model, None, log_interval=1, classes=classes, optimizer=optimizer)
    except (TypeError, ValueError) as err:  # only its own checks: here, a model without parameters
        assert "TrainingMonitor(model, ...)" in str(err) and not list(model.parameters()), err
        return
    x = torch.randn(6, 4)
    for step in range(1, steps + 1):
        if optimizer:
            optimizer.zero_grad()
        out = model(x)
        if not out.requires_grad:
            break
        out.square().mean().backward()
        monitor.after_backward(step, out.square().mean())
        if optimizer:
            optimizer.step()
        monitor.after_step(step)
    valid = {k: v for k, v in (("loss", valid_loss), ("acc", valid_acc)) if v is not None}
    try:
        verdict = monitor.end_epoch(steps, loss, train_acc=acc, valid=valid)
    except ValueError as err:
        assert "end_epoch(" in str(err) and "accuracy" in str(err)
        bad = [float(v) for v in (acc, valid_acc) if v is not None and math.isfinite(float(v))]
        assert any(not 0 <= v <= 1 for v in bad)
        return
    assert verdict.status and str(verdict)
