import os
import random

import pytest

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c

from tools.tb.event_crc import masked_crc32c, speed_up_event_writing

MAX_LEN = 4096  # lengths around a few kilobytes: event records of histograms, text and images


def test_same_checksums_as_tensorboard_for_every_kind_of_length():
    random.seed(0)
    lengths = [0, 1, 2, 3, 4, 5, 8, 12, 100, 1200, MAX_LEN - 1, MAX_LEN, MAX_LEN + 1, MAX_LEN + 3, MAX_LEN + 4,
               2 * MAX_LEN, 3 * MAX_LEN + 2] + [random.randrange(1, 3 * MAX_LEN) for _ in range(20)]
    for n in lengths:
        data = os.urandom(n)
        assert masked_crc32c(data) == tensorboard_masked_crc32c(data), n


def test_event_files_written_with_it_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.summary.writer import record_writer
    from torch.utils.tensorboard import SummaryWriter
    assert speed_up_event_writing()  # google-crc32c is a requirement
    assert record_writer.masked_crc32c is masked_crc32c
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_text("long", "x" * (3 * MAX_LEN))  # a record longer than one chunk
        writer.add_scalar("short", 1.0, 1)
    records = list(RawEventFileLoader(str(next(tmp_path.glob("events.out.tfevents.*")))).Load())
    assert len(records) == 3  # file version, text, scalar: every checksum matched


def test_buffered_events_reach_the_file_at_a_flush_and_when_python_exits_unclosed(tmp_path):
    """The buffered writer (no writer thread): nothing on disk before a flush, all of it after; and a
    script that never closes its writer still leaves every event, read back by TensorBoard's reader."""
    import subprocess
    import sys

    from conftest import ROOT, line, read_events
    from tools.tb.writer import LOSS, RunWriter, write_lines

    writer = RunWriter(tmp_path / "flushed")
    for step in range(3):
        write_lines(writer, step, {LOSS: {"train": step / 10}})
    assert LOSS not in read_events(tmp_path / "flushed" / "train").Tags()["scalars"]  # all in memory yet
    writer.flush()
    assert [e.value for e in line(tmp_path / "flushed", LOSS, "train")] == pytest.approx([0.0, 0.1, 0.2])
    writer.close()
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from tools.tb.writer import LOSS, RunWriter, write_lines\n"
              f"writer = RunWriter({str(tmp_path / 'unclosed')!r})\n"
              "for step in range(5):\n    write_lines(writer, step, {LOSS: {'train': 0.5}})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    assert [e.step for e in line(tmp_path / "unclosed", LOSS, "train")] == [0, 1, 2, 3, 4]
