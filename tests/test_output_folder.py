"""No command deletes, overwrites or merges into what a user has: each writes into a new or empty folder,
or over files it wrote itself (its manifest). Run as a user runs them (each module as __main__); every file the
user had is compared byte for byte afterwards."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, write_images

from tools.cli.output_folder import MANIFEST


@pytest.fixture
def command(capsys, monkeypatch):
    """`python -m tools.<name> ...` as a user runs it: the module run as __main__ with that command line
    and working folder (its own `run_script` call: the exit code, stdout and stderr it gives), in this
    process, which spares the interpreter's start (a few seconds each)."""
    def run(*argv, cwd=ROOT) -> subprocess.CompletedProcess:
        assert argv[0] == "-m", argv
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [argv[1], *argv[2:]])
        monkeypatch.delitem(sys.modules, argv[1], raising=False)  # run afresh, as python -m does
        capsys.readouterr()
        try:
            runpy.run_module(argv[1], run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)
    return run


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def users_folder(tmp_path) -> Path:
    """A user's folder: photos and a diary."""
    folder = tmp_path / "mine"
    write_images(folder, 3)
    (folder / "notes").mkdir()
    (folder / "notes" / "diary.txt").write_text("dear diary")
    return folder


def refused(result, *words):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and all(w in result.stderr for w in words), result.stderr


@pytest.mark.parametrize("where", ["folder", "cwd"])
def test_synthetic_rmb_never_empties_a_users_folder(tmp_path, where, command):
    mine = users_folder(tmp_path)
    before = snapshot(mine)
    if where == "folder":
        result = command("-m", "tools.synthetic_rmb", str(mine), "--per-class", "2")
    else:  # `python -m tools.synthetic_rmb .` from inside it
        result = command("-m", "tools.synthetic_rmb", ".", "--per-class", "2", cwd=mine)
    refused(result, "did not write", "Choose another folder")
    assert snapshot(mine) == before


