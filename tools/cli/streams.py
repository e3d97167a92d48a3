"""Output never costs a run: stdout and stderr wrapped so that a write that fails (a pipe whose reader
left, `| head -1`, a `less` the user quit, a log pipe that died; a dead terminal; a full disk under a
redirect) drops the output from then on, and the run goes on to write its checkpoints and results.

    with kept_output():
        main(args)              # every print, warning and progress bar goes through the wrapped streams

Without it Python raises BrokenPipeError from the first print after the reader left: the run ends at
the end of an epoch with an events file and no checkpoint.
"""
import os
import sys
from contextlib import contextmanager


class KeptStream:
    """A text stream whose failures drop the output, never the caller. `lost` says whether one failed;
    from then on the stream's file descriptor points at /dev/null, so that what Python or a C library
    still holds in a buffer, or writes to the descriptor directly, goes nowhere instead of failing again
    (at the interpreter's exit: 'Exception ignored ... BrokenPipeError')."""

    def __init__(self, stream):
        self.stream, self.lost = stream, False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self.lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.lose()

    def lose(self) -> None:
        self.lost = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture): nothing to point away
            pass

    def isatty(self) -> bool:
        if self.lost:
            return False
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name):  # encoding, fileno, buffer, ...: the wrapped stream's
        return getattr(self.stream, name)


@contextmanager
def kept_output():
    """Within the block, sys.stdout and sys.stderr are KeptStreams (restored after it)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = KeptStream(sys.stdout), KeptStream(sys.stderr)
    try:
        yield
    finally:
        for kept in (sys.stdout, sys.stderr):
            if isinstance(kept, KeptStream):
                kept.flush()
        sys.stdout, sys.stderr = saved
