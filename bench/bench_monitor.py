"""What monitoring costs: this monitor beside the usual ways, and inside train_rmb.py.

    python bench/bench_monitor.py                # about three minutes on a 2-core CPU
    python bench/bench_monitor.py --skip-train   # only the histogram and norm comparisons
    python bench/bench_monitor.py --device cuda  # the same on a GPU
    python bench/bench_monitor.py --skip-histograms --data-dir data/bench_8000 --epochs 30  # long epochs

In one process, medians of --repeats timings:
  1. one epoch's weight and gradient histograms of every parameter, for LeNet and torchvision's
     resnet18: (a) the plain SummaryWriter.add_histogram loop, (c) this monitor (on-device histc,
     add_histogram_raw); and per-parameter gradient norms: (b) a `.norm().item()` loop, (c) the fused
     `torch._foreach_norm` with one host copy;
  2. a training step that writes its event, with TensorBoard's writer thread and with this project's
     buffered writer; and per-step gradient norms (the monitor's after_backward) against a bare LeNet step on a fixed batch
     of 16 (forward, backward, SGD), and against train_rmb.py's own step (which also loads the batch
     and logs), epochs with and without them alternating in one run;
  3. train_rmb.py's epoch with monitoring on and off (as with --no-monitor), alternating epoch by epoch
     in one run: the paired cost, and the share of the epoch spent inside the monitor.
"""
import argparse
import statistics
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
from tools.monitor import TrainingMonitor  # noqa: E402
from tools.monitor.tensor_stats import grad_norms  # noqa: E402
from tools.tb.writer import open_writer, write_event  # noqa: E402

# The targets of the monitor's issue, for a 2-core CPU: histograms 5x (LeNet) and 4x (resnet18) faster than
# the add_histogram loop; gradient norms every step at most 3% of train_rmb.py's step; all of the monitor at
# most 5% of train_rmb.py's epoch.
STEP_TARGET, EPOCH_TARGET = 0.03, 0.05


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


