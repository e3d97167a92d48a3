"""TensorBoard writing shared by the scripts: the writer, events of many values at once, the run's
arguments, chart layout, hparams."""
import atexit
import io
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram_raw, hparams, text

from tools.cli.errors import UserError
from tools.tb.event_crc import record_checksum, speed_up_event_writing

FLUSH_SECS = 10  # a writer's events reach its file at least this often: TensorBoard shows a live run


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
    with writer_threads_quiet():
        writer = SummaryWriter(str(run_dir), purge_step=purge_step or 0, max_queue=1000, flush_secs=FLUSH_SECS)
        events = getattr(writer.file_writer, "event_writer", None)
        if hasattr(events, "_async_writer") and hasattr(events, "_file_name"):  # else TensorBoard's own writer stays
            events._async_writer.close()  # the file's first events written, its thread ended (its error raised here)
            events._async_writer = BufferedRecords(events._file_name)
    return writer


@contextmanager
def writer_threads_quiet():
    """While a writer opens: an OSError in TensorBoard's writer thread (a full disk) is not printed as the
    thread's traceback, after the command's own line; closing the writer raises it here, to the caller."""
    previous = threading.excepthook

    def hook(args):
        if not issubclass(args.exc_type, OSError):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


class BufferedRecords:
    """An event file's records (TensorBoard's format: length, its checksum, the event, its checksum),
    kept in memory and appended to the file in one write every FLUSH_SECS and at flush() and close(), in
    the thread that logs. It replaces TensorBoard's writer thread, one per SummaryWriter (a run and its
    sub-runs: 15 for LeNet), which opens and appends the file for every record, its work competing with
    the training loop's (bench/bench_monitor.py: 7% of a bare LeNet step that writes one event). A run's
    epoch ends with a flush, before its checkpoint: what a killed run loses, the resumed one writes again;
    a loop that never closes its writer still gets its last events written when Python exits."""

    def __init__(self, path: str):
        self.path, self.parts = path, []
        self.flushed = time.monotonic()
        self.checksum = record_checksum()
        self.lock = threading.Lock()
        atexit.register(self.flush_at_exit)

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        with self.lock:
            self.parts += [header, struct.pack("<I", self.checksum(header)), data,
                           struct.pack("<I", self.checksum(data))]
        if time.monotonic() - self.flushed > FLUSH_SECS:
            self.flush()

    def flush(self) -> None:
        """Append the buffered records to the file. UserError when it cannot (its folder moved or deleted,
        the disk full): the records are dropped, and the message says where and why."""
        with self.lock:
            parts, self.parts = self.parts, []
            self.flushed = time.monotonic()
            if not parts:
                return
            try:
                with open(self.path, "ab") as file:
                    file.write(b"".join(parts))
            except OSError as err:
                folder = Path(self.path).parent
                raise UserError(f"cannot write TensorBoard's events into {folder} ({err.strerror or err}): the run "
                                "folder was moved or deleted, or the disk is full; what was saved before stays "
                                "(resume the run once the folder is back or space is free)") from None

    def flush_at_exit(self) -> None:
        """At the interpreter's exit (a loop that never closed its writer): flush, quietly if it cannot."""
        try:
            self.flush()
        except UserError:
            pass

    def close(self) -> None:
        self.flush()


def wait_for_a_later_second(run_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second the file
    was made: a new file must start in a later second than every file already there (a run killed and
    resumed within one second), or its events would be read first and the purge would not apply."""
    stamps = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.05)


def write_event(writer, step: int, scalars: dict | None = None, histograms: dict | None = None,
                texts: dict | None = None, pictures: dict | None = None) -> None:
    """Scalars (tag -> float), histograms (tag -> Histogram), texts (tag -> str) and pictures (tag -> PIL
    image) in one TensorBoard event, each value as add_scalar, add_histogram_raw, add_text and add_image
    write it (the middle two built by the same functions): one protobuf, one checksum and one write
    instead of one per tag. A picture is PNG-encoded at zlib level 1 straight from PIL: 1.2 ms for the
    verdict's picture where add_image takes 3.2 (numpy, a copy, level 6), the same pixels."""
    values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in (scalars or {}).items()]
    values += [Summary.Value(tag=tag, image=png_image(picture)) for tag, picture in (pictures or {}).items()]
    values += [histogram_raw(tag, min=h.min, max=h.max, num=h.num, sum=h.sum, sum_squares=h.sum_squares,
                             bucket_limits=h.bucket_limits, bucket_counts=h.bucket_counts).value[0]
               for tag, h in (histograms or {}).items() if h.num]
    values += [text(tag, body).value[0] for tag, body in (texts or {}).items()]
    if values:
        writer.file_writer.add_summary(Summary(value=values), step)


