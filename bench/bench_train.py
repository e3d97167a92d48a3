"""Time train_rmb.py end to end and per epoch, beside the course's pipeline, on the same machine.

    python bench/bench_train.py --data-dir ../shared/data/rmb_real/RMB_data --repeats 3

Prints medians over --repeats runs (alternating the two pipelines): the import time, the steady-state
epoch time with monitoring on and off (--no-monitor), the end-to-end wall time of 10 epochs with a cold
cache (every photo decoded once) and a warm one (decoded images read from the disk cache), and the
ratios to the course-style pipeline (bench/course_style_train.py: decodes every photo every epoch).
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, out


def epoch_seconds(output: str) -> list[float]:
    """The seconds of epochs 2.. from train_rmb.py's summary lines (epoch 1 warms up)."""
    return [float(s) for s in re.findall(r"^epoch\s+\d+/\d+ .* ([\d.]+) s$", output, re.M)][1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    py = sys.executable
    ours = [py, "train_rmb.py", "--data-dir", str(args.data_dir), "--epochs", str(args.epochs), "--device", "cpu",
            "--logdir", str(tmp / "runs")]
    course = [py, "bench/course_style_train.py", "--data-dir", str(args.data_dir), "--epochs", str(args.epochs)]
    imports = [py, "-c", "import torch, torchvision, torch.utils.tensorboard, matplotlib.pyplot, tqdm"]

    times = {k: [] for k in ("imports", "course", "cold", "warm", "epoch", "epoch_no_monitor")}
    for repeat in range(args.repeats):
        times["imports"].append(wall(imports)[0])
        times["course"].append(wall(course)[0])
        seconds, out = wall(ours + ["--cache-dir", ""])
        times["cold"].append(seconds)
        times["epoch"] += epoch_seconds(out)
        seconds, _ = wall(ours + ["--cache-dir", str(tmp / "cache")])
        if repeat > 0 or args.repeats == 1:  # the first run with a cache dir fills it
            times["warm"].append(seconds)
        times["epoch_no_monitor"] += epoch_seconds(wall(ours + ["--no-monitor", "--cache-dir", str(tmp / "cache")])[1])
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"data {args.data_dir}, {args.epochs} epochs, medians of {args.repeats} runs")
    print(f"imports (torch, torchvision, tensorboard, matplotlib)  {med['imports']:6.2f} s")
    print(f"course-style pipeline, end to end                    {med['course']:6.2f} s")
    print(f"train_rmb.py, end to end, cold (decode once)         {med['cold']:6.2f} s   "
          f"ratio {med['cold'] / med['course']:.2f}x")
    print(f"train_rmb.py, end to end, warm (disk cache)          {med['warm']:6.2f} s   "
          f"ratio {med['warm'] / med['course']:.2f}x")
    print(f"train_rmb.py, steady-state epoch, monitoring on      {med['epoch']:6.3f} s")
    print(f"train_rmb.py, steady-state epoch, --no-monitor       {med['epoch_no_monitor']:6.3f} s   "
          f"monitor cost {med['epoch'] / med['epoch_no_monitor'] - 1:+.1%}")


if __name__ == "__main__":
    main()