def with_gradients(model: nn.Module, input_shape, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = model.to(device)
    model(torch.randn(*input_shape, device=device)).logsumexp(1).mean().backward()
    return model


@contextmanager
def tensorboards_own_checksums():
    """TensorBoard's record writer as it comes (pure-Python CRC), for the plain baseline."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as own
    from tensorboard.summary.writer import record_writer

    from tools.tb.event_crc import masked_crc32c as fast

    record_writer.masked_crc32c = own
    try:
        yield
    finally:
        record_writer.masked_crc32c = fast


def compare_histograms(name: str, model: nn.Module, writer, repeats: int, target: float) -> None:
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
          f"fused {c_norms * 1e3:6.3f} ms, {b / c_norms:4.1f}x  (histogram target: {target:g}x)")


def compare_event_writing(repeats: int, device: torch.device) -> None:
    """A training step that writes one event (two scalars, as train_rmb.py's every step does), with a
    SummaryWriter as TensorBoard makes it (a writer thread per file, which opens and appends the file for
    every event) and with this project's (`open_writer`: buffered in memory, appended in one write every
    10 s and at each flush, in the logging thread): the time of 20-step blocks, alternating."""
    model = LeNet().initialize_weights().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32, device=device), torch.randint(0, 2, (16,), device=device)
    writers = {"TensorBoard's": SummaryWriter(tempfile.mkdtemp(prefix="bench_events_"), max_queue=1000, flush_secs=10),
               "this project's": open_writer(Path(tempfile.mkdtemp(prefix="bench_events_")))}
    step = [0]

    def block(writer, n=20):
        for _ in range(n):
            step[0] += 1
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            write_event(writer, step[0], scalars={"loss": loss.item(), "accuracy": 0.7})

    times = {name: [] for name in writers}
    for _ in range(repeats * 10):
        for name, writer in writers.items():
            started = time.perf_counter()
            block(writer)
            times[name].append(time.perf_counter() - started)
    theirs, mine = (statistics.median(t) / 20 for t in times.values())
    print(f"a bare LeNet step that writes one event: {theirs * 1e3:.3f} ms with TensorBoard's writer thread, "
          f"{mine * 1e3:.3f} ms with this project's ({(theirs - mine) / theirs:.1%} of the step saved)")
    for writer in writers.values():
        writer.close()


def compare_step(repeats: int, device: torch.device) -> None:
    """A bare LeNet step (forward, backward, SGD, the loss copied to the host as every loop does) against
    the same step with the monitor added, in the README's forms, on a non-logging step: each form has a
    model and optimizer of its own (the monitor's hooks stay on them), and 20-step blocks alternate."""
    x, y = torch.randn(16, 3, 32, 32, device=device), torch.randint(0, 2, (16,), device=device)
    criterion = nn.CrossEntropyLoss()

    def setup(form: str):
        torch.manual_seed(0)
        model = LeNet().initialize_weights().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        monitor = None if form == "bare" else TrainingMonitor(
            model, writer=None, log_interval=10 ** 9, optimizer=None if form == "after_backward" else optimizer)
        return model, optimizer, monitor

    forms = {form: setup(form) for form in ("bare", "optimizer watched", "after_backward", "both")}

    def block(form: str, n: int = 20) -> float:
        """Seconds per step over n steps."""
        model, optimizer, monitor = forms[form]
        started = time.perf_counter()
        for step in range(1, n + 1):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            monitor.after_backward(step, loss) if form in ("after_backward", "both") else loss.item()
            optimizer.step()
        return (time.perf_counter() - started) / n

    for form in forms:
        block(form)  # warm-up
    times = {form: [] for form in forms}
    for i in range(repeats * 20):  # rounds of short blocks, the order turning each round
        order = list(forms)[i % len(forms):] + list(forms)[:i % len(forms)]
        for form in order:
            times[form].append(block(form))
    bare = times["bare"]
    print(f"bare LeNet step (a fixed batch of 16: forward, backward, SGD, loss.item()): "
          f"{statistics.median(bare) * 1e3:.3f} ms; the monitor on a non-logging step "
          f"(target: at most +{STEP_TARGET:.0%}; median over {len(bare)} rounds of 20-step blocks):")
    for form, label in (("optimizer watched", "TrainingMonitor(model, writer, optimizer=optimizer) alone"),
                        ("after_backward", "after_backward(step, loss), no optimizer given"),
                        ("both", "the optimizer watched and after_backward(step, loss)")):
        ratios = [t / b for t, b in zip(times[form], bare)]
        print(f"  {label:<60} {statistics.median(ratios) - 1:+.1%}")


def run_train_rmb(data_dir: Path, device: str, epochs: int, wrap_epoch) -> None:
    """train_rmb.py in this process as its command runs it (run_script, which also keeps the garbage
    collector off the imports' objects), quietly, with its train_one_epoch replaced by
    wrap_epoch(original, *args): a way to switch the monitor and time each epoch."""
    import contextlib
    import io

    import train_rmb
    from tools.cli.arguments import run_script

    original, argv = train_rmb.train_one_epoch, sys.argv
    train_rmb.train_one_epoch = lambda *args, **kwargs: wrap_epoch(original, *args, **kwargs)
    sys.argv = ["train_rmb.py", "--data-dir", str(data_dir), "--epochs", str(epochs), "--device", device,
                "--logdir", tempfile.mkdtemp(prefix="bench_monitor_"), "--cache-dir", str(ROOT / "data" / "cache")]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_script(train_rmb.main, train_rmb.get_args_parser())
    finally:
        train_rmb.train_one_epoch, sys.argv = original, argv


def paired_cost(times: list[float]) -> float:
    """times alternate on, off, on, ...: the median over on-items 3, 5, ... of on / (mean of the two
    off neighbours), minus 1. Neighbours in one run see the same machine; separate runs on a shared
    machine differ by more than the effect measured."""
    return statistics.median(times[i] / ((times[i - 1] + times[i + 1]) / 2) - 1 for i in range(2, len(times) - 1, 2))


def measure_step_in_train(data_dir: Path, device: str, epochs: int = 300) -> None:
    """Gradient norms at every step, in train_rmb.py's own steps (loading the batch, forward, backward,
    SGD, logging loss and accuracy): epochs alternate between the monitor's after_backward at every
    step (norms and non-finite check, no logging step) and nothing of the monitor at all, in one run.
    An epoch's training time per step is paired with its neighbours'."""
    per_step = []

    def wrap_epoch(original, model, loader, criterion, optimizer, device, state, monitor, stop):
        monitor.enabled, monitor.log_interval = len(per_step) % 2 == 0, 10 ** 9
        started = time.perf_counter()
        try:
            return original(model, loader, criterion, optimizer, device, state, monitor, stop)
        finally:
            per_step.append((time.perf_counter() - started) / len(loader))
            monitor.enabled = False  # no histograms, hooks or verdict in either kind of epoch

    run_train_rmb(data_dir, device, epochs, wrap_epoch)
    print(f"train_rmb.py step on {data_dir.name} (batch 16, {len(per_step) // 2} epochs of each): "
          f"{statistics.median(per_step[1::2]) * 1e3:.2f} ms, gradient norms every step "
          f"{paired_cost(per_step):+.1%}  (target: at most +{STEP_TARGET:.0%})")


def measure_epoch_in_train(data_dir: Path, device: str, epochs: int = 100) -> None:
    """What the whole monitor costs train_rmb.py's epoch, measured in one process, two ways.

    1. Paired: the monitor is on for every other epoch and off (as with --no-monitor) for the others,
       in one run; each monitored epoch is compared with the mean of its two unmonitored neighbours.
    2. Attributed: every entry point of the monitor (after_backward, after_step, end_epoch, the
       activation hooks of the validation pass and their result) is wrapped with a timer, and its time
       in each monitored epoch is divided by that epoch's wall time. This over-counts a little: the
       first code after backward runs with caches that backward has just filled with its own data.
    """
    from tools.monitor import activations as A
    from tools.monitor import training_monitor as M

    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started
        return wrapper

    patched = {name: getattr(M.TrainingMonitor, name) for name in ("after_backward", "after_step", "end_epoch")}
    original_hook, original_result = A.ActivationStats.hook, A.ActivationStats.result
    starts, clock = [], []  # time inside the monitor, and the wall clock, as each epoch starts

    def wrap_epoch(original, model, loader, criterion, optimizer, device, state, monitor, stop):
        monitor.enabled = len(starts) % 2 == 0  # on, off, on, off, ...
        starts.append(spent[0])
        clock.append(time.perf_counter())
        return original(model, loader, criterion, optimizer, device, state, monitor, stop)

    for name, fn in patched.items():
        setattr(M.TrainingMonitor, name, timed(fn))
    A.ActivationStats.hook = lambda self, name, module: timed(original_hook(self, name, module))
    A.ActivationStats.result = timed(original_result)
    try:
        run_train_rmb(data_dir, device, epochs, wrap_epoch)
    finally:
        for name, fn in patched.items():
            setattr(M.TrainingMonitor, name, fn)
        A.ActivationStats.hook, A.ActivationStats.result = original_hook, original_result
    walls = [b - a for a, b in zip(clock, clock[1:])]  # one epoch: train, evaluate, monitor, checkpoint, print
    inside = [b - a for a, b in zip(starts, starts[1:])]
    on = range(2, len(walls) - 1, 2)
    print(f"train_rmb.py epoch on {data_dir.name}, in one process ({len(on)} monitored epochs, each between "
          f"two with --no-monitor's settings):")
    print(f"  epoch {statistics.median(walls[i] for i in on) * 1e3:.1f} ms monitored, "
          f"{statistics.median(walls[1::2]) * 1e3:.1f} ms not; paired cost of the monitor {paired_cost(walls):+.1%}  "
          f"(target: at most +{EPOCH_TARGET:.0%})")
    print(f"  time inside the monitor {statistics.median(inside[i] for i in on) * 1e3:.1f} ms per epoch, "
          f"{statistics.median(inside[i] / walls[i] for i in on):.1%} of the epoch")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-histograms", action="store_true", help="only the train_rmb.py step and epoch")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the train_rmb.py runs (default: 300 for the step, 100 for the epoch; "
                             "fewer for a big --data-dir)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    if not args.skip_histograms:
        import torchvision

        writer = open_writer(Path(tempfile.mkdtemp(prefix="bench_monitor_tb_")))
        compare_histograms("LeNet", with_gradients(LeNet().initialize_weights(), (16, 3, 32, 32), device), writer,
                           args.repeats, target=5)
        compare_histograms("resnet18", with_gradients(torchvision.models.resnet18(), (2, 3, 224, 224), device),
                           writer, args.repeats, target=4)
        writer.close()
        compare_event_writing(args.repeats, device)
        compare_step(args.repeats, device)
    if not args.skip_train:
        data_dir = args.data_dir
        if not data_dir.is_dir():
            from tools.data.image_folder import default_data_dir
            data_dir, _ = default_data_dir(ROOT / "data")
        epochs = [args.epochs] if args.epochs else []
        measure_step_in_train(data_dir, args.device, *epochs)
        measure_epoch_in_train(data_dir, args.device, *epochs)


if __name__ == "__main__":
    main()