def png_image(picture) -> Summary.Image:
    """A PIL picture as TensorBoard's image value: RGB, PNG at zlib level 1 (fast; a flat-coloured picture
    compresses well at any level)."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return Summary.Image(height=picture.height, width=picture.width, colorspace=3, encoded_image_string=buffer.getvalue())


# The tags of the Time Series tab, in the order its groups show (alphabetical: the numbers order them).
# Loss and accuracy are one tag in the sub-runs train and valid (as the course's add_scalars does):
# TensorBoard draws a run's tag and its sub-runs' in one chart, a colour each, named in the legend. Every
# other line of a chart (a layer, a parameter group, the test split) is a tag of the run itself,
# <tag>/<line>: a run adds only its two splits to TensorBoard's run list, and with several runs each such
# card compares them, a line per run. The Custom Scalars tab draws each per-layer measure in one chart.
LOSS, ACCURACY, LR = "1_training/loss", "1_training/accuracy", "1_training/lr"
VERDICT = "1_training/verdict"  # the epochs coloured by the verdict, after the loss, accuracy and lr cards
GRAD_NORM, UPDATE_RATIO = "2_gradients/norm_log10", "2_gradients/update_ratio_log10"  # log10: any range reads
DEAD_UNITS = "3_activations/dead_units"
PICTURES = "4_pictures"
SPLIT_LINES = ("train", "valid", "valid_swa")  # the lines that are sub-runs: the rest are tags of the run


def line_location(tag: str, line: str) -> tuple[str, str]:
    """Where a line of a chart is written: (sub-run, tag), '' for the run itself."""
    return (line, tag) if line in SPLIT_LINES else ("", f"{tag}/{line}")


def custom_scalars_layout() -> dict:
    """The Custom Scalars tab: a chart per measure with a line per layer (the Time Series tab has a card
    per layer, comparing runs)."""
    return {"2 gradients, a line per layer": {
                "gradient norm, log10": ["Multiline", [f"{GRAD_NORM}/.*"]],
                "update ratio |dW| / |W|, log10 (healthy between the healthy_low and healthy_high lines)":
                    ["Multiline", [f"{UPDATE_RATIO}/.*"]]},
            "3 activations, a line per layer": {"dead units, share of the layer": ["Multiline", [f"{DEAD_UNITS}/.*"]]}}


class RunWriter:
    """A run's TensorBoard writers: its own SummaryWriter (which every other call goes to), and one per
    sub-run, <run_dir>/<name>, made on first use with the same purge step, for the lines of a chart."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.run_dir, self.purge_step = Path(run_dir), purge_step
        self.main = open_writer(self.run_dir, purge_step)
        self.subs: dict[str, SummaryWriter] = {}

    def __getattr__(self, name):  # add_image, add_text, add_graph, file_writer, ...
        return getattr(self.main, name)

    def sub(self, name: str) -> SummaryWriter:
        if name not in self.subs:
            self.subs[name] = open_writer(self.run_dir / name, self.purge_step)
        return self.subs[name]

    def flush(self) -> None:
        for writer in (self.main, *self.subs.values()):
            writer.flush()

    def close(self) -> None:
        for writer in (self.main, *self.subs.values()):
            writer.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_lines(writer, step: int, lines: dict[str, dict[str, float]]) -> None:
    """Charts of several lines: tag -> {line: value}. In a RunWriter the splits (SPLIT_LINES) are its
    sub-runs and every other line the scalar <tag>/<line> of the run, one event per writer for all its
    values; a plain SummaryWriter gets every line as <tag>/<line>."""
    if writer is None:
        return
    by_writer = {}
    for tag, values in lines.items():
        for line, value in values.items():
            sub, name = line_location(tag, line) if hasattr(writer, "sub") else ("", f"{tag}/{line}")
            by_writer.setdefault(sub, {})[name] = value
    for sub, scalars in by_writer.items():
        write_event(writer.sub(sub) if sub else writer, step, scalars=scalars)


class NullWriter:
    """A SummaryWriter that writes nothing: what the ranks other than 0 log to under torchrun."""

    @property
    def file_writer(self):  # writer.file_writer.add_summary(...) is a no-op too
        return self

    def sub(self, name: str) -> "NullWriter":
        return self

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def plain(value):
    """A flag's value as something JSON, TensorBoard and weights_only checkpoints accept."""
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def log_args(writer: SummaryWriter, args: dict) -> None:
    """The run's arguments as a Markdown table under the `flags` text tag (after `diagnosis` in the Text tab,
    which sorts its tags: the verdict comes first)."""
    rows = "\n".join(f"| {key} | {plain(value)} |" for key, value in args.items())
    writer.add_text("flags", "| flag | value |\n|---|---|\n" + rows, 0)


def log_hparams(writer, args: dict, metrics: dict[tuple[str, str], float]) -> None:
    """The run's hyper-parameters (HParams tab), with the metrics it compares runs by: (sub-run, tag)
    -> value, each pointing at a scalar the run already writes (no chart of one point is added)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    hparam_dict = {k: plain(v) for k, v in args.items() if v is not None}
    keys = [f"metric{i}" for i in range(len(metrics))]
    experiment, start, end = hparams(hparam_dict, dict.fromkeys(keys, 0.0))
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info, (group, tag) in zip(data.experiment.metric_infos, metrics):
        info.name.group, info.name.tag = group, tag
    content.content = data.SerializeToString()
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)
