"""Stop cleanly on Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed): finish the current step,
then save and exit."""
import signal
from contextlib import contextmanager

# 128 + signal number, the shell's convention; SIGHUP (a closed terminal, an ssh session dropped) is a
# request to stop like SIGTERM, not a reason to lose the step's work
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class StopRequest:
    """Set by the signal handler; the training loop asks `requested` after every step."""

    def __init__(self):
        self.signal = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal, 1)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT, SIGTERM and SIGHUP set a StopRequest instead of killing the process.

    A second Ctrl-C while stopping raises KeyboardInterrupt as usual. Handlers are restored on exit.
    """
    stop = StopRequest()

    def handle(signum, _frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signal = signum

    previous = {sig: signal.signal(sig, handle) for sig in EXIT_CODES}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
