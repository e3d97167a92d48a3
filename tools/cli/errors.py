"""The exceptions a command ends on with one line: a mistake a user can fix (a bad path, flag or data
folder), and a stop signal outside training."""


class UserError(Exception):
    """A mistake the user can fix. Scripts print its message as one line and exit with code 2."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP outside training (which handles them itself: it saves, then stops): raised, like
    KeyboardInterrupt for Ctrl-C, so that the command ends with one line instead of dying silently."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