def test_synthetic_rmb_replaces_its_own_set_and_fills_an_empty_folder(tmp_path, command):
    out = tmp_path / "gen"
    assert command("-m", "tools.synthetic_rmb", str(out), "--per-class", "3").returncode == 0
    assert command("-m", "tools.synthetic_rmb", str(out), "--per-class", "2", "--seed", "5").returncode == 0
    assert sorted(p.name for p in (out / "1").iterdir()) == ["000.jpg", "001.jpg"]  # replaced, not merged
    assert set((out / MANIFEST).read_text().split()) == {".complete", "1/000.jpg", "1/001.jpg", "100/000.jpg",
                                                          "100/001.jpg"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert command("-m", "tools.synthetic_rmb", ".", "--per-class", "1", cwd=empty).returncode == 0
    assert (empty / "1" / "000.jpg").is_file() and (empty / ".complete").is_file()


def test_a_split_written_twice_is_replaced_not_merged_and_a_users_folder_is_left_alone(tmp_path, command):
    from tools.data.image_folder import find_splits

    data = tmp_path / "raw"
    for c in ("1", "100"):
        write_images(data / c, 20, start=0 if c == "1" else 100)
    out = tmp_path / "split"
    for seed in ("0", "1"):
        result = command("-m", "tools.rmb_dataset", str(data), "--out", str(out), "--seed", seed)
        assert result.returncode == 0 and "wrote 32 train, 4 valid, 4 test" in result.stdout, result.stderr
    _, splits, _ = find_splits(out)
    assert {name: len(s) for name, s in splits.items()} == {"train": 32, "valid": 4, "test": 4}
    train = {Path(p).name for p, _ in splits["train"]}
    assert not train & {Path(p).name for p, _ in splits["valid"] + splits["test"]}  # no leak
    mine = users_folder(tmp_path)
    before = snapshot(mine)
    refused(command("-m", "tools.rmb_dataset", str(data), "--out", str(mine)), "--out", "did not write")
    assert snapshot(mine) == before
    refused(command("-m", "tools.rmb_dataset", str(data), "--out", str(data / "split")), "inside the data folder")


def test_readme_pictures_and_screenshots_never_overwrite_a_users_picture(tmp_path, command):
    mine = users_folder(tmp_path)
    (mine / "gradcam.png").write_bytes(b"my picture")
    (mine / "timeseries.png").write_bytes(b"my screenshot")
    before = snapshot(mine)
    data = tmp_path / "photos"
    for c in ("1", "100"):
        write_images(data / c, 3, start=0 if c == "1" else 10)
    refused(command("-m", "tools.readme_pictures", "--data-dir", str(data), "--out", str(mine)), "gradcam.png",
            "never overwrites")
    refused(command("-m", "tools.tb_screenshots", str(tmp_path), "--out", str(mine)), "timeseries.png")
    assert snapshot(mine) == before


def test_the_docs_pictures_are_the_project_own(tmp_path):
    from tools.readme_pictures import PICTURES

    listed = set((ROOT / "docs" / MANIFEST).read_text().split())
    assert set(PICTURES) <= listed and all((ROOT / "docs" / name).is_file() for name in listed)


def test_inspect_run_never_overwrites_a_users_picture_and_records_its_own(tmp_path, tiny_data, command):
    from conftest import train

    run_dir = Path(train(tmp_path, tiny_data, "--epochs", "1")["run_dir"])
    mine = users_folder(tmp_path)
    (mine / "confusion_all.png").write_bytes(b"mine")
    before = snapshot(mine)
    refused(command("-m", "tools.inspect_run", str(run_dir), "--data-dir", str(tiny_data), "--out", str(mine)),
            "confusion_all.png", "never overwrites")
    assert snapshot(mine) == before
    out = tmp_path / "inspected"
    for _ in range(2):  # the second time over its own pictures
        result = command("-m", "tools.inspect_run", str(run_dir), "--data-dir", str(tiny_data), "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert "confusion_all.png" in (out / MANIFEST).read_text()


def test_a_photo_of_any_shape_gives_a_picture_of_bounded_size(tmp_path, tiny_data, command):
    """A 1 x 10000 photo: its Grad-CAM overlay fits the 120-pixel box (it once asked for 120 x 1,200,000
    pixels and 22 GB), and inspect_run over a folder holding it ends, with a sheet of bounded size."""
    import torch
    from conftest import train
    from PIL import Image

    from tools.pictures.visualize import overlay_on_photo

    strip = tmp_path / "strip.jpg"
    Image.new("RGB", (1, 10000), "green").save(strip)
    assert max(overlay_on_photo(str(strip), torch.rand(8, 8)).shape[:2]) <= 120
    run_dir = Path(train(tmp_path, tiny_data, "--epochs", "1")["run_dir"])
    folder = tmp_path / "odd"
    for c in ("1", "100"):
        write_images(folder / c, 2, start=0 if c == "1" else 10)
    Image.new("RGB", (10000, 1), "red").save(folder / "1" / "wide.jpg")
    strip.rename(folder / "100" / "tall.jpg")
    result = command("-m", "tools.inspect_run", str(run_dir), "--data-dir", str(folder), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "gradcam.png") as sheet:
        assert sheet.width * sheet.height < 4_000_000, sheet.size


def test_a_planted_manifest_link_rewrites_nothing_outside(tmp_path, tiny_data, command):
    """The output folder's manifest a link to a file elsewhere (anyone can plant one in a shared folder):
    rmb_dataset and inspect_run write their files, and the linked file keeps every byte; the link is
    replaced by a manifest of their own."""
    from conftest import train

    victim = tmp_path / "elsewhere.txt"
    victim.write_text("line 1\nline 2\n")
    run_dir = Path(train(tmp_path, tiny_data, "--epochs", "1")["run_dir"])
    for args in (["-m", "tools.rmb_dataset", str(tiny_data), "--out"], ["-m", "tools.inspect_run", str(run_dir), "--out"]):
        out = tmp_path / f"out-{args[1]}"
        out.mkdir()
        (out / MANIFEST).symlink_to(victim)
        result = command(*args, str(out))
        assert result.returncode == 0, result.stderr
        assert victim.read_text() == "line 1\nline 2\n"
        assert not (out / MANIFEST).is_symlink() and (out / MANIFEST).read_text().strip()


def test_a_link_listed_in_the_manifest_is_never_written_through(tmp_path):
    """A file the manifest names, replaced by a link to a file elsewhere: it is no longer ours."""
    from tools.cli.errors import UserError
    from tools.cli.output_folder import OutputFolder

    victim = tmp_path / "victim.png"
    victim.write_bytes(b"mine")
    out = OutputFolder(tmp_path / "out", "--out")
    out.done(["gradcam.png"])
    (tmp_path / "out" / "gradcam.png").symlink_to(victim)
    with pytest.raises(UserError, match="gradcam.png"):
        out.claim(["gradcam.png"])
    with pytest.raises(UserError, match="gradcam.png"):
        out.claim_whole()
    assert victim.read_bytes() == b"mine"


def test_a_stray_complete_file_proves_nothing(tmp_path, command):
    """An empty .complete beside a user's numbered photos (the names the generated set uses): the photos are
    not what synthetic_rmb draws, so they are the user's: refused, every byte kept. A set an older version
    wrote (no manifest, the same bytes) is still replaced."""
    mine = tmp_path / "mine"
    write_images(mine / "1", 20)
    (mine / ".complete").touch()
    before = snapshot(mine)
    refused(command("-m", "tools.synthetic_rmb", str(mine), "--per-class", "2"), "did not write")
    assert snapshot(mine) == before
    old = tmp_path / "old"
    assert command("-m", "tools.synthetic_rmb", str(old), "--per-class", "2").returncode == 0
    (old / MANIFEST).unlink()  # as a version before the manifest left it
    assert command("-m", "tools.synthetic_rmb", str(old), "--per-class", "2").returncode == 0
    assert (old / MANIFEST).is_file()


def test_readme_pictures_says_at_once_that_out_cannot_be_written_and_leaves_no_temporary_folder(tmp_path, command,
                                                                                               monkeypatch):
    """An --out it cannot write (/proc refuses even root): one line before a minute of training, and no
    readme_pictures_* folder left in the temporary folder (the same finally removes it after a good run)."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    data = tmp_path / "photos"
    for c in ("1", "100"):
        write_images(data / c, 3, start=0 if c == "1" else 10)
    refused(command("-m", "tools.readme_pictures", "--data-dir", str(data), "--out", "/proc/pictures"),
            "--out /proc/pictures", "choose a folder you can write")
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("args", [["-m", "tools.synthetic_rmb", "{below}"],
                                  ["-m", "tools.rmb_dataset", "{data}", "--out", "{below}"]])
def test_a_folder_below_a_file_is_named_for_what_it_is(tmp_path, command, args):
    """An output path below a file (a typo: photos.txt/out): one line naming the file, not 'File exists'."""
    (tmp_path / "photos.txt").write_text("not a folder")
    data = tmp_path / "raw"
    for c in ("1", "100"):
        write_images(data / c, 3, start=0 if c == "1" else 10)
    argv = [a.format(below=tmp_path / "photos.txt" / "out", data=data) for a in args]
    refused(command(*argv), "photos.txt, which is a file, not a folder")
