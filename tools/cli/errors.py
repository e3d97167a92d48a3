"""The one exception for mistakes a user can fix (a bad path, flag or data folder)."""


class UserError(Exception):
    """A mistake the user can fix. Scripts print its message as one line and exit with code 2."""
