"""What monitoring costs: this monitor beside the usual ways, and inside train_rmb.py.

    python bench/bench_monitor.py                # about a minute on a 2-core CPU
    python bench/bench_monitor.py --skip-train   # only the histogram and norm comparisons

In one process, medians of --repeats timings:
  1. one epoch's weight and gradient histograms of every parameter, for LeNet and torchvision's
     resnet18: (a) the plain SummaryWriter.add_histogram loop, (c) this monitor (on-device histc,
     add_histogram_raw); and per-parameter gradient norms: (b) a `.norm().item()` loop, (c) the fused
     `torch._foreach_norm` with one host copy;
  2. a LeNet training step on a batch of 16 with and without the monitor's per-step gradient norms;
  3. train_rmb.py's epoch with monitoring on and with --no-monitor (separate processes, alternating):
     CPU time per epoch (robust on a shared machine) and wall time per epoch.
"""
import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import LeNet  # noqa: E402
from tools.monitor import TrainingMonitor, grad_norms  # noqa: E402
from tools.tb_logging import open_writer  # noqa: E402


def median_seconds(fn, repeats: int, after=lambda: None) -> float:
    """Median wall time of fn() over `repeats` timed calls.

    Each timed call follows an untimed one (warm caches and thread pool, as inside a training loop);
    after() runs untimed after each pair (e.g. letting the TensorBoard writer thread catch up).
    """
    times = []
    for _ in range(repeats):
        fn()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        after()
    return statistics.median(times)


def with_gradients(model: nn.Module, input_shape) -> nn.Module:
    torch.manual_seed(0)
    model(torch.randn(*input_shape)).logsumexp(1).mean().backward()
    return model


