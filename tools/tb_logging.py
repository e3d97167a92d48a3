"""TensorBoard writing shared by the scripts: the writer, events of many values at once, the run's
arguments, chart layout, hparams."""
import time
from pathlib import Path

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram_raw, hparams, text

from tools.event_crc import speed_up_event_writing


def open_writer(run_dir: Path, purge_step: int | None = None) -> SummaryWriter:
    """A SummaryWriter on `run_dir`. On resume, `purge_step` hides every event at or after that step
    that a killed run had written, so each step is shown exactly once.

    Every writer starts its file with TensorBoard's session-start marker (a new run's at step 0, which
    hides nothing): TensorBoard's Python loaders (`--load_fast=false`, the plugin EventAccumulator)
    take the first marker they meet as the start of the run, not as a restart, so without one in the
    first file, a resumed run's marker would purge nothing there and the steps after the checkpoint
    would show twice."""
    wait_for_a_later_second(Path(run_dir))
    speed_up_event_writing()
    # A long queue: adding an event never waits for the writer thread to catch up with the disk.
    return SummaryWriter(str(run_dir), purge_step=purge_step or 0, max_queue=1000, flush_secs=10)


def wait_for_a_later_second(run_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second the file
    was made: a new file must start in a later second than every file already there (a run killed and
    resumed within one second), or its events would be read first and the purge would not apply."""
    stamps = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.05)


def write_event(writer, step: int, scalars: dict | None = None, histograms: dict | None = None,
                texts: dict | None = None) -> None:
    """Scalars (tag -> float), histograms (tag -> Histogram) and texts (tag -> str) in one TensorBoard
    event, each value as add_scalar, add_histogram_raw and add_text write it (the last two built by the
    same functions): one protobuf, one checksum and one write instead of one per tag."""
    values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in (scalars or {}).items()]
    values += [histogram_raw(tag, min=h.min, max=h.max, num=h.num, sum=h.sum, sum_squares=h.sum_squares,
                             bucket_limits=h.bucket_limits, bucket_counts=h.bucket_counts).value[0]
               for tag, h in (histograms or {}).items() if h.num]
    values += [text(tag, body).value[0] for tag, body in (texts or {}).items()]
    if values:
        writer.file_writer.add_summary(Summary(value=values), step)


class NullWriter:
    """A SummaryWriter that writes nothing: what the ranks other than 0 log to under torchrun."""

    @property
    def file_writer(self):  # writer.file_writer.add_summary(...) is a no-op too
        return self

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def plain(value):
    """A flag's value as something JSON, TensorBoard and weights_only checkpoints accept."""
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def log_args(writer: SummaryWriter, args: dict) -> None:
    """The run's arguments as a Markdown table under the `args` text tag."""
    rows = "\n".join(f"| {key} | {plain(value)} |" for key, value in args.items())
    writer.add_text("args", "| flag | value |\n|---|---|\n" + rows, 0)


def log_layout(writer: SummaryWriter) -> None:
    """Custom Scalars tab: train and valid loss on one chart, train and valid accuracy on another."""
    writer.add_custom_scalars({"train vs valid": {
        "loss": ["Multiline", ["loss/train", "loss/valid"]],
        "accuracy": ["Multiline", ["acc/train", "acc/valid"]],
    }})


def log_hparams(writer: SummaryWriter, args: dict, metrics: dict, step: int) -> None:
    """The run's hyper-parameters with its final metrics (HParams tab), into the run's own event file."""
    hparam_dict = {k: plain(v) for k, v in args.items() if v is not None}
    metric_dict = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    for summary in hparams(hparam_dict, metric_dict):
        writer.file_writer.add_summary(summary)
    for tag, value in metric_dict.items():
        writer.add_scalar(tag, value, step)
