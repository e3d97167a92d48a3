"""Regenerate every picture in docs/ from real runs of the scripts on the current code (about a minute), and
say which command and which data drew each.

    python -m tools.readme_pictures                    # data/RMB_data's photos, into runs/<time>_readme_pictures/
    python -m tools.readme_pictures --data-dir PHOTOS --out docs      # what the docs show: their pictures, redrawn

The README captions these pictures as real photos, so they are only ever drawn from real photos: without
them, the command stops with one line naming the folder it looked for (it never falls back on the
generated set).

Runs the commands a user would (train_rmb.py, monitor_grads.py, init_demo.py, tools.lr_schedules) into a
temporary folder and copies their pictures into docs/, each shrunk to at most MAX_WIDTH pixels wide.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tools.cli.output_folder import OutputFolder

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_PHOTOS = REPO_ROOT / "data" / "RMB_data"  # where train_rmb.py looks for photos too
MAX_WIDTH = 1200       # pixels
MAX_BYTES = 200_000    # every picture must stay well under this


def run_command(*argv: str) -> None:
    """python <argv> in the repository, quietly; a failure raises."""
    subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)


def newest(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[-1]


def shrink_into(source: Path, target: Path) -> Path:
    """Copy a PNG, scaled down to MAX_WIDTH and with a reduced palette if it is still too big."""
    with Image.open(source) as img:
        img = img.convert("RGB")
        if img.width > MAX_WIDTH:
            img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
        img.save(target, optimize=True)
        if target.stat().st_size > MAX_BYTES:
            img.quantize(256).save(target, optimize=True)
    if target.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{target} is {target.stat().st_size} bytes, over {MAX_BYTES}")
    return target


PICTURES = ["gradcam.png", "confusion_test.png", "loss_curve.png", "kernels_conv1.png", "gradient_flow_vanishing.png",
            "activation_std.png", "lr_schedules.png"]  # docs/'s pictures (and the TensorBoard screen, with Chromium)


def main(args) -> list[Path]:
    from tools.cli.errors import UserError
    from tools.data.image_folder import find_splits

    if not args.data_dir.is_dir():
        raise UserError(f"no real photos at {args.data_dir}: the README shows its pictures as real photos; pass "
                        "--data-dir with photos of the notes (<folder>/1/*.jpg, <folder>/100/*.jpg)")
    find_splits(args.data_dir)  # a folder of class folders, or one clear line
    if args.out is None:  # the tracked docs/ only when asked for
        from tools.training.run_dirs import new_run_dir

        args.out = new_run_dir(REPO_ROOT / "runs", "readme_pictures")
    out = OutputFolder(args.out, "--out")
    out.claim(PICTURES + ["tensorboard_time_series.png"])  # never over a picture it did not write, before any work
    writable(args.out)  # a read-only --out is said now, not after a minute of training
    tmp = Path(tempfile.mkdtemp(prefix="readme_pictures_"))
    try:
        return draw_all(args, out, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the runs that drew them: 4 MB, never left behind


def writable(folder: Path) -> None:
    """Make `folder` and write a probe file in it, or one line (UserError) naming --out."""
    from tools.cli.errors import UserError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"cannot write into --out {folder} ({err.strerror or err}); choose a folder you can "
                        "write") from None


def draw_all(args, out: OutputFolder, tmp: Path) -> list[Path]:
    """Run the commands that draw the pictures (their runs in `tmp`), copy each picture into --out and
    record them as this command's; prints each picture's command and data. Returns the pictures."""
    data = ["--data-dir", str(args.data_dir)]
    commands = {  # what draws each picture, and the data it shows
        "train": (["train_rmb.py", *data, "--epochs", "10", "--device", "cpu"], f"the photos in {args.data_dir}"),
        "grads": (["monitor_grads.py", "--scenario", "vanishing", *data, "--device", "cpu"],
                  f"a 20-layer sigmoid MLP on the photos in {args.data_dir}"),
        "init": (["init_demo.py", "--device", "cpu"], "random inputs to a 100-layer MLP (no photos)"),
        "lr": (["-m", "tools.lr_schedules"], "the course's schedulers (no photos)"),
    }
    for name, (argv, _) in commands.items():
        run_command(*argv, "--logdir", str(tmp / name))
    run_dir = newest(tmp / "train", "*_lenet")
    pictures = {
        "gradcam.png": ("train", run_dir / "gradcam.png"),
        "confusion_test.png": ("train", run_dir / "confusion_test.png"),
        "loss_curve.png": ("train", run_dir / "loss_curve.png"),
        "kernels_conv1.png": ("train", run_dir / "kernels_conv1.png"),
        "gradient_flow_vanishing.png": ("grads", newest(tmp / "grads", "*_grads_vanishing") / "gradient_flow.png"),
        "activation_std.png": ("init", newest(tmp / "init", "*_init") / "activation_std.png"),
        "lr_schedules.png": ("lr", newest(tmp / "lr", "*_lr_schedules") / "lr_schedules.png"),
    }
    from tools.tb.browser import chromium, take

    if chromium():  # the first screen a user sees, from the same run
        pictures["tensorboard_time_series.png"] = ("train", take(run_dir, tmp / "shots")["pngs"]["timeseries"])
    else:
        print("no Chromium here: docs/tensorboard_time_series.png is left as it is", file=sys.stderr)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        written = {name: shrink_into(source, args.out / name) for name, (_, source) in pictures.items()}
        out.done(list(written))
    except OSError as err:  # --out made read-only or full while the runs drew
        from tools.cli.errors import UserError

        raise UserError(f"cannot write the pictures into --out {args.out} ({err.strerror or err}); choose a folder "
                        "you can write") from None
    for name, path in written.items():
        argv, shows = commands[pictures[name][0]]
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        print(f"{shown}  {path.stat().st_size // 1024} KB  from `python {' '.join(argv)}`: {shows}")
    return list(written.values())

def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, folder_path

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.readme_pictures")
    parser.add_argument("--data-dir", type=folder_path, default=REAL_PHOTOS, help="real photos of the notes, in class folders")
    parser.add_argument("--out", type=folder_path, default=None,
                        help="where the pictures go (default: a new run folder; --out docs replaces the docs' pictures)")
    return parser


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