@contextmanager
def tensorboards_own_checksums():
    """TensorBoard's record writer as it comes (pure-Python CRC), for the plain baseline."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as own
    from tensorboard.summary.writer import record_writer

    from tools.event_crc import masked_crc32c as fast

    record_writer.masked_crc32c = own
    try:
        yield
    finally:
        record_writer.masked_crc32c = fast


def compare_histograms(name: str, model: nn.Module, writer, repeats: int) -> None:
    """(a) a plain SummaryWriter (its defaults, TensorBoard's own checksums) and the add_histogram loop
    of the course and most tutorials, against (c) the monitor with this project's writer."""
    params = list(model.named_parameters())
    plain = SummaryWriter(tempfile.mkdtemp(prefix="bench_monitor_plain_"))

    def add_histogram_loop():
        with tensorboards_own_checksums():
            for n, p in params:
                plain.add_histogram(f"weights/{n}", p, 0)
                plain.add_histogram(f"grads/{n}", p.grad, 0)

    def item_loop():  # (b) one host sync per parameter
        return {n: p.grad.norm().item() for n, p in params}

    monitor = TrainingMonitor(model, writer)
    # Interleaved, so that both see the same machine; the writer thread catches up between calls,
    # untimed, so that neither timing pays for the other's events.
    def block_of(fn, calls=5):  # back to back, as epoch after epoch: the writer thread works meanwhile
        return lambda: [fn() for _ in range(calls)]

    a_times, c_times = [], []
    for _ in range(repeats):
        a_times.append(median_seconds(block_of(add_histogram_loop), 1, after=plain.flush) / 5)
        c_times.append(median_seconds(block_of(lambda: monitor.log_histograms(0)), 1, after=writer.flush) / 5)
    a, c = statistics.median(a_times), statistics.median(c_times)
    plain.close()
    b = median_seconds(item_loop, repeats * 5)
    c_norms = median_seconds(lambda: grad_norms(model), repeats * 5)
    print(f"{name:9s} {len(params) * 2:4d} tensors  histograms: add_histogram loop {a * 1e3:8.2f} ms, "
          f"monitor {c * 1e3:7.2f} ms, {a / c:5.1f}x faster | norms: .item() loop {b * 1e3:6.3f} ms, "
          f"fused {c_norms * 1e3:6.3f} ms, {b / c_norms:4.1f}x")


def compare_step(repeats: int) -> None:
    torch.manual_seed(0)
    model = LeNet().initialize_weights()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    monitor = TrainingMonitor(model, writer=None, log_interval=10 ** 9)  # norms every step, no logging step

    def steps(with_monitor: bool, n: int = 50):
        for step in range(1, n + 1):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            monitor.after_backward(step, loss) if with_monitor else loss.item()
            optimizer.step()

    plain, monitored = [], []
    for _ in range(repeats * 4):  # short blocks, interleaved, so that both see the same machine
        plain.append(median_seconds(lambda: steps(False), 1) / 50)
        monitored.append(median_seconds(lambda: steps(True), 1) / 50)
    p, m = statistics.median(plain), statistics.median(monitored)
    print(f"LeNet step (batch 16): plain {p * 1e3:.3f} ms, with per-step gradient norms {m * 1e3:.3f} ms "
          f"({m / p - 1:+.1%})")


def run_train(flags: list[str], data_dir: Path, logdir: Path, epochs: int) -> tuple[list[float], float]:
    """One train_rmb.py run in a fresh process: its steady-state epoch times (epochs 3..) and the CPU
    seconds it used (all threads, user + system)."""
    cmd = [sys.executable, str(ROOT / "train_rmb.py"), "--data-dir", str(data_dir), "--epochs", str(epochs),
           "--device", "cpu", "--logdir", str(logdir), "--cache-dir", str(logdir / "cache"), *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [float(s) for s in re.findall(r"^epoch\s+\d+/\d+ .* ([\d.]+) s$", out, re.M)][2:], cpu


def compare_train(data_dir: Path, repeats: int) -> None:
    """train_rmb.py with and without --no-monitor, alternating, each run in its own process.

    Two measures: the median wall time of an epoch, and the CPU time of an epoch, from the difference
    between a 25-epoch and a 5-epoch run (start-up and the end cancel out). CPU time is what the
    monitor adds to the machine's work; unlike wall time, it does not move when the machine is shared.
    """
    logdir = Path(tempfile.mkdtemp(prefix="bench_monitor_"))
    wall = {"on": [], "off": []}
    cpu = {"on": [], "off": []}
    for _ in range(repeats):
        for mode, flags in (("off", ["--no-monitor"]), ("on", [])):
            epochs, long_cpu = run_train(flags, data_dir, logdir, 25)
            _, short_cpu = run_train(flags, data_dir, logdir, 5)
            wall[mode] += epochs
            cpu[mode].append((long_cpu - short_cpu) / 20)
    w_on, w_off = statistics.median(wall["on"]), statistics.median(wall["off"])
    c_on, c_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    print(f"train_rmb.py epoch on {data_dir.name}, monitoring on vs --no-monitor ({repeats} runs each):")
    print(f"  CPU time per epoch   {c_on * 1e3:6.1f} ms vs {c_off * 1e3:6.1f} ms   "
          f"monitor cost {c_on / c_off - 1:+.1%}")
    print(f"  wall time per epoch  {w_on * 1e3:6.1f} ms vs {w_off * 1e3:6.1f} ms   "
          f"monitor cost {w_on / w_off - 1:+.1%}")


def attribute_train(data_dir: Path, epochs: int = 30) -> float:
    """The share of train_rmb.py's epoch spent inside the monitor, timed in one process.

    Every entry point of the monitor (after_backward, after_step, end_epoch and the activation hooks of
    the validation pass) is wrapped with a timer; its time per epoch is divided by the epoch's wall time,
    and the median over epochs 3.. is returned. A ratio within one run is steady where a difference
    between two runs is not: on a shared machine, epochs of separate runs differ by more than 5%.
    """
    import contextlib
    import io

    import train_rmb
    from tools import monitor as M

    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started
        return wrapper

    originals = {name: getattr(M.TrainingMonitor, name) for name in ("after_backward", "after_step", "end_epoch")}
    original_hook, original_epoch = M.ActivationStats.hook, train_rmb.train_one_epoch
    per_epoch = []

    def epoch_start(*args, **kwargs):
        per_epoch.append(spent[0])
        return original_epoch(*args, **kwargs)

    for name, fn in originals.items():
        setattr(M.TrainingMonitor, name, timed(fn))
    M.ActivationStats.hook = lambda self, name, module: timed(original_hook(self, name, module))
    train_rmb.train_one_epoch = epoch_start
    try:
        args = train_rmb.get_args_parser().parse_args(
            ["--data-dir", str(data_dir), "--epochs", str(epochs), "--device", "cpu", "--logdir",
             tempfile.mkdtemp(prefix="bench_monitor_"), "--cache-dir", str(ROOT / "data" / "cache")])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            train_rmb.main(args)
    finally:
        for name, fn in originals.items():
            setattr(M.TrainingMonitor, name, fn)
        M.ActivationStats.hook, train_rmb.train_one_epoch = original_hook, original_epoch
    per_epoch.append(spent[0])
    walls = [float(s) for s in re.findall(r"^epoch\s+\d+/\d+ .* ([\d.]+) s$", out.getvalue(), re.M)]
    monitor_times = [b - a for a, b in zip(per_epoch, per_epoch[1:])]
    shares = [m / w for m, w in zip(monitor_times[2:], walls[2:])]
    print(f"train_rmb.py epoch on {data_dir.name}, in one process: {statistics.median(monitor_times[2:]) * 1e3:.1f} ms "
          f"of {statistics.median(walls[2:]) * 1e3:.1f} ms inside the monitor, median share "
          f"{statistics.median(shares):.1%} (epochs 3-{epochs})")
    return statistics.median(shares)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    import torchvision

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    writer = open_writer(Path(tempfile.mkdtemp(prefix="bench_monitor_tb_")))
    compare_histograms("LeNet", with_gradients(LeNet().initialize_weights(), (16, 3, 32, 32)), writer, args.repeats)
    compare_histograms("resnet18", with_gradients(torchvision.models.resnet18(), (2, 3, 224, 224)), writer,
                       args.repeats)
    writer.close()
    compare_step(args.repeats)
    if not args.skip_train:
        data_dir = args.data_dir
        if not data_dir.is_dir():
            from tools.rmb_dataset import default_data_dir
            data_dir, _ = default_data_dir(ROOT / "data")
        attribute_train(data_dir)
        compare_train(data_dir, max(3, args.repeats // 3))


if __name__ == "__main__":
    main()
