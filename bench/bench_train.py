"""How close train_rmb.py's data path comes to bare compute, beside what a user would otherwise write.

    python bench/bench_train.py                          # the real photos and a generated set of 8000 images
    python bench/bench_train.py --device cuda            # the same on a GPU
    python bench/bench_train.py --skip-end-to-end        # only the in-process measures (about 2 minutes)

In one process, for each data set (the real photos in ../shared, and 8000 generated images, drawn into
data/bench_8000 once):
  - train_rmb.py's steady epoch, all monitoring on (its epochs 2.. of 6, timed inside train_one_epoch,
    the command's way: run_script);
  - the bare compute of the same steps: LeNet, batch 16, forward, backward, SGD with momentum, on one
    fixed batch already on the device, as many steps, timed right after each epoch; and their ratio,
    the median over the epochs of each against its own bare block (this shared machine's speed
    drifts by more than the effect between two measures minutes apart);
  - images per second of both, and of the pipeline a user would otherwise write: torchvision's
    ImageFolder with the course's transforms and a DataLoader with 2 workers, training the same LeNet;
  - the first decode of every photo (what a run without a disk cache does first) on 1 process and on
    one per core, medians of 3 in turns.
Then, unless --skip-end-to-end, the whole command end to end, 10 epochs on the real photos, beside the
course's pipeline (bench/course_style_train.py), medians of --repeats runs of each.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import LeNet  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data"
GENERATED = ROOT / "data" / "bench_8000"
BATCH = 16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rmb_epochs(data_dir: Path, device: str, epochs: int = 6) -> tuple[list[float], list[float], int]:
    """train_rmb.py in this process on `data_dir`, as its command runs it; the seconds of each epoch's
    train_one_epoch (its loop over the batches with all monitoring on), the seconds of the bare compute
    of as many steps timed right after each epoch (so that both see the machine as it is then), and the
    steps of an epoch. The first epoch (warming up) is left out."""
    from bench_monitor import run_train_rmb

    seconds, bare, steps = [], [], []

    def timed(original, model, loader, *args):
        started = time.perf_counter()
        result = original(model, loader, *args)
        sync(torch.device(device))
        seconds.append(time.perf_counter() - started)
        steps.append(len(loader))
        bare.append(bare_compute(len(loader), torch.device(device), repeats=1))
        return result

    run_train_rmb(data_dir, device, epochs, timed)
    return seconds[1:], bare[1:], steps[0]


def bare_compute(steps: int, device: torch.device, repeats: int = 3) -> float:
    """Seconds of `steps` bare LeNet steps (forward, backward, SGD with momentum) on one fixed batch
    already on the device: the compute an epoch cannot go below. The median of `repeats` timings, after
    one untimed run. The random state of a run around it is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LeNet().initialize_weights().to(device)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(BATCH, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 2, (BATCH,), generator=generator).to(device)

    def run():
        for _ in range(steps):
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        sync(device)

    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def imagefolder_epoch(data_dir: Path, device: torch.device, workers: int = 2) -> tuple[float, int]:
    """What a user would otherwise write: ImageFolder with the course's transforms (the photo opened,
    resized and augmented every time), a DataLoader with `workers` processes, and the same training
    step. Seconds of one epoch over every image, and the images."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((32, 32)), transforms.RandomCrop(32, padding=4),
                             transforms.RandomGrayscale(p=0.8), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = datasets.ImageFolder(str(data_dir), transform=tf)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    model = LeNet(len(dataset.classes)).initialize_weights().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - started, len(dataset)


def first_decode(data_dir: Path, repeats: int = 3) -> dict[int, float]:
    """Seconds to decode every photo of `data_dir` (no cache) on 1 process and on one per core: the
    median of `repeats` timings of each, taken in turns (1, N, 1, N, ...) so that both see the machine
    alike."""
    from tools.data.decode import decode_all
    from tools.data.image_folder import find_splits

    _, splits, _ = find_splits(data_dir)
    paths = [path for samples in splits.values() for path, _ in samples]
    seconds = {}
    for _ in range(repeats):
        for workers in sorted({1, os.cpu_count() or 1}):
            started = time.perf_counter()
            decode_all(paths, workers=workers)
            seconds.setdefault(workers, []).append(time.perf_counter() - started)
    return {workers: statistics.median(times) for workers, times in seconds.items()}


def measure(name: str, data_dir: Path, device: str) -> None:
    epochs, bares, steps = train_rmb_epochs(data_dir, device)
    epoch, bare = statistics.median(epochs), statistics.median(bares)
    ratio = statistics.median(e / b for e, b in zip(epochs, bares))  # each epoch against its own bare block
    images = steps * BATCH
    folder_seconds, folder_images = imagefolder_epoch(data_dir, torch.device(device))
    decode = first_decode(data_dir)
    print(f"\n{name}: {data_dir} ({steps} steps of {BATCH} an epoch, {device})")
    print(f"  train_rmb.py steady epoch, all monitoring on   {epoch:8.3f} s   {images / epoch:8.0f} images/s")
    print(f"  bare compute of the same steps                 {bare:8.3f} s   {images / bare:8.0f} images/s")
    print(f"  ratio epoch / bare compute (median of {len(epochs)} pairs) {ratio:8.2f}x  (target: at most 1.3x)")
    print(f"  ImageFolder + DataLoader(num_workers=2)        {folder_seconds:8.3f} s   "
          f"{folder_images / folder_seconds:8.0f} images/s; train_rmb.py "
          f"{(images / epoch) / (folder_images / folder_seconds):.1f}x as many  (target: at least 3x)")
    many = max(decode)
    print(f"  first decode, 1 process (median of 3)          {decode[1]:8.3f} s" + (
        f"\n  first decode, {many} processes (median of 3)        {decode[many]:8.3f} s   "
        f"{decode[1] / decode[many]:.2f}x faster  (target: at least 1.7x on 2 cores)" if many > 1 else ""))


def wall(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, out


def end_to_end(data_dir: Path, repeats: int) -> None:
    """The commands as a user runs them: imports, the course's pipeline, train_rmb.py cold and warm."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    py = sys.executable
    ours = [py, "train_rmb.py", "--data-dir", str(data_dir), "--epochs", "10", "--device", "cpu",
            "--logdir", str(tmp / "runs")]
    times = {k: [] for k in ("imports", "torch", "course", "cold", "warm")}
    for repeat in range(repeats):
        times["imports"].append(wall([py, "-c", "import torch, torchvision, torch.utils.tensorboard, "
                                                "matplotlib.pyplot, tqdm"])[0])
        times["torch"].append(wall([py, "-c", "import torch"])[0])
        times["course"].append(wall([py, "bench/course_style_train.py", "--data-dir", str(data_dir),
                                     "--epochs", "10"])[0])
        times["cold"].append(wall(ours + ["--cache-dir", ""])[0])
        seconds, _ = wall(ours + ["--cache-dir", str(tmp / "cache")])
        if repeat > 0 or repeats == 1:  # the first run with a cache dir fills it
            times["warm"].append(seconds)
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"\nend to end, 10 epochs on {data_dir}, medians of {repeats} runs")
    print(f"  import torch alone                                  {med['torch']:6.2f} s")
    print(f"  imports of torch, torchvision, tensorboard, matplotlib {med['imports']:6.2f} s")
    print(f"  the course's pipeline                               {med['course']:6.2f} s")
    print(f"  train_rmb.py, cold (every photo decoded once)       {med['cold']:6.2f} s   "
          f"ratio {med['cold'] / med['course']:.2f}x  (target: at most 0.30x)")
    print(f"  train_rmb.py, warm (disk cache)                     {med['warm']:6.2f} s   "
          f"ratio {med['warm'] / med['course']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each end-to-end command")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    from tools.data.synthetic import generate, is_generated

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {args.device}")
    if not is_generated(GENERATED):
        generate(GENERATED, per_class=4000)
    if REAL.is_dir():
        measure("real photos", REAL, args.device)
    measure("generated, 8000 images", GENERATED, args.device)
    if not args.skip_end_to_end and REAL.is_dir():
        end_to_end(REAL, args.repeats)


if __name__ == "__main__":
    main()
