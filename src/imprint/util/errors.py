"""The one error type users see: a one-line message naming the file or flag and the fix."""


class ImprintError(Exception):
    """A problem with the user's input. The CLI prints it as one line and exits with code 2."""
