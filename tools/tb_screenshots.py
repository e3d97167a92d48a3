"""Look at a run as a user does: serve it with TensorBoard and screenshot its tabs in headless Chromium.

    python -m tools.tb_screenshots runs/<run>            # <run>/screenshots/{timeseries,images,histograms}.png
    python -m tools.tb_screenshots runs --out shots      # every run in runs/

Needs a Chromium (Debian: apt-get install chromium). Also prints what TensorBoard serves, counted
through its HTTP API: the runs, and the scalar, image and histogram cards of the Time Series tab.
"""

from tools.cli.errors import UserError
from tools.tb.browser import take
from tools.tb.writer import SPLIT_LINES


def main(args) -> dict:
    if not args.logdir.is_dir():
        raise UserError(f"{args.logdir} is not a folder: pass a run folder, or runs/")
    result = take(args.logdir, args.out or args.logdir / "screenshots")
    found = result["cards"]
    runs = [r for r in found["runs"] if r.rsplit("/", 1)[-1] not in SPLIT_LINES]  # a run's splits are lines of its charts
    print(f"{len(runs)} run(s) (and their splits: {len(found['runs']) - len(runs)}); Time Series cards: {len(found['scalars'])} scalar, {len(found['images'])} image, "
          f"{len(found['histograms'])} histogram")
    print("scalar cards: " + ", ".join(found["scalars"]))
    print("screenshots: " + ", ".join(str(p) for p in result["pngs"].values()))
    return result

def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, folder_path

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.tb_screenshots")
    parser.add_argument("logdir", type=folder_path, help="a run folder, or a folder of runs")
    parser.add_argument("--out", type=folder_path, default=None, help="where the PNGs go (default: <logdir>/screenshots)")
    return parser


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
